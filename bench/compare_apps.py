"""The apps `compare.py` serves: ours, the bare baselines and the peers, one factory each.

Every app answers GET /api/events with the same JSON document as `apps.BODY`. The "real view"
(`events_document()` + `json.dumps` per call) counts its calls, and GET /bench/calls returns that
count, so `compare.py` can prove a cached variant served HITs (the count did not move under
load) and a MISS variant called the view for every request. Settings come from the environment
because server factories take no arguments; the peers are imported inside their factories, so
this module loads without them.

ASGI factories are for `uvicorn --factory`, WSGI ones for `gunicorn 'compare_apps:name()'`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from apps import BODY, EVENTS_PATH, static_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = [
    "asgi_hit_ceiling_app",
    "asgi_replay_app",
    "cached_hit_app",
    "cached_miss_app",
    "cached_near_app",
    "cached_unmatched_app",
    "cashews_app",
    "fastapi_app",
    "fastapi_cache2_app",
    "flask_caching_app",
    "flask_hit_ceiling_app",
    "flask_static_app",
    "flask_wsgi_near_app",
    "flask_wsgi_redis_app",
    "nocache_app",
    "static_app",
]

CALLS_PATH = "/bench/calls"
ENV_REDIS_URL = "BENCH_REDIS_URL"
ENV_KEY_PREFIX = "BENCH_KEY_PREFIX"
# Optional: `redis_timeout` of our apps, for a run far slower than real time (`instructions.py`
# runs them under valgrind, where the default would time round trips out into BYPASSes).
ENV_REDIS_TIMEOUT = "BENCH_REDIS_TIMEOUT"
# `asgi_replay_app`: the names of the HIT headers it sends.
ENV_REPLAY_HEADERS = "BENCH_REPLAY_HEADERS"
# Longer than a whole run (5 rounds of 14 variants take about 13 minutes): an entry filled at
# warm-up must not expire under load, or a HIT variant would refill (and fail its check).
TTL = 3600
# The route the MISS variant keys on: every request carries a query parameter `n` no other
# request used (wrk's unique-query script), so each one is looked up, missed and stored.
MISS_TTL = 5
UNMATCHED_ROUTE = "/api/other"

_calls = 0


def events_document() -> dict[str, Any]:
    """The document behind `apps.BODY`, built afresh on each call like a real view's data."""
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
    return {"events": events, "count": len(events)}


def render() -> bytes:
    """What the view serializes per request; byte-identical to `apps.BODY`."""
    global _calls
    _calls += 1
    return json.dumps(events_document(), separators=(",", ":")).encode()


assert json.dumps(events_document(), separators=(",", ":")).encode() == BODY


def _count() -> None:
    global _calls
    _calls += 1


def _redis_url() -> str:
    return os.environ[ENV_REDIS_URL]


def _prefix(variant: str) -> str:
    return f"{os.environ[ENV_KEY_PREFIX]}:{variant}"


# What a HIT answers with, besides the body: the app's two headers and the cache's (values as long
# as the bench's). The ceilings below send exactly this and do nothing else.
HIT_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"etag", b'"34bcecd1759e22ac63d1317940aa6379"'),
    (b"cache-control", b"public, max-age=3600"),
    (b"x-cache", b"HIT"),
    (b"x-cache-key", b"bench:0123abcd:near:GET:/api/events:host:http%3A//12..."),
    (b"x-cache-ttl", b"3600"),
    (b"age", b"0"),
    (b"cache-status", b"cache-middleware; hit; ttl=3600"),
]


# -- ASGI: Starlette ------------------------------------------------------------------------------


async def _events(request: Request) -> Response:
    return Response(render(), media_type="application/json")


async def _calls_endpoint(request: Request) -> Response:
    return Response(str(_calls), media_type="text/plain")


def nocache_app() -> Starlette:
    """The same app without a cache: a view that builds and serializes its body per request."""
    return Starlette(
        routes=[
            Route(EVENTS_PATH, _events, methods=["GET"]),
            Route(CALLS_PATH, _calls_endpoint, methods=["GET"]),
        ]
    )


def _ours(routes: dict[str, Any], *, near: bool = False, variant: str) -> Starlette:
    from cache_middleware import CacheMiddleware
    from cache_middleware.config import Settings

    config: dict[str, Any] = {
        "redis_url": _redis_url(),
        "key_prefix": _prefix(variant),
        "routes": routes,
    }
    if os.environ.get(ENV_REDIS_TIMEOUT):
        config["redis_timeout"] = float(os.environ[ENV_REDIS_TIMEOUT])
    if "slow_store_ms" in Settings.__dataclass_fields__:
        # valgrind's slowdown (bench/instructions.py) makes every round trip "slow": the
        # slow-store breaker would turn the measured MISSes into BYPASSes.
        config["slow_store_ms"] = 0
    if near:
        config["near_cache"] = {}
    app = nocache_app()
    app.add_middleware(CacheMiddleware, config=config)
    return app


