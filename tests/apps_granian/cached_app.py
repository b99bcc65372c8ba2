"""A Starlette app behind CacheMiddleware on the Redis named by the environment.

`GET /api/item` counts its calls (the count is in the body, so a HIT shows the first call's
answer); `GET /health` is on no route. `GRANIAN_TEST_REDIS_URL` may name a Redis nobody
listens on: the fail-open test serves this very app with it.
"""

from __future__ import annotations

import itertools
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cache_middleware import CacheMiddleware

_calls = itertools.count(1)


async def item(request: Request) -> Response:
    return JSONResponse({"call": next(_calls), "pid": os.getpid()})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/api/item", item), Route("/health", health)])
app.add_middleware(
    CacheMiddleware,
    config={
        "redis_url": os.environ["GRANIAN_TEST_REDIS_URL"],
        "key_prefix": os.environ["GRANIAN_TEST_PREFIX"],
        "routes": {"/api/item": {"ttl": 60}},
    },
)
