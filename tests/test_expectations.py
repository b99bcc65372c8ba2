"""One expectation table, run through the ASGI and the WSGI adapter, on every backend.

Each case is a sequence of requests; each step names the X-Cache value expected (None: the
header must be absent) and which call of the app produced the body (`call=N` in it), so a HIT
is proven to be a replay and a MISS/BYPASS to be a fresh answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from .adapters import Harness

CONFIG: dict[str, Any] = {
    "key_prefix": "PREFIX",
    "max_body_bytes": 10000,
    "venue_header": "X-Venue-Id",
    "routes": {
        "/api": {"ttl": 60},
        "/api/me": {"ttl": 3600, "private": True},
        "/api/search": {"ttl": 300, "vary_by": ["q", "category"], "ignore_params": ["utm_*"]},
        "/api/reports": {"ttl": 60, "condition": "tests.helpers.conditions:only_without_nocache"},
    },
}

ALICE = {"X-Test-User": "alice"}
BOB = {"X-Test-User": "bob"}
H: dict[str, str] = {}

# (method, target, request headers, expected X-Cache, expected call in body, expected status)
Step = tuple[str, str, dict[str, str], "str | None", "int | None", int]

CASES: dict[str, list[Step]] = {
    "miss-then-hit": [
        ("GET", "/api/events", H, "MISS", 1, 200),
        ("GET", "/api/events", H, "HIT", 1, 200),
        ("GET", "/api/events/", H, "MISS", 2, 200),
    ],
    "query-string-keyed": [
        ("GET", "/api/events?page=1", H, "MISS", 1, 200),
        ("GET", "/api/events?page=2", H, "MISS", 2, 200),
        ("GET", "/api/events?page=1", H, "HIT", 1, 200),
        ("GET", "/api/events", H, "MISS", 3, 200),
        ("GET", "/api/events?b=2&a=1", H, "MISS", 4, 200),
        ("GET", "/api/events?a=1&b=2", H, "HIT", 4, 200),
        ("GET", "/api/events?a=1&a=2", H, "MISS", 5, 200),
        ("GET", "/api/events?a=2&a=1", H, "MISS", 6, 200),
    ],
    "vary-by-keys-listed-params-only": [
        ("GET", "/api/search?q=a", H, "MISS", 1, 200),
        ("GET", "/api/search?q=a&utm_source=x", H, "HIT", 1, 200),
        ("GET", "/api/search?q=b", H, "MISS", 2, 200),
        ("GET", "/api/search?category=c&q=a", H, "MISS", 3, 200),
        ("GET", "/api/search?q=a&category=c", H, "HIT", 3, 200),
        # A parameter neither listed nor ignored could change the answer: not keyable.
        ("GET", "/api/search?q=a&page=2", H, "BYPASS", 4, 200),
    ],
    "unmatched-paths-untouched": [
        ("GET", "/other", H, None, 1, 200),
        ("GET", "/other", H, None, 2, 200),
        ("GET", "/apix", H, None, 3, 200),
    ],
    "segment-boundary-and-subpaths": [
        ("GET", "/api/events/42", H, "MISS", 1, 200),
        ("GET", "/api/events/42", H, "HIT", 1, 200),
        ("GET", "/api/events/43", H, "MISS", 2, 200),
    ],
    "unsafe-methods-invalidate-the-path": [
        ("POST", "/api/events", H, "BYPASS", 1, 200),
        ("GET", "/api/events", H, "MISS", 2, 200),
        ("GET", "/api/events?page=2", H, "MISS", 3, 200),
        ("GET", "/api/events/7", H, "MISS", 4, 200),
        ("GET", "/api/events", H, "HIT", 2, 200),
        ("PUT", "/api/events", H, "BYPASS", 5, 200),
        ("GET", "/api/events", H, "MISS", 6, 200),
        ("GET", "/api/events?page=2", H, "MISS", 7, 200),
        ("GET", "/api/events/7", H, "HIT", 4, 200),  # another path: untouched
        ("OPTIONS", "/api/events", H, "BYPASS", 8, 200),
        ("GET", "/api/events", H, "HIT", 6, 200),
    ],
    "failed-unsafe-method-invalidates-nothing": [
        ("GET", "/api/fragile", H, "MISS", 1, 200),
        ("DELETE", "/api/fragile", H, "BYPASS", 2, 409),
        ("GET", "/api/fragile", H, "HIT", 1, 200),
        ("POST", "/api/fragile", H, "BYPASS", 3, 409),
        ("GET", "/api/fragile", H, "HIT", 1, 200),
    ],
    "set-cookie-never-stored": [
        ("GET", "/api/cookie", H, "BYPASS", 1, 200),
        ("GET", "/api/cookie", H, "BYPASS", 2, 200),
    ],
    "no-store-never-stored": [
        ("GET", "/api/nostore", H, "BYPASS", 1, 200),
        ("GET", "/api/nostore", H, "BYPASS", 2, 200),
    ],
    "private-response-on-shared-route": [
        ("GET", "/api/private-cc", H, "BYPASS", 1, 200),
        ("GET", "/api/private-cc", H, "BYPASS", 2, 200),
    ],
    "max-age-zero": [
        ("GET", "/api/zero-age", H, "BYPASS", 1, 200),
        ("GET", "/api/zero-age", H, "BYPASS", 2, 200),
    ],
    "vary-star": [
        ("GET", "/api/vary-star", H, "BYPASS", 1, 200),
        ("GET", "/api/vary-star", H, "BYPASS", 2, 200),
    ],
    "vary-header-keys-variants": [
        ("GET", "/api/vary-lang", {"Accept-Language": "fr"}, "MISS", 1, 200),
        ("GET", "/api/vary-lang", {"Accept-Language": "de"}, "MISS", 2, 200),
        ("GET", "/api/vary-lang", H, "MISS", 3, 200),
        ("GET", "/api/vary-lang", {"Accept-Language": "fr"}, "HIT", 1, 200),
        ("GET", "/api/vary-lang", {"Accept-Language": "de"}, "HIT", 2, 200),
        ("GET", "/api/vary-lang", H, "HIT", 3, 200),
        ("GET", "/api/vary-lang", {"Accept-Language": ""}, "MISS", 4, 200),
    ],
    "event-stream": [
        ("GET", "/api/sse", H, "BYPASS", 1, 200),
        ("GET", "/api/sse", H, "BYPASS", 2, 200),
    ],
    "non-200-statuses": [
        ("GET", "/api/missing", H, "BYPASS", 1, 404),
        ("GET", "/api/missing", H, "BYPASS", 2, 404),
        ("GET", "/api/boom", H, "BYPASS", 3, 500),
        ("GET", "/api/boom", H, "BYPASS", 4, 500),
        ("GET", "/api/created", H, "BYPASS", 5, 201),
    ],
    "body-over-limit-streams-uncached": [
        ("GET", "/api/big", H, "MISS", 1, 200),
        ("GET", "/api/big", H, "MISS", 2, 200),
    ],
    "head-answered-from-get": [
        ("HEAD", "/api/events", H, "BYPASS", None, 200),
        ("GET", "/api/events", H, "MISS", 2, 200),
        ("HEAD", "/api/events", H, "HIT", None, 200),
        ("GET", "/api/events", H, "HIT", 2, 200),
    ],
    "private-route-keyed-by-user": [
        ("GET", "/api/me", H, "BYPASS", 1, 200),
        ("GET", "/api/me", H, "BYPASS", 2, 200),
        ("GET", "/api/me", ALICE, "MISS", 3, 200),
        ("GET", "/api/me", ALICE, "HIT", 3, 200),
        ("GET", "/api/me", BOB, "MISS", 4, 200),
        ("GET", "/api/me", BOB, "HIT", 4, 200),
        ("GET", "/api/me", H, "BYPASS", 5, 200),
    ],
    "private-cache-control-allowed-on-private-route": [
        ("GET", "/api/me/private-cc", ALICE, "MISS", 1, 200),
        ("GET", "/api/me/private-cc", ALICE, "HIT", 1, 200),
    ],
    "forged-path-cannot-read-private-entry": [
        ("GET", "/api/me", ALICE, "MISS", 1, 200),
        ("GET", "/api/me:user:alice", H, "MISS", 2, 200),
        ("GET", "/api/me%3Auser%3Aalice", H, "HIT", 2, 200),
        ("GET", "/api/me?user=alice", H, "BYPASS", 3, 200),
    ],
    "venue-isolation": [
        ("GET", "/api/events", {"X-Venue-Id": "t1"}, "MISS", 1, 200),
        ("GET", "/api/events", {"X-Venue-Id": "t10"}, "MISS", 2, 200),
        ("GET", "/api/events", {"X-Venue-Id": "t1"}, "HIT", 1, 200),
        ("GET", "/api/events", H, "MISS", 3, 200),
        ("GET", "/api/events", {"X-Venue-Id": "t10"}, "HIT", 2, 200),
    ],
    "condition": [
        ("GET", "/api/reports", H, "MISS", 1, 200),
        ("GET", "/api/reports", H, "HIT", 1, 200),
        ("GET", "/api/reports?fresh=1", H, "BYPASS", 2, 200),
    ],
    "authorization-on-shared-route-not-stored": [
        ("GET", "/api/events", {"Authorization": "Bearer x"}, "BYPASS", 1, 200),
        ("GET", "/api/events", H, "MISS", 2, 200),
        ("GET", "/api/events", {"Authorization": "Bearer x"}, "HIT", 2, 200),
    ],
    "cookie-on-shared-route-not-stored": [
        ("GET", "/api/events", {"Cookie": "session=alice"}, "BYPASS", 1, 200),
        ("GET", "/api/events", H, "MISS", 2, 200),
        ("GET", "/api/events", {"Cookie": "session=bob"}, "HIT", 2, 200),
    ],
    "cookie-on-private-route-is-fine": [
        ("GET", "/api/me", {**ALICE, "Cookie": "session=alice"}, "MISS", 1, 200),
        ("GET", "/api/me", {**ALICE, "Cookie": "session=alice"}, "HIT", 1, 200),
    ],
    "host-and-scheme-are-keyed": [
        ("GET", "/api/page", {"Host": "a.example"}, "MISS", 1, 200),
        ("GET", "/api/page", {"Host": "b.example"}, "MISS", 2, 200),
        ("GET", "/api/page", {"Host": "A.example:80"}, "HIT", 1, 200),
        ("GET", "/api/page", {"Host": "b.example"}, "HIT", 2, 200),
    ],
    "app-cache-control-kept": [
        ("GET", "/api/own-cc", H, "MISS", 1, 200),
        ("GET", "/api/own-cc", H, "HIT", 1, 200),
    ],
}


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_expectation_table(
    case: str, adapter: str, backend: dict[str, Any], prefix: str
) -> None:
    harness = Harness(adapter, {**CONFIG, "key_prefix": prefix}, backend)
    try:
        for i, (method, target, headers, x_cache, call, status) in enumerate(CASES[case]):
            reply = await harness.request(method, target, headers)
            where = f"{case} step {i}: {method} {target} {headers}"
            assert reply.status == status, where
            assert reply.x_cache == x_cache, where
            if method == "HEAD":
                # Only the replay is ours to empty; a pass-through HEAD is the server's business.
                if x_cache == "HIT":
                    assert reply.body == b"", where
            else:
                assert reply.call == call, f"{where}: body {reply.body[:80]!r}"
    finally:
        await harness.aclose()
