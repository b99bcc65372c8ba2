"""The app the multi-worker tests serve with `uvicorn --workers 2` (an import target).

`GET /api/item` answers with the version held in Redis under `{prefix}:test-version`, so a refill
after an invalidation shows the new version. An outer middleware stamps every response with the
worker's pid and its near-cache hit count, so the test can tell which worker answered and that its
HITs came from the near-cache. `POST /invalidate` deletes the entry through this worker's store,
as an admin call on one worker would.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cache_middleware import CacheMiddleware
from cache_middleware.config import load_config
from cache_middleware.storage.tracking import near_cache_for

REDIS_URL = os.environ["NEAR_TEST_REDIS_URL"]
PREFIX = os.environ["NEAR_TEST_PREFIX"]
CONFIG: dict[str, Any] = {
    "redis_url": REDIS_URL,
    "key_prefix": PREFIX,
    "near_cache": {"max_age": 300},
    "routes": {
        "/api/item": {"ttl": 300},
        "/api/slow": {"ttl": 300},
        "/api/swr": {"ttl": 1, "stale_while_revalidate": 60},
    },
}


async def item(request: Request) -> Response:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        version = await client.get(f"{PREFIX}:test-version")
    finally:
        await client.aclose()
    return JSONResponse({"version": int(version or 0)})


async def counted(request: Request) -> Response:
    """A slow view that counts its calls in Redis, across every worker."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        calls = await client.incr(f"{PREFIX}:calls:{request.url.path}")
    finally:
        await client.aclose()
    await asyncio.sleep(0.3)
    return JSONResponse({"calls": calls})


async def health(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid()})


async def invalidate(request: Request) -> Response:
    count = await cache.store.delete_matching(f"{PREFIX}:GET:/api/item*")
    return JSONResponse({"invalidated": count})


inner = Starlette(
    routes=[
        Route("/api/item", item),
        Route("/api/slow", counted),
        Route("/api/swr", counted),
        Route("/invalidate", invalidate, methods=["POST"]),
        Route("/health", health),
    ]
)
cache = CacheMiddleware(inner, config=CONFIG)


async def app(scope: Any, receive: Any, send: Any) -> None:
    near = near_cache_for(load_config(CONFIG))[0] if "near_cache" in CONFIG else None

    async def stamped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", []),
                (b"x-pid", str(os.getpid()).encode()),
                (b"x-near-hits", str(near.hits if near else 0).encode()),
            ]
        await send(message)

    await cache(scope, receive, stamped)
