"""The WSGI adapter's parts (wsgi.py is the driver): request reading, the lookup flow's
blocking driver, MISS recording, background refresh. They adapt WSGI; every decision is
`_core`'s."""
