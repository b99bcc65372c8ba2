"""`mode: standard` beyond freshness (issue #20): what a standard shared cache stores.

* Statuses (RFC 9111 §3): any final status but 206 and 304 with the app's explicit freshness;
  heuristic freshness only for RFC 9110 §15.1's statuses; gateway routes as before.
* Targeted fields (RFC 9213, Edge Architecture 1.0): `CDN-Cache-Control`, else
  `Surrogate-Control`, replace `Cache-Control` and `Expires` for this cache when valid;
  `targeted_fields: pass | strip`. Gateway routes neither read nor remove them.
* Kept for revalidation (RFC 9111 §4.3): `no-cache`, `max-age=0` or already-stale responses with
  the app's validator are stored, stale from the start; entries with one are kept
  `revalidate_window` seconds past freshness; `policy.revalidates()`; `max-stale` never serves a
  `no-cache` entry. `must-understand` (§5.2.2.3).

The table runs through both adapters on the memory store and the real Redis, with the apps,
clients and clock of tests/test_rfc9111_freshness.py; then the unit level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from cache_middleware import ConfigError, load_config
from cache_middleware._core.entry import CachedResponse
from cache_middleware._core.headers import (
    cdn_cache_control,
    parse_sf_dictionary,
    surrogate_control,
    targeted_directives,
)
from cache_middleware._core.policy import CachePolicy, Lookup
from cache_middleware._core.request_directives import request_directives, serves_stale
from cache_middleware._core.rules import Rule
from cache_middleware._core.storing import body_etag
from cache_middleware.wiring import build_policy
from tests.helpers.echo_table import (  # noqa: F401  (fixtures used by name)
    Clock,
    EmptySource,
    Headers,
    check_hit,
    check_miss,
    check_not_stored,
    http_dates,
    kind,
    store,
)
from tests.helpers.echo_table import clock as clock
from tests.helpers.echo_table import make as make

STANDARD = {"mode": "standard"}
ETAG = ("ETag", '"v1"')


def cc(value: str) -> Headers:
    return (("Cache-Control", value),)


@dataclass(frozen=True)
class Row:
    id: str
    clause: str
    expect: str  # "stored" (MISS then HIT), "not-stored" (BYPASS twice), "revalidated" (MISS,
    # then the app asked again: stored stale, never served without asking)
    headers: Headers = ()
    status: int = 200
    route: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=lambda: STANDARD)
    detail: str | None = None
    miss: Mapping[str, Any] = field(default_factory=dict)
    hit: Mapping[str, Any] = field(default_factory=dict)
    expire_after: float | None = None
    request: Mapping[str, str] = field(default_factory=dict)  # the second request's own fields


GATEWAY = {"mode": "gateway"}
ROUTE_60 = {"ttl": 60}

ROWS: list[Row] = [
    # -- statuses -----------------------------------------------------------------------------
    *(
        Row(
            f"status-{status}-explicit",
            "RFC 9111 §3: any final status the app gave explicit freshness",
            "stored",
            status=status,
            headers=cc("max-age=30"),
        )
        for status in (299, 302, 303, 307, 400, 403, 500, 502, 503, 504, 599)
    ),
    *(
        Row(
            f"status-{status}-expires",
            "RFC 9111 §3: Expires is explicit freshness too",
            "stored",
            status=status,
            headers=(("Date", "{now+0}"), ("Expires", "{now+30}")),
        )
        for status in (302, 500)
    ),
    *(
        Row(
            f"status-{status}-heuristic-refused",
            "RFC 9111 §4.2.2: heuristic freshness for RFC 9110 §15.1's statuses only",
            "not-stored",
            status=status,
            headers=(("Date", "{now+0}"), ("Last-Modified", "{now-1000}")),
            detail="status",
        )
        for status in (302, 307, 400, 500, 503)
    ),
    Row(
        "status-500-no-freshness",
        "RFC 9111 §3: nothing from the app, nothing stored",
        "not-stored",
        status=500,
        detail="status",
    ),
    Row(
        "status-206-never",
        "RFC 9111 §3.3: a part is never stored",
        "not-stored",
        status=206,
        headers=cc("max-age=30"),
        detail="status",
    ),
    *(
        Row(
            f"gateway-status-{status}-refused",
            "gateway mode: only the route's `statuses`, whatever the response says",
            "not-stored",
            status=status,
            headers=cc("max-age=30"),
            route=ROUTE_60,
            settings=GATEWAY,
            detail="status",
        )
        for status in (302, 307, 500)
    ),
    Row(
        "must-understand-understood",
        "RFC 9111 §5.2.2.3: no-store yields to must-understand on a known status",
        "stored",
        headers=cc("max-age=3600, no-store, must-understand"),
    ),
    Row(
        "must-understand-unknown-status",
        "RFC 9111 §5.2.2.3: an unknown status with must-understand is not stored",
        "not-stored",
        status=599,
        headers=cc("max-age=3600, no-store, must-understand"),
        detail="status",
    ),
    Row(
        "gateway-must-understand-no-store",
        "gateway mode: no-store as before",
        "not-stored",
        headers=cc("max-age=3600, no-store, must-understand"),
        route=ROUTE_60,
        settings=GATEWAY,
        detail="no-store",
    ),
    # -- CDN-Cache-Control and Surrogate-Control -------------------------------------------------
    Row(
        "cdn-max-age-alone",
        "RFC 9213 §2.1: fresh by CDN-Cache-Control alone, passed on by default",
        "stored",
        headers=(("CDN-Cache-Control", "max-age=30"),),
        miss={"cdn-cache-control": "max-age=30"},
        hit={"x-cache-ttl": "30", "cdn-cache-control": "max-age=30"},
        expire_after=30.5,
    ),
    Row(
        "cdn-short-over-cc-long",
        "RFC 9213 §2.1: Cache-Control ignored when CDN-Cache-Control is valid",
        "stored",
        headers=(*cc("max-age=3600"), ("CDN-Cache-Control", "max-age=2")),
        hit={"x-cache-ttl": "2", "cache-control": "max-age=3600"},
        expire_after=2.5,
    ),
    Row(
        "cdn-long-over-cc-short",
        "RFC 9213 §2.1",
        "stored",
        headers=(*cc("max-age=1"), ("CDN-Cache-Control", "max-age=3600")),
        hit={"x-cache-ttl": "3600"},
    ),
    Row(
        "cdn-over-past-expires",
        "RFC 9213 §2.1: Expires ignored too",
        "stored",
        headers=(("CDN-Cache-Control", "max-age=60"), ("Date", "{now+0}"), ("Expires", "0")),
    ),
    Row(
        "cdn-fresh-cc-no-store",
        "RFC 9213 §2.1: the targeted field decides storability",
        "stored",
        headers=(*cc("no-store"), ("CDN-Cache-Control", "max-age=100")),
    ),
    Row(
        "cdn-private",
        "RFC 9213: private for this cache",
        "not-stored",
        headers=(*cc("max-age=100"), ("CDN-Cache-Control", "private")),
        detail="private",
        miss={"cdn-cache-control": "private"},
    ),
    Row(
        "cdn-no-store",
        "RFC 9213: no-store for this cache",
        "not-stored",
        headers=(*cc("max-age=100"), ("CDN-Cache-Control", "no-store")),
        detail="no-store",
    ),
    Row(
        "cdn-no-cache-without-validator",
        "RFC 9111 §5.2.2.4: nothing to revalidate with",
        "not-stored",
        headers=(*cc("max-age=100"), ("CDN-Cache-Control", "no-cache")),
        detail="no-cache",
    ),
    Row(
        "cdn-max-age-0",
        "RFC 9213: max-age=0 with a future Expires",
        "not-stored",
        headers=(("CDN-Cache-Control", "max-age=0"), ("Date", "{now+0}"), ("Expires", "{now+99}")),
        detail="max-age",
    ),
    *(
        Row(
            f"cdn-invalid-{name}",
            "RFC 9213 §2.1: invalid content is ignored, Cache-Control applies",
            "not-stored",
            headers=(*cc("no-store"), ("CDN-Cache-Control", value)),
            detail="no-store",
        )
        for name, value in (
            ("unknown-type", "max-age=10000, &&&&&"),
            ("wrong-type", 'max-age="10000"'),
            ("upper-case", "MAX-AGE=100"),
        )
    ),
    Row(
        "surrogate-max-age",
        "Edge Architecture 1.0: Surrogate-Control max-age",
        "stored",
        headers=(*cc("no-store"), ("Surrogate-Control", "max-age=20")),
        hit={"x-cache-ttl": "20"},
    ),
    Row(
        "surrogate-no-store",
        "Edge Architecture 1.0: Surrogate-Control no-store",
        "not-stored",
        headers=(*cc("max-age=100"), ("Surrogate-Control", "no-store")),
        detail="no-store",
    ),
    Row(
        "cdn-before-surrogate",
        "RFC 9213 §2.1: the first valid field of the target list",
        "stored",
        headers=(("CDN-Cache-Control", "max-age=10"), ("Surrogate-Control", "max-age=100")),
        hit={"x-cache-ttl": "10"},
    ),
    Row(
        "gateway-ignores-cdn",
        "gateway mode: the fields are an app's message to a CDN in front, passed on",
        "stored",
        headers=(("CDN-Cache-Control", "no-store"),),
        route=ROUTE_60,
        settings=GATEWAY,
        hit={"cdn-cache-control": "no-store"},
    ),
    Row(
        "strip-miss-and-bypass",
        "targeted_fields: strip: this cache's directives end here",
        "not-stored",
        headers=(*cc("max-age=100"), ("CDN-Cache-Control", "private")),
        settings={**STANDARD, "targeted_fields": "strip"},
        detail="private",
        miss={"cdn-cache-control": None, "cache-control": "max-age=100"},
    ),
    Row(
        "strip-not-on-gateway",
        "targeted_fields applies to standard routes only",
        "stored",
        headers=(("Surrogate-Control", "max-age=5"),),
        route=ROUTE_60,
        settings={"targeted_fields": "strip"},
        miss={"surrogate-control": "max-age=5"},
    ),
    # -- stored to be revalidated ----------------------------------------------------------------
    Row(
        "no-cache-with-etag",
        "RFC 9111 §5.2.2.4: stored, never used without asking the app",
        "revalidated",
        headers=(*cc("no-cache"), ETAG),
    ),
    Row(
        "no-cache-fresh-with-last-modified",
        "RFC 9111 §5.2.2.4: no-cache wins over max-age",
        "revalidated",
        headers=(*cc("max-age=3600, no-cache"), ("Last-Modified", "{now-100}")),
    ),
    Row(
        "cdn-no-cache-with-etag",
        "RFC 9213 + §5.2.2.4",
        "revalidated",
        headers=(*cc("max-age=3600"), ("CDN-Cache-Control", "no-cache"), ETAG),
    ),
    Row(
        "no-cache-max-stale",
        "RFC 9111 §4.2.4: a no-cache entry is never served stale, max-stale or not",
        "revalidated",
        headers=(*cc("no-cache"), ETAG),
        request={"Cache-Control": "max-stale"},
    ),
    Row(
        "max-age-0-with-etag",
        "RFC 9111 §4.3: stale on arrival, kept to be revalidated",
        "revalidated",
        headers=(*cc("max-age=0"), ETAG),
    ),
    Row(
        "old-on-arrival-with-etag",
        "RFC 9111 §4.2.3: Age beyond max-age, kept to be revalidated",
        "revalidated",
        headers=(*cc("max-age=10"), ("Age", "20"), ETAG),
    ),
    Row(
        "no-cache-without-validator",
        "RFC 9111 §5.2.2.4: nothing to revalidate with",
        "not-stored",
        headers=cc("no-cache"),
        detail="no-cache",
    ),
    Row(
        "max-age-0-without-validator",
        "RFC 9111 §4.2.1: stale, nothing to revalidate with",
        "not-stored",
        headers=cc("max-age=0"),
        detail="max-age",
    ),
    Row(
        "no-cache-window-0",
        "revalidate_window: 0 keeps nothing to revalidate",
        "not-stored",
        headers=(*cc("no-cache"), ETAG),
        route={"revalidate_window": 0},
        detail="no-cache",
    ),
    Row(
        "gateway-no-cache-with-etag",
        "gateway mode: no-cache is not stored, as before",
        "not-stored",
        headers=(*cc("no-cache"), ETAG),
        route=ROUTE_60,
        settings=GATEWAY,
        detail="no-cache",
    ),
]


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS])
def test_standard(row: Row, make: Any, clock: Clock) -> None:
    client = make({"routes": {"/f": dict(row.route)}, **row.settings})
    asked = {
        "X-Respond-Status": str(row.status),
        "X-Respond-Headers": json.dumps(http_dates(row.headers, clock.time())),
    }

    def get(extra: Mapping[str, str] | None = None) -> Any:
        return client.get("/f/x", {**asked, **(extra or {})})

    if row.expect == "not-stored":
        check_not_stored(client, get, row.status, row.detail, row.miss)
        return
    miss = get()
    check_miss(client, miss, row.status, row.miss)
    assert "stored" in miss.headers["cache-status"]
    if row.expect == "revalidated":
        again = get(row.request)
        assert client.calls.count == 2, "a stored entry that must be revalidated was served"
        assert again.headers["x-cache"] != "HIT"
        return
    check_hit(client, get(row.request), miss, row.status, row.hit)
    if row.expire_after is not None:
        clock.offset = row.expire_after
        late = get()
        assert (late.headers["x-cache"], client.calls.count) == ("MISS", 2), "no longer fresh"


def test_strip_drops_the_targeted_fields_from_a_hit(make: Any) -> None:
    client = make({"mode": "standard", "targeted_fields": "strip", "routes": {"/f": {}}})
    asked = {"X-Respond-Headers": json.dumps([["CDN-Cache-Control", "max-age=60"]])}
    assert client.get("/f/x", asked).headers["x-cache"] == "MISS"
    hit = client.get("/f/x", asked)
    assert hit.headers["x-cache"] == "HIT"
    assert "cdn-cache-control" not in hit.headers


def test_row_ids_are_unique_and_cite_a_clause() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert all(row.clause for row in ROWS)


# -- the unit level ------------------------------------------------------------------------------

NOW = 1_800_000_000.0


def _entry(headers: list[tuple[bytes, bytes]], ttl: int = 10, age: float = 0.0) -> CachedResponse:
    return CachedResponse(200, headers, b"body", NOW - age, ttl)


def _lookup(rule: Rule) -> Lookup:
    return Lookup(rule, "p:k", False, False, None, EmptySource(), "p:i", "p:l")


STANDARD_RULE = Rule("/", 2**31, standard=True, revalidate_window=100)


@pytest.mark.parametrize(
    ("headers", "age", "expected"),
    [
        ([(b"etag", b'"app"')], 5, False),  # still fresh
        ([(b"etag", b'"app"')], 10, True),  # just past its lifetime
        ([(b"etag", b'"app"')], 109, True),
        ([(b"etag", b'"app"')], 110, False),  # past the window
        ([(b"last-modified", b"Sat, 05 Dec 2026 04:03:13 GMT")], 50, True),
        ([(b"etag", body_etag(b"body"))], 50, False),  # the cache's own ETag: no validator
        ([], 50, False),
    ],
)
def test_revalidates(headers: list[tuple[bytes, bytes]], age: float, expected: bool) -> None:
    policy = CachePolicy((STANDARD_RULE,), key_prefix="p")
    assert policy.revalidates(_lookup(STANDARD_RULE), _entry(headers, age=age), NOW) is expected


def test_revalidates_never_on_a_gateway_route() -> None:
    rule = Rule("/", 60)
    policy = CachePolicy((rule,), key_prefix="p")
    assert not policy.revalidates(_lookup(rule), _entry([(b"etag", b'"app"')], age=20), NOW)


def _writes(rule: Rule, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(the stored entry's ttl, the store's TTL for it)."""
    policy = CachePolicy((rule,), key_prefix="p")
    lookup = _lookup(rule)
    start = policy.start_miss(lookup, 200, headers, NOW)
    assert start.store, start.reason
    writes, _ = policy.miss_writes(lookup, start, 200, headers, b"body", NOW)
    return start.ttl, writes[0][2]


