"""Starlette sample: `uvicorn sample_apps.starlette_app:app` (from the repository root).

The whole integration is the `add_middleware` line; routes and TTLs live in cache.yaml.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from cache_middleware import CacheMiddleware
from sample_apps import data

CONFIG = Path(__file__).parent / "cache.yaml"


async def index(request: Request) -> Response:
    return HTMLResponse(data.index_html("Starlette", str(request.base_url)))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_events(request: Request) -> Response:
    return JSONResponse(data.stamped({"events": data.EVENTS}))


async def get_event(request: Request) -> Response:
    event = data.find_event(request.path_params["event_id"])
    if event is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)  # 404s are not cached
    return JSONResponse(data.stamped({"event": event}))


async def list_venues(request: Request) -> Response:
    return JSONResponse(data.stamped({"venues": data.VENUES}))


async def get_venue(request: Request) -> Response:
    venue = data.find_venue(request.path_params["venue_id"])
    if venue is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)
    return JSONResponse(data.stamped({"venue": venue}))


async def availability(request: Request) -> Response:
    answer = data.availability(request.query_params.get("event_id"))
    if answer is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)
    return JSONResponse(data.stamped(answer))


async def search(request: Request) -> Response:
    params = request.query_params
    return JSONResponse(data.stamped(data.search(params.get("q"), params.get("category"))))


async def me(request: Request) -> Response:
    user_id = request.headers.get("x-user-id")
    if not user_id:
        return JSONResponse(data.stamped(data.NO_USER), status_code=401)  # X-Cache: BYPASS
    return JSONResponse(data.stamped(data.me(user_id)))


routes = [
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


def create_app() -> Starlette:
    app = Starlette(routes=routes)
    app.add_middleware(CacheMiddleware, config=CONFIG)
    return app


app = create_app()
