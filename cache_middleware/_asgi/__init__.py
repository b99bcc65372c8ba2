"""The ASGI adapter's parts (asgi.py is the driver): request reading, MISS recording,
startup refusal. They adapt ASGI; every decision is `_core`'s."""
