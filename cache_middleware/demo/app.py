"""The demo app: a fake ticketing API behind `CacheMiddleware`, always on the memory store.

Every JSON answer carries `generated_at`, the moment the handler ran: a HIT replays the stored
timestamp, so two requests side by side show cached versus fresh at a glance.

    from cache_middleware.demo.app import create_app
    app = create_app()                      # the packaged cache.yaml
    app = create_app("my-cache.yaml")       # any config: its routes, always the memory store
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..asgi import CacheMiddleware
from ..config import ConfigSource, Settings, load_config
from ..storage import AsyncMemoryStore

__all__ = ["DEFAULT_CONFIG", "DEMO_STORE_URL", "create_app"]

DEFAULT_CONFIG = Path(__file__).with_name("cache.yaml")
DEMO_STORE_URL = "memory://demo"

# -- fake data: deterministic, so that only `generated_at` tells a HIT from a fresh answer -------

VENUES: tuple[dict[str, Any], ...] = (
    {"id": "v1", "name": "Harbour Arena", "city": "Lisbon", "capacity": 12000},
    {"id": "v2", "name": "The Old Mill", "city": "Leeds", "capacity": 850},
    {"id": "v3", "name": "Parkside Theatre", "city": "Denver", "capacity": 2400},
)

EVENTS: tuple[dict[str, Any], ...] = (
    {
        "id": "e1",
        "name": "Midnight Orchestra",
        "category": "music",
        "venue_id": "v1",
        "starts_at": "2025-06-14T20:00:00Z",
        "price": 45.0,
    },
    {
        "id": "e2",
        "name": "Stand-up Saturday",
        "category": "comedy",
        "venue_id": "v2",
        "starts_at": "2025-06-21T19:30:00Z",
        "price": 18.5,
    },
    {
        "id": "e3",
        "name": "Jazz on the Lawn",
        "category": "music",
        "venue_id": "v3",
        "starts_at": "2025-07-02T18:00:00Z",
        "price": 30.0,
    },
    {
        "id": "e4",
        "name": "Hamlet",
        "category": "theatre",
        "venue_id": "v3",
        "starts_at": "2025-07-10T19:00:00Z",
        "price": 52.0,
    },
)

# Tickets left per event: fixed numbers, the demo sells nothing.
AVAILABILITY: dict[str, int] = {"e1": 1204, "e2": 37, "e3": 0, "e4": 412}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json(payload: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse({**payload, "generated_at": _now()}, status_code=status_code)


# -- handlers -------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _collection(
    plural: str, singular: str, items: tuple[dict[str, Any], ...]
) -> tuple[Handler, Handler]:
    """The two handlers of a collection: the whole list (`{plural: [...]}`), and one item by
    the `{singular}_id` path parameter (`{singular: {...}}`, or a 404)."""

    async def list_all(request: Request) -> Response:
        return _json({plural: list(items)})

    async def get_one(request: Request) -> Response:
        wanted = request.path_params[f"{singular}_id"]
        item = next((item for item in items if item["id"] == wanted), None)
        if item is None:
            # Not a 200: the middleware never stores it.
            return _json({"error": f"{singular} not found"}, status_code=404)
        return _json({singular: item})

    return list_all, get_one


list_events, get_event = _collection("events", "event", EVENTS)
list_venues, get_venue = _collection("venues", "venue", VENUES)


async def availability(request: Request) -> Response:
    event_id = request.query_params.get("event_id")
    if event_id is None:
        return _json({"availability": AVAILABILITY})
    if event_id not in AVAILABILITY:
        return _json({"error": "event not found"}, status_code=404)
    return _json({"event_id": event_id, "available": AVAILABILITY[event_id]})


async def search(request: Request) -> Response:
    q = request.query_params.get("q", "").strip().lower()
    category = request.query_params.get("category")
    results = [
        event
        for event in EVENTS
        if q in event["name"].lower() and (category is None or event["category"] == category)
    ]
    return _json({"q": q, "category": category, "results": results})


async def me(request: Request) -> Response:
    user_id = request.headers.get("x-user-id")
    if not user_id:
        # The middleware answers BYPASS here: a private route is never cached without a user.
        return _json({"error": "send an X-User-Id header (the demo has no login)"}, 401)
    return _json(
        {
            "user": {"id": user_id, "name": f"Demo user {user_id}"},
            "session": {"cart": [], "favourite_events": ["e1", "e3"]},
        }
    )


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("/api/events", "events list"),
    ("/api/events/e1", "one event (unknown ids answer 404, never cached)"),
    ("/api/venues", "venues"),
    ("/api/venues/v1", "one venue"),
    ("/api/tickets/availability?event_id=e2", "tickets left"),
    ("/api/search?q=jazz&category=music", "search, keyed by q and category only"),
    ("/api/me", "private: send X-User-Id, one entry per user"),
    ("/health", "not cached"),
)


def _index_page(settings: Settings, base_url: str) -> str:
    def esc(value: object) -> str:
        return html.escape(str(value))

    rows = "\n".join(
        f"<tr><td><code>{esc(route.path)}</code></td><td>{route.ttl}</td>"
        f"<td>{'private' if route.private else 'public'}</td>"
        f"<td>{esc(', '.join(route.vary_by)) if route.vary_by is not None else 'whole query'}"
        f"</td></tr>"
        for route in settings.routes
    )
    links = "\n".join(
        f'<li><a href="{esc(path)}"><code>{esc(path)}</code></a> {esc(note)}</li>'
        for path, note in _EXAMPLES
    )
    base = base_url.rstrip("/")
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>cache-middleware demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .75rem; text-align: left; }}
tr:nth-child(even) {{ background: #f3f3f3; }} pre {{ background: #f3f3f3; padding: .75rem; }}
</style></head>
<body>
<h1>cache-middleware demo</h1>
<p>A fake ticketing API behind <code>CacheMiddleware</code>, on the in-process memory store.
Watch the <code>X-Cache</code> header (<code>MISS</code>, then <code>HIT</code>) and the
<code>generated_at</code> field, which stays put while an entry is replayed.
This page is not cached.</p>
<h2>Cached routes</h2>
<table>
<tr><th>route</th><th>TTL (s)</th><th>scope</th><th>vary by</th></tr>
{rows}
</table>
<h2>Try</h2>
<ul>
{links}
</ul>
<pre>curl -i {esc(base)}/api/events      # X-Cache: MISS
curl -i {esc(base)}/api/events      # X-Cache: HIT, same generated_at
curl -i -H 'X-User-Id: alice' {esc(base)}/api/me</pre>
</body>
</html>
"""


def create_app(config: ConfigSource | None = None) -> Starlette:
    """The demo app, cached by `config` (the packaged cache.yaml by default).

    The store is always a fresh in-process memory store: `redis_url` and CACHE_REDIS_URL are
    overridden, so the demo never reaches for Redis. The settings and the store are left on
    `app.state.cache_settings` / `app.state.cache_store` for whoever wants to share them.
    """
    loaded = load_config(DEFAULT_CONFIG if config is None else config)
    settings = dataclasses.replace(loaded, redis_url=DEMO_STORE_URL)
    store = AsyncMemoryStore(max_bytes=settings.memory_max_bytes)

    async def index(request: Request) -> Response:
        return HTMLResponse(_index_page(settings, str(request.base_url)))

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/api/events", list_events),
            Route("/api/events/{event_id}", get_event),
            Route("/api/venues", list_venues),
            Route("/api/venues/{venue_id}", get_venue),
            Route("/api/tickets/availability", availability),
            Route("/api/search", search),
            Route("/api/me", me),
        ]
    )
    app.add_middleware(CacheMiddleware, config=settings, store=store)
    app.state.cache_settings = settings
    app.state.cache_store = store
    return app
