"""Flask sample: `flask --app sample_apps.flask_app run` (from the repository root).

The whole integration is the `app.wsgi_app = WSGICacheMiddleware(...)` line; routes and TTLs
live in cache.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, request

from cache_middleware import WSGICacheMiddleware
from sample_apps import data

CONFIG = Path(__file__).parent / "cache.yaml"

bp = Blueprint("sample", __name__)

Answer = dict[str, Any] | tuple[dict[str, Any], int]


@bp.get("/")
def index() -> str:
    return data.index_html("Flask", request.host_url)


@bp.get("/health")
def health() -> Answer:
    return {"status": "ok"}


@bp.get("/api/events")
def list_events() -> Answer:
    return data.stamped({"events": data.EVENTS})


@bp.get("/api/events/<event_id>")
def get_event(event_id: str) -> Answer:
    event = data.find_event(event_id)
    if event is None:
        return data.stamped(data.NOT_FOUND), 404  # 404s are not cached
    return data.stamped({"event": event})


@bp.get("/api/venues")
def list_venues() -> Answer:
    return data.stamped({"venues": data.VENUES})


@bp.get("/api/venues/<venue_id>")
def get_venue(venue_id: str) -> Answer:
    venue = data.find_venue(venue_id)
    if venue is None:
        return data.stamped(data.NOT_FOUND), 404
    return data.stamped({"venue": venue})


@bp.get("/api/tickets/availability")
def availability() -> Answer:
    answer = data.availability(request.args.get("event_id"))
    if answer is None:
        return data.stamped(data.NOT_FOUND), 404
    return data.stamped(answer)


@bp.get("/api/search")
def search() -> Answer:
    return data.stamped(data.search(request.args.get("q"), request.args.get("category")))


@bp.get("/api/me")
def me() -> Answer:
    user_id = request.headers.get("X-User-Id")
    if not user_id:
        return data.stamped(data.NO_USER), 401  # X-Cache: BYPASS
    return data.stamped(data.me(user_id))


def create_app() -> Flask:
    app = Flask(__name__)
    app.register_blueprint(bp)
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=CONFIG)
    return app


app = create_app()
