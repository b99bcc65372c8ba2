"""Fake ticketing data shared by the three sample apps: fixed, so only `generated_at` changes.

`generated_at` is the moment the handler ran: a cached answer (X-Cache: HIT) replays the stored
timestamp, a fresh one (MISS) shows a new one.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

from cache_middleware.demo.app import EVENTS as DEMO_EVENTS
from cache_middleware.demo.app import VENUES as DEMO_VENUES

# One fake catalogue for the packaged demo and the three samples.
VENUES: list[dict[str, Any]] = [dict(venue) for venue in DEMO_VENUES]
EVENTS: list[dict[str, Any]] = [dict(event) for event in DEMO_EVENTS]

# Tickets left per event.
AVAILABILITY: dict[str, int] = {"e1": 1204, "e2": 37, "e3": 0, "e4": 412}

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cache-middleware sample</title></head>
<body>
<h1>cache-middleware sample app ({framework})</h1>
<p>Cached routes (see sample_apps/cache.yaml); watch the X-Cache header and generated_at.</p>
<ul>
<li><a href="/api/events">/api/events</a> and /api/events/e1 (600 s)</li>
<li><a href="/api/venues">/api/venues</a> and /api/venues/v1 (1800 s)</li>
<li><a href="/api/tickets/availability?event_id=e2">/api/tickets/availability</a> (30 s)</li>
<li><a href="/api/search?q=jazz&amp;category=music">/api/search</a>
    (300 s, keyed by q and category)</li>
<li>/api/me (3600 s, private: send an X-User-Id header)</li>
<li><a href="/health">/health</a> (not cached, like this page)</li>
</ul>
<pre>curl -i {base}/api/events      # X-Cache: MISS, then HIT on the second try
curl -i -H 'X-User-Id: alice' {base}/api/me</pre>
</body></html>
"""


def index_html(framework: str, base_url: str) -> str:
    return INDEX_HTML.format(framework=framework, base=html.escape(base_url.rstrip("/")))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def stamped(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` plus the moment it was generated."""
    return {**payload, "generated_at": now()}


def find_event(event_id: str) -> dict[str, Any] | None:
    return next((e for e in EVENTS if e["id"] == event_id), None)


def find_venue(venue_id: str) -> dict[str, Any] | None:
    return next((v for v in VENUES if v["id"] == venue_id), None)


def availability(event_id: str | None) -> dict[str, Any] | None:
    """All events' availability, one event's, or None for an unknown event."""
    if event_id is None:
        return {"availability": AVAILABILITY}
    if event_id not in AVAILABILITY:
        return None
    return {"event_id": event_id, "available": AVAILABILITY[event_id]}


def search(q: str | None, category: str | None) -> dict[str, Any]:
    needle = (q or "").strip().lower()
    results = [
        e
        for e in EVENTS
        if needle in e["name"].lower() and (category is None or e["category"] == category)
    ]
    return {"q": needle, "category": category, "results": results}


def me(user_id: str) -> dict[str, Any]:
    return {
        "user": {"id": user_id, "name": f"Demo user {user_id}"},
        "session": {"cart": [], "favourite_events": ["e1", "e3"]},
    }


NOT_FOUND = {"error": "not found"}
NO_USER = {"error": "send an X-User-Id header (the sample has no login)"}