def test_an_entry_is_kept_for_the_window() -> None:
    """Kept past its freshness: to be revalidated (with a validator) or served while the app
    cannot be reached (with or without one: tests/test_stale_disconnected.py)."""
    assert _writes(STANDARD_RULE, [(b"cache-control", b"max-age=30"), (b"etag", b'"a"')]) == (
        30,
        130,
    )
    assert _writes(STANDARD_RULE, [(b"cache-control", b"max-age=30")]) == (30, 130)
    # Stored already stale (no-cache) only with a validator: it can only be revalidated.
    no_cache = [(b"cache-control", b"no-cache, max-age=30"), (b"etag", b'"a"')]
    assert _writes(STANDARD_RULE, no_cache) == (0, 100)
    policy = CachePolicy((STANDARD_RULE,), key_prefix="p")
    bare = [(b"cache-control", b"no-cache, max-age=30")]
    assert policy.start_miss(_lookup(STANDARD_RULE), 200, bare, NOW).reason == "no-cache"


def test_a_no_cache_entry_is_never_served_stale() -> None:
    entry = _entry([(b"cache-control", b"no-cache"), (b"etag", b'"a"')], ttl=0, age=1)
    assert CachePolicy.freshness(entry, NOW) == "expired"
    directives = request_directives("max-stale")
    assert directives is not None and not directives.tolerates(entry, NOW)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"cache-control", b"max-age=5")], True),
        ([(b"cache-control", b"no-cache")], False),
        ([(b"cdn-cache-control", b"must-revalidate"), (b"cache-control", b"max-age=5")], False),
        ([(b"cdn-cache-control", b"no-cache")], False),
        ([(b"surrogate-control", b"max-age=5")], True),
        # A targeted field never loosens what Cache-Control forbids.
        ([(b"cache-control", b"must-revalidate"), (b"cdn-cache-control", b"max-age=5")], False),
    ],
)
def test_serves_stale(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert serves_stale(_entry(headers)) is expected


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (b"max-age=3600", {"max-age": "3600"}),
        (b"foobar, max-age=3600", {"foobar": None, "max-age": "3600"}),
        (b"max-age=99999999999", {"max-age": "99999999999"}),
        (b"private, no-cache", {"private": None, "no-cache": None}),
        (b"no-store=?0, max-age=5", {"max-age": "5"}),
        (b'max-age=1, ext=(a b;x=1 "c");y, other=?1', {"max-age": "1", "ext": None, "other": None}),
        (b"MaX-aGe=3600", None),
        (b"max-age =100", None),
        (b"max-age= 100", None),
        (b"max-age=10000, &&&&&", None),
        (b'max-age="10000"', None),
        (b"max-age=-1", None),
        (b"max-age=1.5", None),
        (b"no-store=1", None),
        (b"max-age=1,", None),
        (b"", None),
        (b"caf\xe9", None),
    ],
)
def test_cdn_cache_control(value: bytes, parsed: dict[str, str | None] | None) -> None:
    assert cdn_cache_control([value]) == parsed


