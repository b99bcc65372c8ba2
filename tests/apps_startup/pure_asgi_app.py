"""A bare ASGI app wrapped directly: `app = CacheMiddleware(inner, config=...)` at import."""

from __future__ import annotations

import os
from typing import Any

from cache_middleware import CacheMiddleware


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]  # startup | shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


app = CacheMiddleware(inner, config=os.environ["STARTUP_CACHE_YAML"])
