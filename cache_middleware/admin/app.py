"""create_admin_app(): the admin sub-app, a Starlette app mounted at /admin/cache.

Every endpoint needs `Authorization: Bearer <token>` (401 with `WWW-Authenticate: Bearer`
otherwise); answers are JSON with `Cache-Control: no-store`. It shares the store and counters of
the CacheMiddleware (ASGI or WSGI) that runs in the same process with the same key prefix, and
hands each action's lifecycle event to an EventSink: the `event_sink=` given, else the process's
sink for the config (events/process_sink.py: it publishes to the broker when the YAML has an
`events:` section, and logs otherwise). Its lifespan shutdown publishes what that sink still
holds (within 5 s); an atexit hook closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import ConfigSource, Settings, load_config
from ..errors import ConfigError, StoreUnavailable
from ..events import EventSink
from ..events.process_sink import events_settings_of, flush_sink, sink_for
from ..registry import middlewares_for
from ..storage import AsyncStore, make_async_store
from ..wiring import build_policy
from . import operations
from .auth import Principal, TokenTable
from .metrics import render_metrics
from .openapi import OPENAPI
from .requests import BadRequest, BodyLimit, parse_clear, parse_invalidate, parse_warm

__all__ = ["create_admin_app"]

logger = logging.getLogger("cache_middleware.admin")

NO_STORE = {"Cache-Control": "no-store"}
# What a lifespan shutdown waits, at most, for the buffered events to reach the broker.
SHUTDOWN_FLUSH_TIMEOUT = 5.0
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:"
)

Handler = Callable[[Request, Principal], Awaitable[Response]]


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **headers})


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return _json({"success": False, "error": message}, status, **headers)


def create_admin_app(
    config: ConfigSource | None = None,
    token: str | None = None,
    *,
    venue_tokens: dict[str, str] | None = None,
    insecure: bool = False,
    event_sink: EventSink | None = None,
    store: AsyncStore | None = None,
) -> Starlette:
    """The admin sub-app: `app.mount("/admin/cache", create_admin_app(config=..., token=...))`.

    `token` (or `admin.token` in the config) opens everything; `venue_tokens` (or
    `admin.venue_tokens`) map a venue id to a token that sees and touches only that venue's
    entries. Without any token it refuses to build unless `insecure=True` is passed explicitly.
    """
    settings: Settings = load_config(config)
    tokens = TokenTable(
        token or settings.admin.token,
        {**dict(settings.admin.venue_tokens), **(venue_tokens or {})},
    )
    if not tokens and not insecure:
        raise ConfigError(
            f"{settings.source}: admin: no token: pass token= to create_admin_app or set "
            "admin.token (insecure=True serves the admin API to anyone, for local use only)"
        )
    sink: EventSink = sink_for(events_settings_of(config)) if event_sink is None else event_sink
    policy = build_policy(settings)
    admin_store: AsyncStore = store if store is not None else _shared_store(settings)
    prefix = settings.key_prefix

    def emit(event_type: str, data: dict[str, Any]) -> None:
        try:
            sink.emit(event_type, data)
        except Exception:  # a sink must not turn a done action into an error answer
            logger.exception("event sink failed on %s", event_type)

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            principal = Principal(None) if not tokens else None
            if tokens:
                raw = next(
                    (v for k, v in request.scope["headers"] if k.lower() == b"authorization"),
                    None,
                )
                principal = tokens.authenticate(raw)
            if principal is None:
                return _error(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request, principal)
            except BadRequest as exc:
                return _error(400, str(exc))
            except operations.Forbidden as exc:
                return _error(403, str(exc))
            except StoreUnavailable:
                return _error(503, "cache store unavailable: nothing was done")

        return endpoint

    async def invalidate(request: Request, principal: Principal) -> Response:
        body = parse_invalidate(await request.body())
        count = await operations.invalidate(admin_store, settings, principal, body)
        if not body.dry_run:
            emit(
                "cache.invalidated",
                {
                    "reason": "manual",
                    "venue": principal.venue,
                    "patterns": body.patterns,
                    "paths": body.paths,
                    "tags": body.tags,
                    "keys": body.keys,
                    "count": count,
                },
            )
        return _json({"success": True, "invalidated": count, "dry_run": body.dry_run})

    async def stats(request: Request, principal: Principal) -> Response:
        body = await operations.stats(admin_store, settings, middlewares_for(prefix))
        if principal.venue is not None:
            # A venue token sees its own venue's figures only.
            own = body["venues"].get(principal.venue, {})
            body = {
                **own,
                "venues": {principal.venue: own} if own else {},
                "routes": {},
                "backend": {"type": body["backend"].get("type")},
                "history": [],
            }
        return _json(body)

    async def warm(request: Request, principal: Principal) -> Response:
        paths = parse_warm(await request.body())
        try:
            host = request.headers.get("host", "localhost").encode("latin-1")
            warmed, failed = await operations.warm(
                settings, principal, middlewares_for(prefix), paths, host, request.url.scheme
            )
        except LookupError as exc:
            return _error(409, str(exc))
        emit(
            "cache.warmed",
            {
                "venue": principal.venue,
                "paths": paths,
                "warmed": len(warmed),
                "failed": len(failed),
            },
        )
        return _json({"success": not failed, "warmed": warmed, "failed": failed})

    async def clear(request: Request, principal: Principal) -> Response:
        parse_clear(await request.body())
        count = await operations.clear(admin_store, settings, principal)
        emit("cache.cleared", {"venue": principal.venue, "prefix": prefix, "count": count})
        return _json({"success": True, "cleared": count})

    async def optimize(request: Request, principal: Principal) -> Response:
        if principal.venue is not None:
            raise operations.Forbidden("optimize works on the whole cache: a venue token cannot")
        report = await operations.optimize(admin_store, settings, policy.match)
        emit("cache.optimized", {"prefix": prefix, **report})
        return _json({"success": True, **report})

    async def metrics(request: Request, principal: Principal) -> Response:
        if principal.venue is not None:
            raise operations.Forbidden("metrics cover the whole cache: a venue token cannot")
        body = await operations.stats(admin_store, settings, middlewares_for(prefix))
        text, content_type = render_metrics(body)
        return Response(text, media_type=content_type, headers=NO_STORE)

    async def dashboard(request: Request, principal: Principal) -> Response:
        return Response(
            _dashboard_html(),
            media_type="text/html; charset=utf-8",
            headers={**NO_STORE, "Content-Security-Policy": DASHBOARD_CSP},
        )

    async def openapi(request: Request, principal: Principal) -> Response:
        return _json(OPENAPI)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Shutdown: publish what the sink holds (it stays open: the process may serve again).
        await asyncio.to_thread(flush_sink, sink, SHUTDOWN_FLUSH_TIMEOUT)

    app = Starlette(
        lifespan=lifespan,
        routes=[
            # The page itself holds no data and no secret: it asks for the token and sends it
            # with every call, so a browser can open it from the address bar.
            Route("/", _public(dashboard), methods=["GET"]),
            Route("/invalidate", guarded(invalidate), methods=["POST"]),
            Route("/stats", guarded(stats), methods=["GET"]),
            Route("/warm", guarded(warm), methods=["POST"]),
            Route("/clear", guarded(clear), methods=["POST"]),
            Route("/optimize", guarded(optimize), methods=["POST"]),
            Route("/metrics", guarded(metrics), methods=["GET"]),
            Route("/openapi.json", guarded(openapi), methods=["GET"]),
        ],
    )
    app.state.settings = settings
    app.state.store = admin_store
    app.state.event_sink = sink
    # Outermost but _NoStore: a body over the limit is refused before it is read (a 413).
    app.add_middleware(BodyLimit)
    app.add_middleware(_NoStore)
    return app


class _NoStore:
    """Every admin answer, Starlette's own 404/405 included, is `Cache-Control: no-store`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_no_store(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_no_store)


def _public(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(request, Principal(None))

    return endpoint


def _shared_store(settings: Settings) -> AsyncStore:
    """The store of this process's middleware for the same cache, else a new one."""
    for mw in middlewares_for(settings.key_prefix):
        store = getattr(mw, "store", None)
        if store is not None and hasattr(store, "keys_matching") and hasattr(store, "aclose"):
            return store  # type: ignore[no-any-return]
    return make_async_store(settings)


_DASHBOARD: bytes | None = None


def _dashboard_html() -> bytes:
    global _DASHBOARD
    if _DASHBOARD is None:
        _DASHBOARD = resources.files(__package__).joinpath("dashboard.html").read_bytes()
    return _DASHBOARD