def test_sf_dictionary_values() -> None:
    assert parse_sf_dictionary('a="x\\"y", b=:AAA=:, c=1.5, d=?1, e') == {
        "a": 'x"y',
        "b": ":AAA=:",
        "c": 1.5,
        "d": True,
        "e": True,
    }


def test_surrogate_control_and_precedence() -> None:
    assert surrogate_control([b"max-age=300+60, no-store"]) == {"max-age": "300", "no-store": None}
    assert surrogate_control([b'content="ESI/1.0"']) is None
    assert surrogate_control([b"max-age=30;device1"]) is None  # targeted at another device
    assert targeted_directives([b"max-age=1"], [b"max-age=9"]) == {"max-age": "1"}
    assert targeted_directives([b"MAX-AGE=1"], [b"max-age=9"]) == {"max-age": "9"}
    assert targeted_directives([], []) is None


# -- configuration ---------------------------------------------------------------------------------


def test_revalidate_window_defaults_and_overrides() -> None:
    settings = load_config(
        {
            "mode": "standard",
            "routes": {
                "/a": {},
                "/b": {"revalidate_window": 5},
                "/g": {"ttl": 9, "mode": "gateway"},
            },
        }
    )
    windows = {rule.route: rule.revalidate_window for rule in build_policy(settings).table.rules}
    assert windows == {"/a": 3600, "/b": 5, "/g": 0}
    settings = load_config({"mode": "standard", "revalidate_window": 60, "routes": {"/a": {}}})
    assert build_policy(settings).table.rules[0].revalidate_window == 60


def test_revalidate_window_is_refused_on_a_gateway_route() -> None:
    with pytest.raises(ConfigError, match=r"routes\./a\.revalidate_window: applies to mode"):
        load_config({"routes": {"/a": {"ttl": 5, "revalidate_window": 10}}})


def test_targeted_fields_setting() -> None:
    with pytest.raises(ConfigError, match="targeted_fields: must be pass or strip"):
        load_config({"targeted_fields": "drop"})
    settings = load_config(
        {
            "mode": "standard",
            "targeted_fields": "strip",
            "routes": {"/s": {}, "/g": {"ttl": 9, "mode": "gateway"}},
        }
    )
    strip = {rule.route: rule.strip_targeted for rule in build_policy(settings).table.rules}
    assert strip == {"/s": True, "/g": False}
    assert (
        not build_policy(load_config({"mode": "standard", "routes": {"/s": {}}}))
        .table.rules[0]
        .strip_targeted
    )
