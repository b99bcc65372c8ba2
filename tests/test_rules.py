"""Route matching: segment boundaries, longest match, placeholders (table-driven)."""

from __future__ import annotations

import pytest

from cache_middleware._core.rules import RouteTable, Rule

TABLE = RouteTable(
    Rule(route, ttl)
    for route, ttl in [
        ("/api/events", 600),
        ("/api/events/{event_id}/tickets", 5),
        ("/api/events/featured", 60),
        ("/api/venues", 1800),
        ("/api/venues/{venue_id}", 900),
        ("/api/{anything}/special", 7),
        ("/api/tickets/availability", 30),
    ]
)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/events", "/api/events"),
        ("/api/events/", "/api/events"),
        ("/api/events/42", "/api/events"),
        ("/api/eventsX", None),
        ("/api/event", None),
        ("/api/events/42/tickets", "/api/events/{event_id}/tickets"),
        ("/api/events/42/tickets/7", "/api/events/{event_id}/tickets"),
        ("/api/events/featured", "/api/events/featured"),
        ("/api/events/featured/tickets", "/api/events/{event_id}/tickets"),
        ("/api/venues/9", "/api/venues/{venue_id}"),
        ("/api/venues", "/api/venues"),
        # A placeholder matches one non-empty segment only.
        ("/api/venues//x", "/api/venues"),
        ("/api/x/special", "/api/{anything}/special"),
        # Literal beats placeholder on equal depth; the longer match wins otherwise.
        ("/api/tickets/availability", "/api/tickets/availability"),
        ("/api/events/special", "/api/{anything}/special"),
        ("/", None),
        ("", None),
        ("api/events", None),
        ("/API/events", None),
    ],
)
def test_match(path: str, route: str | None) -> None:
    rule = TABLE.match(path)
    assert (rule.route if rule else None) == route


def test_root_route_matches_everything() -> None:
    table = RouteTable([Rule("/", 10), Rule("/api", 20)])
    assert table.match("/")
    assert table.match("/x/y").route == "/"  # type: ignore[union-attr]
    assert table.match("/api/y").route == "/api"  # type: ignore[union-attr]


def test_rule_prepares_header_bytes() -> None:
    assert Rule("/a", 600).cache_control == b"public, max-age=600"
    assert Rule("/a", 60, private=True).cache_control == b"private, max-age=60"
    assert Rule("/a", 60).ttl_header == b"60"
