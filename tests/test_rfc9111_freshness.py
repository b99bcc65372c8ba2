"""Freshness, lifetime and Age (RFC 9111 §4.2, §5.1, §5.3) and `mode: standard` (issue #20).

One table, run through both adapters (Starlette's TestClient around the ASGI middleware, Flask's
test client around the WSGI one) on the memory store and the real Redis. Each `Row` cites its
clause, the route configuration, what the app answers, and what the cache must do:

* ``stored``: a MISS (with the `miss` headers), then a HIT that does not call the app (with the
  `hit` headers); `later` seconds on, still a HIT (with the `later_hit` headers); `expire_after`
  seconds after the MISS, no longer fresh: the app answers again;
* ``not-stored``: BYPASS twice, both answered by the app, `Cache-Status` naming `detail`, with
  the `miss` headers (a BYPASS passes the app's `Age` on as it came).

The app answers what the request asks for (`X-Respond-Status`, `X-Respond-Headers`: a JSON list
of [name, value], several lines of one name kept apart). `{now+N}` / `{now-N}` in a value is the
HTTP date N seconds from the adapters' clock, which the tests move (the stores keep real time).
The app, the clients and the fixtures are `tests/helpers/echo_table.py`, which the standard-mode
table (test_rfc9111_standard.py) shares.

Then the unit level: Age parsing, the lifetime computations, what `miss_writes` stores and
what a HIT says, and the config (`mode`, and what standard mode refuses), also through
`cache-middleware check`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from cache_middleware import ConfigError, load_config
from cache_middleware._core.entry import CachedResponse, decode_entry
from cache_middleware._core.headers import age_seconds
from cache_middleware._core.policy import CachePolicy, Lookup
from cache_middleware._core.rules import UNBOUNDED_TTL, Rule
from cache_middleware._core.storing import (
    HEURISTIC_CAP,
    freshness_lifetime,
    heuristic_lifetime,
)
from cache_middleware.cli import main as cli_main
from cache_middleware.wiring import build_policy
from tests.helpers.echo_table import (  # noqa: F401  (fixtures used by name)
    Clock,
    EmptySource,
    Headers,
    check_fields,
    check_hit,
    check_miss,
    check_not_stored,
    http_dates,
    kind,
    store,
)
from tests.helpers.echo_table import clock as clock
from tests.helpers.echo_table import make as make

# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    clause: str
    expect: str  # "stored" or "not-stored"
    headers: Headers = ()  # what the app adds to its answer; `{now+N}` is an HTTP date
    status: int = 200
    route: Mapping[str, Any] | None = None  # the route's fields; None: {"ttl": 60}
    settings: Mapping[str, Any] = field(default_factory=dict)  # top-level config
    detail: str | None = None  # not-stored: the Cache-Status detail
    miss: Mapping[str, Any] = field(default_factory=dict)  # None: absent; a tuple: one of
    hit: Mapping[str, Any] = field(default_factory=dict)
    later: float | None = None  # seconds after the MISS: still a HIT, with `later_hit`
    later_hit: Mapping[str, Any] = field(default_factory=dict)
    expire_after: float | None = None  # seconds after the MISS: the app answers again


def cc(value: str) -> Headers:
    return (("Cache-Control", value),)


STANDARD = {"mode": "standard"}
DAY = 24 * 3600

ROWS: list[Row] = [
    # -- Age: the first line, its first member (bug 2) -------------------------------------------
    Row(
        "age-list-first-member",
        "RFC 9111 §5.1: `Age: 7200, 0` is 7200",
        "stored",
        headers=(("Age", "7200, 0"), *cc("max-age=10800")),
        route={"ttl": DAY},
        miss={"age": "7200"},
        hit={"age": "7200", "cache-status": "cache-middleware; hit; ttl=3600"},
    ),
    Row(
        "age-list-old-first-is-stale",
        "RFC 9111 §5.1 (cache-tests age-parse-suffix)",
        "not-stored",
        headers=(("Age", "7200, 0"), *cc("max-age=3600")),
        detail="max-age",
        miss={"age": "7200, 0"},
    ),
    Row(
        "age-list-fresh-first",
        "RFC 9111 §5.1 (cache-tests age-parse-prefix)",
        "stored",
        headers=(("Age", "0, 7200"), *cc("max-age=3600")),
        hit={"age": "0"},
    ),
    Row(
        "age-first-line-old-is-stale",
        "RFC 9111 §5.1: the first field line (cache-tests age-parse-suffix-twoline)",
        "not-stored",
        headers=(("Age", "7200"), ("Age", "0"), *cc("max-age=3600")),
        detail="max-age",
    ),
    Row(
        "age-first-line-fresh",
        "RFC 9111 §5.1: the first field line (cache-tests age-parse-prefix-twoline)",
        "stored",
        headers=(("Age", "0"), ("Age", "7200"), *cc("max-age=3600")),
        miss={"age": "0"},
        hit={"age": "0"},
    ),
    *(
        Row(
            f"age-invalid-{name}-ignored",
            "RFC 9111 §5.1: an invalid Age is ignored",
            "stored",
            headers=(("Age", value), *cc("max-age=3600")),
            miss={"age": None},
            hit={"age": "0"},
        )
        for name, value in (("text", "abc"), ("negative", "-7200"), ("fraction", "7200.0"))
    ),
    Row(
        "age-overflow-is-stale",
        "RFC 9111 §1.2.2: 2^31 and more is 2^31",
        "not-stored",
        headers=(("Age", "2147483648"), *cc("max-age=3600")),
        detail="max-age",
        miss={"age": "2147483648"},
    ),
    # -- Age and an Expires - Date lifetime (bug 3) ------------------------------------------------
    Row(
        "expires-less-age",
        "RFC 9111 §4.2.3: an upstream Age counts against Expires - Date",
        "stored",
        headers=(("Date", "{now+0}"), ("Expires", "{now+30}"), ("Age", "25")),
        miss={"age": "25"},
        hit={"age": "25", "cache-status": "cache-middleware; hit; ttl=5"},
        later=4,
        expire_after=5.5,
    ),
    Row(
        "expires-older-than-age",
        "RFC 9111 §4.2.3 (cache-tests freshness-expires-age-fast-date)",
        "not-stored",
        headers=(("Date", "{now+10}"), ("Expires", "{now+20}"), ("Age", "15")),
        detail="max-age",
        miss={"age": "15"},  # cache-tests' setup reads it
    ),
    Row(
        "bypass-passes-age-on",
        "RFC 9111 §5.1: a BYPASS is the app's answer, its Age as it came",
        "not-stored",
        headers=(*cc("no-store"), ("Age", "5")),
        detail="no-store",
        miss={"age": "5", "x-cache": "BYPASS"},
    ),
    # -- several Expires or Date lines (bug 5) -----------------------------------------------------
    Row(
        "expires-two-lines-stale",
        "RFC 9111 §4.2.1: several values, considered stale",
        "not-stored",
        headers=(("Date", "{now+0}"), ("Expires", "{now+30}"), ("Expires", "{now+31}")),
        detail="max-age",
    ),
    Row(
        "date-two-lines-with-expires-stale",
        "RFC 9111 §4.2.1: several values, considered stale",
        "not-stored",
        headers=(("Date", "{now+0}"), ("Date", "{now+1}"), ("Expires", "{now+30}")),
        detail="max-age",
    ),
    Row(
        "date-two-lines-with-max-age",
        "RFC 9111 §4.2.1: max-age needs no Date",
        "stored",
        headers=(("Date", "{now+0}"), ("Date", "{now+1}"), *cc("max-age=30")),
        hit={"cache-status": "cache-middleware; hit; ttl=30"},
    ),
    # -- Age = current_age (RFC 9111 §4.2.3, §5.1) -------------------------------------------------
    Row(
        "age-counts-upstream-time",
        "RFC 9111 §5.1: Age on a HIT includes the age it arrived with",
        "stored",
        headers=(*cc("max-age=100000"), ("Age", "30")),
        miss={"age": "30"},
        hit={"age": "30"},
        later=3,
        later_hit={"age": "33", "cache-status": "cache-middleware; hit; ttl=60"},
        route={"ttl": 63},
        expire_after=63.5,
    ),
    Row(
        "age-gateway-default-cache-control",
        "RFC 9111 §4.2.3: the route TTL bounds the time in this cache; Age beside max-age",
        "stored",
        headers=(("Age", "30"),),
        miss={"age": "30", "cache-control": "public, max-age=90"},
        hit={"age": "30", "cache-control": "public, max-age=90"},
        later=10,
        later_hit={"age": "40", "cache-status": "cache-middleware; hit; ttl=50"},
        expire_after=60.5,
    ),
    Row(
        "age-absent-not-sent-on-miss",
        "RFC 9111 §5.1",
        "stored",
        miss={"age": None},
        hit={"age": "0", "cache-control": "public, max-age=60"},
    ),
    # -- mode: standard: freshness from the response (RFC 9111 §4.2) -------------------------------
    Row(
        "standard-no-freshness-not-stored",
        "RFC 9111 §4.2 (cache-tests freshness-none)",
        "not-stored",
        settings=STANDARD,
        detail="no-freshness",
    ),
    Row(
        "standard-route-mode",
        "RFC 9111 §4.2: a route's own mode",
        "not-stored",
        route={"ttl": 60, "mode": "standard"},
        detail="no-freshness",
    ),
    Row(
        "standard-route-back-to-gateway",
        "route mode: gateway under a global standard",
        "stored",
        settings=STANDARD,
        route={"ttl": 60, "mode": "gateway"},
        hit={"cache-control": "public, max-age=60"},
    ),
    Row(
        "standard-max-age",
        "RFC 9111 §5.2.2.1; no Cache-Control of the cache's own",
        "stored",
        headers=cc("max-age=30"),
        settings=STANDARD,
        route={},
        miss={"x-cache-ttl": "30", "cache-control": "max-age=30"},
        hit={"x-cache-ttl": "30", "cache-control": "max-age=30"},
        expire_after=30.5,
    ),
    Row(
        "standard-ttl-bounds",
        "route ttl: an upper bound in standard mode",
        "stored",
        headers=cc("max-age=3000"),
        settings=STANDARD,
        route={"ttl": 10},
        hit={"cache-status": "cache-middleware; hit; ttl=10"},
        expire_after=10.5,
    ),
    Row(
        "standard-expires",
        "RFC 9111 §5.3; nothing added",
        "stored",
        headers=(("Date", "{now+0}"), ("Expires", "{now+20}")),
        settings=STANDARD,
        route={},
        hit={"cache-control": None, "cache-status": "cache-middleware; hit; ttl=20"},
        expire_after=20.5,
    ),
    Row(
        "standard-heuristic",
        "RFC 9111 §4.2.2: 10% of Date - Last-Modified",
        "stored",
        headers=(("Date", "{now+0}"), ("Last-Modified", "{now-1000}")),
        settings=STANDARD,
        route={},
        hit={"cache-control": None, "x-cache-ttl": "100"},
        later=99,
        expire_after=100.5,
    ),
    Row(
        "standard-heuristic-capped",
        "RFC 9111 §4.2.2: capped (one day)",
        "stored",
        headers=(("Date", "{now+0}"), ("Last-Modified", "{now-31536000}")),
        settings=STANDARD,
        route={},
        hit={"x-cache-ttl": str(DAY)},
    ),
    Row(
        "standard-heuristic-without-date",
        "RFC 9111 §4.2.2: the time received stands for Date",
        "stored",
        headers=(("Last-Modified", "{now-1000}"),),
        settings=STANDARD,
        route={},
        hit={"x-cache-ttl": ("99", "100")},
    ),
    Row(
        "standard-heuristic-404-without-statuses",
        "RFC 9110 §15.1: 404 is heuristically cacheable",
        "stored",
        status=404,
        headers=(("Date", "{now+0}"), ("Last-Modified", "{now-1000}")),
        settings=STANDARD,
    ),
    Row(
        "standard-future-last-modified",
        "RFC 9111 §4.2.2: no history, no heuristic",
        "not-stored",
        headers=(("Date", "{now+0}"), ("Last-Modified", "{now+100}")),
        settings=STANDARD,
        detail="no-freshness",
    ),
    Row(
        "standard-invalid-last-modified",
        "RFC 9110 §5.6.7: not a date",
        "not-stored",
        headers=(("Last-Modified", "yesterday"),),
        settings=STANDARD,
        detail="no-freshness",
    ),
    *(
        Row(
            f"standard-explicit-{status}-without-statuses",
            "RFC 9111 §3: explicit freshness, any status the cache may store",
            "stored",
            status=status,
            headers=cc("max-age=30"),
            settings=STANDARD,
        )
        for status in (203, 204, 301, 404, 410, 501)
    ),
    *(
        Row(
            f"standard-explicit-{status}-stored",
            "RFC 9111 §3: any final status with explicit freshness (the app chose it)",
            "stored",
            status=status,
            headers=cc("max-age=30"),
            settings=STANDARD,
        )
        for status in (299, 302, 303, 307, 400, 499, 500, 503, 599)
    ),
    Row(
        "standard-206-refused",
        "RFC 9111 §3.3-3.4: a part is never stored as a response",
        "not-stored",
        status=206,
        headers=cc("max-age=30"),
        settings=STANDARD,
        detail="status",
    ),
    *(
        Row(
            f"standard-heuristic-{status}-refused",
            "RFC 9111 §4.2.2: no heuristic freshness for a status outside RFC 9110 §15.1's",
            "not-stored",
            status=status,
            headers=(("Date", "{now+0}"), ("Last-Modified", "{now-1000}")),
            settings=STANDARD,
            detail="status",
        )
        for status in (302, 400, 500, 503)
    ),
    Row(
        "standard-age-counts",
        "RFC 9111 §4.2.3 in standard mode",
        "stored",
        headers=(*cc("max-age=40"), ("Age", "30")),
        settings=STANDARD,
        route={},
        miss={"age": "30"},
        hit={"age": "30", "cache-status": "cache-middleware; hit; ttl=10"},
        expire_after=10.5,
    ),
    Row(
        "standard-credentials-still-refused",
        "RFC 9111 §3.5 holds in standard mode",
        "not-stored",
        headers=(*cc("max-age=30"), ("Set-Cookie", "s=1")),
        settings=STANDARD,
        detail="set-cookie",
    ),
]


def _param(row: Row) -> Any:
    return pytest.param(row, id=row.id)


@pytest.mark.parametrize("row", [_param(row) for row in ROWS])
def test_freshness(row: Row, make: Any, clock: Clock) -> None:
    route = {"ttl": 60} if row.route is None else dict(row.route)
    client = make({"routes": {"/f": route}, **row.settings})
    asked = {
        "X-Respond-Status": str(row.status),
        "X-Respond-Headers": json.dumps(http_dates(row.headers, clock.time())),
    }

    def get() -> Any:
        return client.get("/f/x", asked)

    if row.expect == "not-stored":
        check_not_stored(client, get, row.status, row.detail, row.miss)
        return
    assert row.expect == "stored"
    miss = get()
    check_miss(client, miss, row.status, row.miss)
    check_hit(client, get(), miss, row.status, row.hit)
    if row.later is not None:
        clock.offset = row.later
        later = get()
        assert (later.headers["x-cache"], client.calls.count) == ("HIT", 1), "still fresh"
        check_fields(later, row.later_hit, "later HIT")
    if row.expire_after is not None:
        clock.offset = row.expire_after
        late = get()
        assert (late.headers["x-cache"], client.calls.count) == ("MISS", 2), "no longer fresh"


def test_row_ids_are_unique_and_cite_a_clause() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))
    assert all(row.clause for row in ROWS)


# -- the unit level: parsing and lifetimes --------------------------------------------------------

NOW = 1_800_000_000.0


def date(offset: float) -> bytes:
    return formatdate(NOW + offset, usegmt=True).encode()


@pytest.mark.parametrize(
    ("line", "age"),
    [
        (b"7200", 7200),
        (b"7200, 0", 7200),
        (b"0, 7200", 0),
        (b" 12 ", 12),
        (b"abc", None),
        (b"-7200", None),
        (b"7200.0", None),
        (b"", None),
        (b"99999999999999", 2**31),
    ],
)
def test_age_is_the_first_member(line: bytes, age: int | None) -> None:
    assert age_seconds(line) == age


@pytest.mark.parametrize(
    ("directives", "expires", "dates", "lifetime"),
    [
        ({"s-maxage": "30", "max-age": "10"}, [], [], 30),
        ({"max-age": "10"}, [date(100)], [], 10),
        ({"max-age": "abc"}, [], [], 0),
        ({}, [], [], None),
        ({}, [date(30)], [date(0)], 30),
        ({}, [date(30)], [], 30),  # no Date: the time received
        ({}, [date(30)], [b"garbage"], 30),  # an invalid Date too (cache-tests)
        ({}, [date(-30)], [date(0)], 0),
        ({}, [b"0"], [date(0)], 0),  # RFC 9111 §5.3: invalid, already expired
        ({}, [date(30), date(31)], [date(0)], 0),  # several Expires: stale
        ({}, [date(30)], [date(0), date(0)], 0),  # several Date, needed: stale
        ({"max-age": "30"}, [], [date(0), date(1)], 30),  # several Date, not needed
    ],
)
def test_freshness_lifetime(
    directives: dict[str, str | None], expires: list[bytes], dates: list[bytes], lifetime: int
) -> None:
    assert freshness_lifetime(directives, expires, dates, NOW) == lifetime


@pytest.mark.parametrize(
    ("status", "modified", "dates", "lifetime"),
    [
        (200, date(-1000), [date(0)], 100),
        (200, date(-1000), [], 100),
        (404, date(-1000), [date(0)], 100),
        (200, date(-10 * 365 * 86400), [date(0)], HEURISTIC_CAP),
        (200, date(-1000), [date(0), date(0)], None),
        (200, date(100), [date(0)], None),  # modified after Date
        (200, b"yesterday", [date(0)], None),
        (200, None, [date(0)], None),
        (206, date(-1000), [date(0)], None),
        (302, date(-1000), [date(0)], None),
        (500, date(-1000), [date(0)], None),
    ],
)
def test_heuristic_lifetime(
    status: int, modified: bytes | None, dates: list[bytes], lifetime: int | None
) -> None:
    assert heuristic_lifetime(status, modified, dates, NOW) == lifetime


def test_heuristic_cap_is_a_day() -> None:
    assert HEURISTIC_CAP == 24 * 3600


# -- the unit level: what is stored, what a HIT says ----------------------------------------------


def _policy(**route: Any) -> tuple[CachePolicy, Lookup]:
    policy = build_policy(load_config({"routes": {"/u": {"ttl": 60, **route}}}))
    lookup = policy.plan("GET", "/u", "", EmptySource())
    assert isinstance(lookup, Lookup)
    return policy, lookup


def test_an_upstream_age_sets_the_entry_back() -> None:
    """`stored_at = now - age`, `ttl` the whole lifetime: `now - stored_at` is the current_age
    everywhere (freshness, Age, Cache-Status), and Redis keeps it for what is left."""
    policy, lookup = _policy(stale_while_revalidate=7)
    headers = [(b"cache-control", b"max-age=100"), (b"age", b"30")]
    start = policy.start_miss(lookup, 200, headers, NOW)
    assert (start.store, start.ttl, start.age) == (True, 90, 30)  # min(60 + 30, 100)
    assert start.headers.count((b"age", b"30")) == 1
    writes, kept = policy.miss_writes(lookup, start, 200, headers, b"body", NOW)
    entry = decode_entry(writes[0][1])
    assert isinstance(entry, CachedResponse)
    assert (entry.stored_at, entry.ttl) == (NOW - 30, 90)
    assert kept == writes[0][2] == 60 + 7  # what is left of it, and the stale window
    assert policy.freshness(entry, NOW + 59) == "fresh"
    assert policy.freshness(entry, NOW + 61) == "stale-while-revalidate"
    _, hit, _ = policy.respond_hit(lookup, entry, NOW + 5)
    assert (b"age", b"35") in hit
    assert (b"cache-status", b"cache-middleware; hit; ttl=55") in hit
    plain = policy.plain_hit_headers(lookup.rule, lookup.key_header, entry, NOW + 6)
    assert (b"age", b"36") in plain


def test_no_upstream_age_sends_none_on_the_miss() -> None:
    policy, lookup = _policy()
    start = policy.start_miss(lookup, 200, [(b"age", b"old")], NOW)
    assert (start.store, start.ttl, start.age) == (True, 60, None)
    assert not any(name == b"age" for name, _ in start.headers)


def test_the_gateway_ttl_bounds_time_in_this_cache() -> None:
    """Gateway mode, no freshness from the response: `ttl` in this cache, Age on top."""
    policy, lookup = _policy()
    start = policy.start_miss(lookup, 200, [(b"age", b"1000")], NOW)
    assert (start.ttl, start.age) == (1060, 1000)
    assert (b"cache-control", b"public, max-age=1060") in start.headers


def test_a_huge_age_is_capped_and_stale() -> None:
    policy, lookup = _policy()
    start = policy.start_miss(lookup, 200, [(b"age", b"99999999999")], NOW)
    assert (start.store, start.reason) == (False, "max-age")


def test_standard_mode_stores_what_the_response_allows() -> None:
    policy, lookup = _policy(mode="standard")
    assert lookup.rule.standard and lookup.rule.ttl == 60
    none = policy.start_miss(lookup, 200, [], NOW)
    assert (none.store, none.reason) == (False, "no-freshness")
    heuristic = [(b"date", date(0)), (b"last-modified", date(-100_000))]
    start = policy.start_miss(lookup, 200, heuristic, NOW)
    assert (start.store, start.ttl) == (True, 60)  # 10_000 s, bounded by the route's 60
    assert not any(name == b"cache-control" for name, _ in start.headers)
    assert (b"x-cache-ttl", b"60") in start.headers


def test_standard_mode_without_ttl_is_unbounded() -> None:
    policy = build_policy(load_config({"mode": "standard", "routes": {"/u": {}}}))
    lookup = policy.plan("GET", "/u", "", EmptySource())
    assert isinstance(lookup, Lookup)
    assert lookup.rule.ttl == UNBOUNDED_TTL
    start = policy.start_miss(lookup, 200, [(b"cache-control", b"max-age=99999999999")], NOW)
    assert (start.store, start.ttl) == (True, UNBOUNDED_TTL)
    writes, kept = policy.miss_writes(lookup, start, 200, [], b"x", NOW)
    entry = decode_entry(writes[0][1])  # the decoder's bound on `ttl` holds
    assert isinstance(entry, CachedResponse) and entry.ttl == UNBOUNDED_TTL == kept


def test_the_rule_default_is_gateway() -> None:
    assert Rule("/r", 10).standard is False


# -- config ---------------------------------------------------------------------------------------


def test_mode_defaults_and_inheritance() -> None:
    settings = load_config({"routes": {"/a": {"ttl": 1}}})
    assert (settings.mode, settings.routes[0].mode) == ("gateway", "gateway")
    settings = load_config(
        {"mode": "standard", "routes": {"/a": {}, "/b": {"ttl": 5, "mode": "gateway"}}}
    )
    assert settings.mode == "standard"
    assert [(r.path, r.mode, r.ttl) for r in settings.routes] == [
        ("/a", "standard", None),
        ("/b", "gateway", 5),
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mode": "rfc"}, "<dict>: mode: must be gateway or standard, got 'rfc'"),
        (
            {"routes": {"/x": {"ttl": 1, "mode": ["standard"]}}},
            "<dict>: routes./x.mode: must be gateway or standard, got ['standard']",
        ),
        (
            {"routes": {"/x": {"mode": "standard", "statuses": [200, 404]}}},
            "<dict>: routes./x.statuses: does not apply to mode: standard, where the "
            "response's status and freshness decide (RFC 9111); remove it or use mode: gateway",
        ),
        (
            {"mode": "standard", "routes": {"/x": {"negative_ttl": 5}}},
            "<dict>: routes./x.negative_ttl: does not apply to mode: standard, where the "
            "response's status and freshness decide (RFC 9111); remove it or use mode: gateway",
        ),
        (
            {"mode": "standard", "routes": {"/x": {"mode": "gateway"}}},
            "<dict>: routes./x.ttl: is required",
        ),
        (
            {"mode": "standard", "routes": {"/x": {"ttl": 0}}},
            "<dict>: routes./x.ttl: must be a positive integer, got 0",
        ),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == message


def test_check_prints_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    path = tmp_path / "cache.yaml"
    path.write_text("mode: standard\nroutes:\n  /x: {statuses: [200]}\n", encoding="utf-8")
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "cache.yaml: routes./x.statuses: does not apply to mode: standard" in err
    path.write_text("mode: standard\nroutes:\n  /x: {}\n", encoding="utf-8")
    assert cli_main(["check", str(path)]) == 0
