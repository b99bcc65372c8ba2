"""A Starlette app with `add_middleware(CacheMiddleware, config=...)` (built on first call)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cache_middleware import CacheMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/cached", hello), Route("/other", hello)])
app.add_middleware(CacheMiddleware, config=os.environ["STARTUP_CACHE_YAML"])