class _ReplayHit:
    """An ASGI middleware that answers every request with the body and a HIT's headers and does
    nothing else: no lookup, no key, no clock. No HIT, of any cache, is cheaper on this server."""

    def __init__(self, app: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.app = app
        self.headers = HIT_HEADERS if headers is None else headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": BODY})


def asgi_replay_app() -> Starlette:
    """`hit-ceiling` replaying only the headers of HIT_HEADERS named in `BENCH_REPLAY_HEADERS`
    (comma-separated): what each header of a HIT costs the server (`headers.py`)."""
    keep = set(os.environ.get(ENV_REPLAY_HEADERS, "").split(","))
    app = static_app()
    app.add_middleware(_ReplayHit, headers=[(n, v) for n, v in HIT_HEADERS if n.decode() in keep])
    return app


def asgi_hit_ceiling_app() -> Starlette:
    """The ceiling of any HIT under uvicorn: a middleware in the Starlette app, where ours sits,
    replaying fixed bytes and a HIT's headers."""
    app = static_app()
    app.add_middleware(_ReplayHit)
    return app


def cached_hit_app() -> Starlette:
    """cache-middleware on Redis: every request after the first is a HIT."""
    return _ours({EVENTS_PATH: {"ttl": TTL}}, variant="redis")


def cached_near_app() -> Starlette:
    """The same with the in-process near-cache in front of Redis."""
    return _ours({EVENTS_PATH: {"ttl": TTL}}, near=True, variant="near")


def cached_miss_app() -> Starlette:
    """Keyed on `?n=`: under the unique-query load every request is a MISS (looked up, stored)."""
    return _ours({EVENTS_PATH: {"ttl": MISS_TTL, "vary_by": ["n"]}}, variant="miss")


def cached_unmatched_app() -> Starlette:
    """The middleware is on, but its only route does not match the path requested."""
    return _ours({UNMATCHED_ROUTE: {"ttl": TTL}}, variant="unmatched")


# -- ASGI: FastAPI and its peers -----------------------------------------------------------------


def _fastapi(lifespan: Callable[[Any], Any] | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(CALLS_PATH, response_class=PlainTextResponse)
    async def calls() -> str:
        return str(_calls)

    return app


def fastapi_app() -> Any:
    """FastAPI without a cache: the peers' baseline (it returns the dict, FastAPI serializes)."""
    app = _fastapi()

    @app.get(EVENTS_PATH)
    async def events() -> dict[str, Any]:
        _count()
        return events_document()

    return app


def fastapi_cache2_app() -> Any:
    """fastapi-cache2's @cache on Redis, as its README sets it up."""
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.redis import RedisBackend
    from fastapi_cache.decorator import cache
    from redis import asyncio as aioredis

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        client = aioredis.from_url(_redis_url())
        FastAPICache.init(RedisBackend(client), prefix=_prefix("fastapi-cache2"))
        yield
        await client.aclose()

    app = _fastapi(lifespan)

    @app.get(EVENTS_PATH)
    @cache(expire=TTL)
    async def events() -> dict[str, Any]:
        _count()
        return events_document()

    return app


def cashews_app() -> Any:
    """cashews' @cache on Redis (default settings)."""
    from cashews import cache

    cache.setup(_redis_url())
    key = _prefix("cashews") + ":events"

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await cache.close()

    app = _fastapi(lifespan)

    @app.get(EVENTS_PATH)
    @cache(ttl=f"{TTL}s", key=key)
    async def events() -> dict[str, Any]:
        _count()
        return events_document()

    return app


# -- WSGI: Flask ----------------------------------------------------------------------------------


def _flask() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get(CALLS_PATH)
    def calls() -> Any:
        return app.response_class(str(_calls), mimetype="text/plain")

    return app


def flask_static_app() -> Any:
    """The WSGI ceiling: a Flask view returning the fixed bytes."""
    app = _flask()

    @app.get(EVENTS_PATH)
    def events() -> Any:
        return app.response_class(BODY, mimetype="application/json")

    return app


def flask_hit_ceiling_app() -> Any:
    """The ceiling of any HIT under gunicorn: a WSGI middleware around the Flask app, where ours
    sits, replaying fixed bytes and a HIT's headers and doing nothing else."""
    app = _flask()
    headers = [(name.decode(), value.decode()) for name, value in HIT_HEADERS]

    def replay(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", list(headers))
        return [BODY]

    app.wsgi_app = replay  # type: ignore[method-assign]
    return app


def _flask_view() -> Any:
    """A Flask app whose view builds and serializes its body per request."""
    app = _flask()

    @app.get(EVENTS_PATH)
    def events() -> Any:
        return app.response_class(render(), mimetype="application/json")

    return app


def flask_caching_app() -> Any:
    """Flask-Caching's @cache.cached on Redis; the view returns the dict, Flask serializes it."""
    from flask_caching import Cache

    app = _flask()
    cache = Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": _redis_url(),
            "CACHE_KEY_PREFIX": _prefix("flask-caching") + ":",
            "CACHE_DEFAULT_TIMEOUT": TTL,
        },
    )

    @app.get(EVENTS_PATH)
    @cache.cached(timeout=TTL)
    def events() -> Any:
        _count()
        return events_document()

    return app


def _flask_ours(*, near: bool, variant: str) -> Any:
    from cache_middleware import WSGICacheMiddleware

    config: dict[str, Any] = {
        "redis_url": _redis_url(),
        "key_prefix": _prefix(variant),
        "routes": {EVENTS_PATH: {"ttl": TTL}},
    }
    if near:
        config["near_cache"] = {}
    app = _flask_view()
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config)
    return app


def flask_wsgi_redis_app() -> Any:
    """WSGICacheMiddleware on Redis around the Flask view."""
    return _flask_ours(near=False, variant="wsgi-redis")


def flask_wsgi_near_app() -> Any:
    """The same with the near-cache."""
    return _flask_ours(near=True, variant="wsgi-near")
