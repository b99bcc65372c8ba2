"""Pure, sans-I/O cache logic.

Nothing in this package imports redis, yaml, kombu, starlette or asyncio: it takes plain values
(method, path, headers as byte pairs) and returns decisions as values. The ASGI and WSGI adapters
do the I/O around it, so every rule about HTTP lives here exactly once.
"""
