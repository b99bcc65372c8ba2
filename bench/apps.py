"""The two ASGI apps `hit_throughput.py` serves with uvicorn (`--factory`).

Both answer GET /api/events with the same fixed ~1 KB JSON body. The body is serialized once at
import so the static app measures the server's ceiling, not `json.dumps`; the cached app wraps
the very same Starlette app, so the only difference between the two servers is the middleware.
Settings come from the environment because uvicorn factories take no arguments.
"""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cache_middleware import CacheMiddleware

__all__ = ["BODY", "EVENTS_PATH", "cached_app", "static_app"]

EVENTS_PATH = "/api/events"
ENV_REDIS_URL = "BENCH_REDIS_URL"
ENV_KEY_PREFIX = "BENCH_KEY_PREFIX"


def _events_body() -> bytes:
    """A deterministic JSON document of a little over 1 KB."""
    events = [
        {
            "id": i,
            "name": f"Event number {i}",
            "venue": "Main Hall",
            "starts_at": f"2025-01-{i + 1:02d}T19:30:00Z",
            "tags": ["music", "live"],
        }
        for i in range(9)
    ]
    return json.dumps({"events": events, "count": len(events)}, separators=(",", ":")).encode()


BODY = _events_body()


async def events(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


def static_app() -> Starlette:
    """The ceiling: the bare Starlette app."""
    return Starlette(routes=[Route(EVENTS_PATH, events, methods=["GET"])])


def cached_app() -> CacheMiddleware:
    """The same app behind CacheMiddleware; every request after the first is a Redis HIT."""
    config = {
        "redis_url": os.environ[ENV_REDIS_URL],
        "key_prefix": os.environ[ENV_KEY_PREFIX],
        "routes": {EVENTS_PATH: {"ttl": 600}},
    }
    return CacheMiddleware(static_app(), config=config)
