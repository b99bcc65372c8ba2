"""FastAPI sample: `uvicorn sample_apps.fastapi_app:app` (from the repository root).

The whole integration is the `add_middleware` line; routes and TTLs live in cache.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse

from cache_middleware import CacheMiddleware
from sample_apps import data

CONFIG = Path(__file__).parent / "cache.yaml"

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> str:
    return data.index_html("FastAPI", str(request.base_url))


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/events")
async def list_events() -> dict[str, Any]:
    return data.stamped({"events": data.EVENTS})


@router.get("/api/events/{event_id}", response_model=None)
async def get_event(event_id: str) -> dict[str, Any] | JSONResponse:
    event = data.find_event(event_id)
    if event is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)  # 404s are not cached
    return data.stamped({"event": event})


@router.get("/api/venues")
async def list_venues() -> dict[str, Any]:
    return data.stamped({"venues": data.VENUES})


@router.get("/api/venues/{venue_id}", response_model=None)
async def get_venue(venue_id: str) -> dict[str, Any] | JSONResponse:
    venue = data.find_venue(venue_id)
    if venue is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)
    return data.stamped({"venue": venue})


@router.get("/api/tickets/availability", response_model=None)
async def availability(event_id: str | None = None) -> dict[str, Any] | JSONResponse:
    answer = data.availability(event_id)
    if answer is None:
        return JSONResponse(data.stamped(data.NOT_FOUND), status_code=404)
    return data.stamped(answer)


@router.get("/api/search")
async def search(q: str | None = None, category: str | None = None) -> dict[str, Any]:
    return data.stamped(data.search(q, category))


@router.get("/api/me", response_model=None)
async def me(
    x_user_id: Annotated[str | None, Header()] = None,
) -> dict[str, Any] | JSONResponse:
    if not x_user_id:
        return JSONResponse(data.stamped(data.NO_USER), status_code=401)  # X-Cache: BYPASS
    return data.stamped(data.me(x_user_id))


def create_app() -> FastAPI:
    app = FastAPI(title="cache-middleware sample")
    app.include_router(router)
    app.add_middleware(CacheMiddleware, config=CONFIG)
    return app


app = create_app()
