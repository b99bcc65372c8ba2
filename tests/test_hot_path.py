"""The HIT path's memos (keys, route matches, replayed headers): they return exactly what a fresh
derivation would, never mix two requests up, and stay bounded."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cache_middleware._core import planning as planning_module
from cache_middleware._core import replay as replay_module
from cache_middleware._core import rules as rules_module
from cache_middleware._core.entry import CachedResponse, decode_entry, encode_entry
from cache_middleware._core.held import replay_held
from cache_middleware._core.policy import Bypass, CachePolicy, Lookup, RequestView
from cache_middleware.config import load_config
from cache_middleware.wiring import build_policy


class Source:
    def __init__(self, headers: dict[str, str] | None = None, user: str | None = None) -> None:
        self.headers = headers or {}
        self.user = user

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def has_any(self, names: frozenset[str]) -> bool:
        return not names.isdisjoint(self.headers)

    def default_user(self) -> str | None:
        return self.user

    def native(self) -> object:
        return self

    def view(self) -> RequestView:
        return RequestView("GET", "/", "", dict(self.headers))


def make_policy(**extra: Any) -> CachePolicy:
    return build_policy(
        load_config(
            {
                "routes": {
                    "/api/events": {"ttl": 60, "vary_by": ["page"]},
                    "/api/me": {"ttl": 60, "private": True},
                },
                **extra,
            }
        )
    )


def lookup(policy: CachePolicy, path: str, query: str = "", **source: Any) -> Lookup:
    plan = policy.plan("GET", path, query, Source(**source))
    assert isinstance(plan, Lookup), plan
    return plan


def test_remembered_keys_are_the_ones_a_fresh_policy_derives() -> None:
    warm = make_policy()
    cases = [
        ("/api/events", "page=2", {"headers": {"host": "a.example"}}),
        ("/api/events", "page=2", {"headers": {"host": "b.example"}}),
        ("/api/events", "page=3", {"headers": {"host": "a.example"}}),
        ("/api/me", "", {"headers": {"host": "a.example"}, "user": "alice"}),
        ("/api/me", "", {"headers": {"host": "a.example"}, "user": "bob"}),
    ]
    for _ in range(2):  # the second pass is served from the memo
        for path, query, source in cases:
            remembered = lookup(warm, path, query, **source)
            fresh = lookup(make_policy(), path, query, **source)
            assert (remembered.key, remembered.key_header, remembered.index_key) == (
                fresh.key,
                fresh.key_header,
                fresh.index_key,
            )
            assert remembered.lock_key == fresh.lock_key
    keys = {lookup(warm, p, q, **s).key for p, q, s in cases}
    assert len(keys) == len(cases)  # no two requests share a key through the memo


def test_an_unlisted_param_is_remembered_as_a_bypass() -> None:
    policy = make_policy()
    for _ in range(2):
        plan = policy.plan("GET", "/api/events", "other=1", Source({"host": "a"}))
        assert isinstance(plan, Bypass) and plan.reason == "unlisted-param"


def test_the_key_memo_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(planning_module, "_KEY_MEMO_LIMIT", 10)
    policy = make_policy()
    for page in range(35):
        lookup(policy, "/api/events", f"page={page}", headers={"host": "a"})
        assert len(policy._keys) <= 10


def test_the_route_memo_is_bounded_and_remembers_misses_too(monkeypatch: Any) -> None:
    monkeypatch.setattr(rules_module, "_SEEN_LIMIT", 10)
    policy = make_policy()
    for i in range(35):
        assert not policy.covers(f"/nowhere/{i}")
        assert policy.covers(f"/api/events/{i}")
        assert len(policy.table._seen) <= 10


def test_replayed_headers_are_per_entry_and_bounded_in_bytes(monkeypatch: Any) -> None:
    monkeypatch.setattr(replay_module, "_HEADS_MEMO_BYTES", 10_000)
    policy = make_policy()
    plan = lookup(policy, "/api/events", "page=1", headers={"host": "a"})
    now = time.time()
    small = CachedResponse(200, [(b"content-type", b"text/plain")], b"x", now, 60)
    other = CachedResponse(200, [(b"content-type", b"text/html")], b"y", now, 60)
    first = policy.respond_hit(plan, small, now)[1]
    again = policy.respond_hit(plan, small, now)[1]
    assert first == again and first is not again  # a copy each time: callers may append
    assert (b"content-type", b"text/html") in policy.respond_hit(plan, other, now)[1]
    for _ in range(20):  # big bodies: the memo drops what it holds rather than grow past 10 kB
        big = CachedResponse(200, [], b"z" * 4000, now, 60)
        policy.respond_hit(plan, big, now)
        assert policy._heads_bytes <= 10_000


def test_remembered_replay_follows_the_age_of_the_entry() -> None:
    """The replayed headers are remembered per entry and second of age: Age and Cache-Status
    move on as the entry ages, a stale replay says so, and nothing leaks from one to the other."""
    policy = make_policy()
    plan = lookup(policy, "/api/events", "page=1", headers={"host": "a"})
    stored = 1_000_000.0
    entry = CachedResponse(200, [(b"content-type", b"text/plain")], b"x", stored, 60, 30)

    def fields(now: float, stale: str = "") -> dict[bytes, bytes]:
        headers = policy.respond_hit(plan, entry, now, stale=stale)[1]
        assert len(headers) == len({name for name, _ in headers})  # nothing doubled
        return dict(headers)

    assert fields(stored)[b"age"] == b"0"
    assert fields(stored + 0.9)[b"age"] == b"0"
    later = fields(stored + 1.2)
    assert (later[b"age"], later[b"cache-status"]) == (b"1", b"cache-middleware; hit; ttl=59")
    assert later[b"x-cache"] == b"HIT"
    stale = fields(stored + 70, "stale-while-revalidate")
    assert stale[b"x-cache"] == b"STALE"
    assert stale[b"cache-status"] == (
        b"cache-middleware; hit; ttl=-10; fwd=stale; detail=stale-while-revalidate"
    )
    back = fields(stored + 1.5)  # the fresh replay's memo was not disturbed by the stale one
    assert (back[b"age"], back[b"x-cache"]) == (b"1", b"HIT")
    # What a fresh policy replays, field for field (the memo changes nothing but the cost).
    assert fields(stored + 5) == dict(make_policy().respond_hit(plan, entry, stored + 5)[1])


def test_only_an_entry_itself_is_found_in_process_memory() -> None:
    """`found_held` (the ASGI near-cache HIT without an await) takes an entry; a Vary record or
    garbage goes to the full read, which follows or drops it."""
    from cache_middleware._core.entry import HeldEntry, encode_entry, encode_vary

    entry = CachedResponse(200, [(b"content-type", b"text/plain")], b"x", time.time(), 60)
    found = CachePolicy.found_held("k", HeldEntry(encode_entry(entry)))
    assert found is not None and found.entry == entry and found.key == "k"
    assert CachePolicy.found_held("k", encode_entry(entry)) is not None  # plain bytes too
    assert CachePolicy.found_held("k", encode_vary(("accept",))) is None
    assert CachePolicy.found_held("k", b"CMR\x02garbage") is None


# -- the plain GET's short way (CachePolicy.plain_key, the ASGI near-cache HIT) -----------------

_PLAIN_CONFIGS: list[dict[str, Any]] = [
    {},
    {"venue_header": "X-Venue"},
    {"user_header": "X-User"},
    {"trusted_headers": ["X-Forwarded-Host"]},
    {"honor_request_no_cache": True},
    {"key_host": False, "expose_key_header": False},
]
_HEADER_NAMES = [
    "host", "user-agent", "accept", "accept-encoding", "cookie", "authorization",
    "cache-control", "pragma", "if-none-match", "if-modified-since", "if-match", "if-range",
    "range", "content-length", "transfer-encoding", "x-http-method-override",
    "x-forwarded-host", "forwarded", "x-original-url", "x-venue", "x-user",
]  # fmt: skip


_PLAIN_ROUTES = {
    "/api/events": {"ttl": 60},
    "/api/search": {"ttl": 60, "vary_by": ["q"]},
    "/api/items/{id}": {"ttl": 30},
    "/api/me": {"ttl": 60, "private": True},
    "/api/cond": {"ttl": 60, "condition": "tests.test_hot_path:_always"},
}
# Random requests for the two property tests below.
_REQUESTS = {
    "config": st.sampled_from(range(len(_PLAIN_CONFIGS))),
    "method": st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"]),
    "path": st.sampled_from(
        ["/api/events", "/api/events/7", "/api/search", "/api/items/3", "/api/me", "/api/cond"]
    ),
    "query": st.sampled_from(["", "q=a", "q=b&utm=x", "a=1&b=2"]),
    "headers": st.lists(
        st.tuples(
            # The headers a plain GET may carry, often: the short way must be taken, too.
            st.sampled_from([*_HEADER_NAMES, *["host", "user-agent", "accept"] * 6]),
            st.sampled_from(["", "0", "a.example", "x"]),
        ),
        max_size=4,
    ),
    "scheme": st.sampled_from(["http", "https"]),
}


def _plain_policy(extra: dict[str, Any]) -> CachePolicy:
    return build_policy(load_config({"routes": _PLAIN_ROUTES, **extra}))


def _always(view: RequestView) -> bool:
    return True


def _read_by_plan(extra: dict[str, Any]) -> set[str]:
    """What the full way reads of a GET, bar Host and Content-Length: any of these headers
    sends a request the full way (written out here, not taken from the code under test)."""
    read = {
        "cookie", "authorization", "cache-control", "pragma", "if-none-match",
        "if-modified-since", "if-match", "if-range", "range", "transfer-encoding",
        "x-http-method-override", "forwarded", "x-original-url",
    }  # fmt: skip
    if not extra.get("trusted_headers"):
        read.add("x-forwarded-host")
    if "user_header" in extra:
        read.add("x-user")
    return read


@settings(max_examples=400, deadline=None)
@given(**_REQUESTS, varies=st.booleans())
def test_a_plain_get_is_answered_as_the_full_plan_answers_it(
    config: int,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    scheme: str,
    varies: bool,
) -> None:
    """Whenever `plain_key` offers the short way, the full way (the ASGI adapter's request
    source, `plan()`, the first read, `respond_hit()`) looks up the same key and replays the
    very same headers; the short way is offered for plain GETs seen before, and only them."""
    from cache_middleware._asgi.request import AsgiRequest

    policy = _plain_policy(_PLAIN_CONFIGS[config])
    raw = [(name.encode(), value.encode()) for name, value in headers]
    scope = {"type": "http", "method": method, "path": path, "headers": raw, "user": None}
    assert policy.plain_key(method, path, query, raw, scheme) is None  # nothing derived yet
    plan = policy.plan(method, path, query, AsgiRequest(scope), scheme)
    if varies and isinstance(plan, Lookup):
        policy._learn(plan.key, ("accept",), plan.rule.route)  # a Vary record was seen
    plain = policy.plain_key(method, path, query, raw, scheme)
    extra = _PLAIN_CONFIGS[config]
    # The ASGI check takes any Content-Length for a body (plan() lets "" and "0" through).
    boring = not (_read_by_plan(extra) | {"content-length"}) & {name for name, _ in headers}
    expect_plain = (
        method == "GET"
        and isinstance(plan, Lookup)
        and path not in ("/api/me", "/api/cond")
        and "venue_header" not in extra
        and not varies
        and [name for name, _ in headers].count("host") <= 1
        and boring
    )
    assert (plain is not None) == bool(expect_plain), (plan, plain)
    if plain is None:
        return
    assert isinstance(plan, Lookup)
    rule, key, key_header = plain
    assert (rule, key, key_header) == (plan.rule, plan.key, plan.key_header)
    assert not (plan.head or plan.refresh or plan.no_store) and plan.venue is None
    assert policy.first_key(plan) == key
    now = time.time()
    entry = CachedResponse(
        200, [(b"content-type", b"text/plain"), (b"etag", b'"e"')], b"x", now - 3, 60
    )
    assert policy.respond_hit(plan, entry, now) == (
        200,
        policy.plain_hit_headers(rule, key_header, entry, now),
        b"x",
    )


@settings(max_examples=400, deadline=None)
@given(**_REQUESTS)
def test_the_wsgi_short_way_agrees_with_the_full_plan(
    config: int,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    scheme: str,
) -> None:
    """The WSGI adapter's short way (headers read from the environ, then `plain_key_of`) is
    taken only where `plan()`, given the same environ, looks up the same key with no flag set
    and would replay the very same headers; and for every plain GET seen before."""
    from cache_middleware._wsgi.request import WsgiRequest, environ_name
    from cache_middleware.wsgi import WSGICacheMiddleware

    extra = _PLAIN_CONFIGS[config]
    middleware = WSGICacheMiddleware(
        lambda environ, start: [], config={"routes": _PLAIN_ROUTES, **extra}
    )
    policy = middleware.policy
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "wsgi.url_scheme": scheme,
    }
    for name, value in headers:  # a server joins a repeated header's values
        key = environ_name(name)
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    plan = policy.plan(method, path, query, WsgiRequest(environ), scheme)
    held: dict[str, bytes] = {}
    if isinstance(plan, Lookup):
        entry = CachedResponse(200, [(b"content-type", b"text/plain")], b"x", time.time(), 60)
        held[plan.key] = encode_entry(entry)
    plain = middleware._plain_key(environ, path)
    replay = (
        None
        if plain is None
        else replay_held(policy, plain, held.get, middleware.book, middleware.trend, time.time())
    )
    read = _read_by_plan(extra)
    names = {name for name, _ in headers}
    lengths = [value for name, value in headers if name == "content-length"]
    expect = (
        method == "GET"
        and isinstance(plan, Lookup)
        and path not in ("/api/me", "/api/cond")
        and "venue_header" not in extra
        and not read & names
        and (not lengths or (len(lengths) == 1 and lengths[0] in ("", "0")))
    )
    assert (replay is not None) == bool(expect), (plan, replay)
    if replay is None:
        return
    assert isinstance(plan, Lookup)
    assert not (plan.head or plan.refresh or plan.no_store) and plan.venue is None
    assert policy.first_key(plan) == plan.key
    hit = policy.respond_hit(plan, decode_entry(held[plan.key]), time.time())
    assert (replay[0], dict(replay[1]), replay[2]) == (hit[0], dict(hit[1]), hit[2])


def test_header_names_that_are_not_bytes_take_the_full_way() -> None:
    """ASGI says bytes; a server that hands over a bytearray must cost the short way, not the
    request (an unhashable name would otherwise raise out of the set lookup)."""
    from cache_middleware._asgi.request import AsgiRequest

    policy = _plain_policy({})
    raw: list[tuple[Any, bytes]] = [(bytearray(b"host"), b"a.example")]
    scope = {"type": "http", "method": "GET", "path": "/api/events", "headers": raw}
    plan = policy.plan("GET", "/api/events", "", AsgiRequest(scope))
    assert isinstance(plan, Lookup)
    assert policy.plain_key("GET", "/api/events", "", raw) is None
    assert policy.plain_key("POST", "/api/events", "", raw) is None  # no scan for POST
