"""Security: the memory store's glob matcher and what the stores may replay.

Issue #17, weakness 8: `compile_glob` was a backtracking regex run under the memory store's lock;
`*a*a*a*a*a*!` against a 60-byte key took seconds, 13 stars hours. The matcher now cuts the glob
at its stars and places each segment leftmost, with Redis' exact semantics: checked here against
the real server on a hand-written table of corners (signed `char` ranges, the nesting limit,
the empty key) and on hypothesis-generated (pattern, key) pairs, with `SSCAN MATCH` (the same
`stringmatchlen` as SCAN and KEYS, over a set of this test's own, so no other key is visited)
and with `SCAN MATCH` itself.

Issue #17, weakness 11: an entry whose status or headers no route could have stored (a 101, a
`Transfer-Encoding`, a `Content-Length` that is not the body's, a header value with CR LF) is
corrupt: a MISS, and the value is deleted, on the memory store and the real Redis, through the
ASGI and the WSGI adapter.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
import redis
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.entry import (
    MAGIC,
    STANDARD_STATUSES,
    STORABLE_STATUSES,
    CachedResponse,
    CorruptEntry,
    decode_entry,
    encode_entry,
)
from cache_middleware._core.globs import compile_glob, escape_glob, parse_glob
from cache_middleware._core.policy import CachePolicy, Found, Lookup, NotFound
from cache_middleware._core.rules import Rule
from cache_middleware.config import CACHEABLE_STATUSES
from cache_middleware.storage.factory import shared_memory_store
from cache_middleware.storage.memory import MemoryStore

# -- the glob matcher against the real Redis ------------------------------------------------------


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def redis_matches(client: redis.Redis, set_key: str, pattern: str, keys: list[str]) -> set[bytes]:
    """Which of `keys` Redis' stringmatchlen matches `pattern` against (SSCAN MATCH over a set
    holding exactly them: one call, nothing else in the database visited)."""
    client.delete(set_key)
    members = {_raw(k) for k in keys}
    client.sadd(set_key, *members)
    client.expire(set_key, 60)
    found: set[bytes] = set()
    cursor = 0
    while True:
        cursor, page = client.sscan(set_key, cursor, match=_raw(pattern), count=10_000)
        found.update(m for m in page if isinstance(m, bytes))
        if cursor == 0:
            return found


def memory_matches(pattern: str, keys: list[str]) -> set[bytes]:
    matcher = compile_glob(pattern)
    return {_raw(k) for k in keys if matcher.match(k)}


# Corners where a translation goes wrong, beyond tests/test_globs.py's table.
CORNERS: list[tuple[str, list[str]]] = [
    # C `char` is signed: a range with an end at or above 0x80 runs through the negatives.
    ("[a-\udcc3]", ["\udcff", "b", "z", "\x00", "a", "\udcc3", "\udc80"]),
    ("[\x01-\udcff]", ["\x00", "\x01", "\udcff", "\udc80", "a"]),
    ("[^\x01-\udcff]", ["\x00", "\x01", "\udcff", "\udc80", "a"]),
    ("[é-a]", ["b", "\udcc3", "\udca9", "é"]),
    # the empty key: only "" and the bare "*"
    ("*", ["", "a"]),
    ("**", ["", "a"]),
    ("", ["", "a"]),
    ("?*", ["", "a"]),
    ("[^]*", ["", "a"]),
    # unbalanced classes eat the rest of the pattern (issue #17's venue escape)
    ("g:*[:venue:lisbon", ["g:x:venue:porto", "g:x:venue:lisbon", "g:xv", "g:x"]),
    ("g:*[^:venue:lisbon", ["g:x:venue:porto", "g:x", "g:xl", "g:xz"]),
    # catastrophic for a backtracking matcher, instant here
    ("*a*a*a*a*a*a*a*a*a*a*a*a*a*!", ["a" * 60, "a" * 60 + "!", "a" * 12 + "!"]),
    ("*a*a*a*", ["aaa", "aa", "xaxaxax"]),
    # escapes and stars next to each other
    ("*\\**", ["*", "a*b", "ab"]),
    ("\\", ["\\", ""]),
    ("a\\*", ["a*", "ab"]),
]


@pytest.mark.parametrize(("pattern", "keys"), CORNERS, ids=[repr(p) for p, _ in CORNERS])
def test_corners_match_what_redis_matches(
    redis_client: redis.Redis, prefix: str, pattern: str, keys: list[str]
) -> None:
    assert memory_matches(pattern, keys) == redis_matches(
        redis_client, f"{prefix}:set", pattern, keys
    )


@pytest.mark.parametrize("runs", [999, 1000, 1001, 1002])
def test_redis_nesting_limit_is_reproduced(
    redis_client: redis.Redis, prefix: str, runs: int
) -> None:
    """Redis stops recursing at 1,000 nested stars: past it, nothing matches."""
    keys = ["a" * (runs + 3), "a" * (runs - 1)]
    for pattern in ("*a" * runs, "*a" * runs + "*", "x" + "*a" * runs):
        assert memory_matches(pattern, keys) == redis_matches(
            redis_client, f"{prefix}:set", pattern, keys
        ), (runs, pattern[:10])


GLOB_ALPHABET = st.sampled_from(
    ["*", "*", "?", "[", "]", "^", "-", "\\", "a", "b", "c", ":", "é", "\udcff", "\udc80", "\x7f"]
)
KEY_ALPHABET = st.sampled_from(
    ["a", "b", "c", ":", "-", "]", "[", "*", "?", "\\", "^", "é", "\udcff", "\udc80", "\x00"]
)
PATTERNS = st.lists(GLOB_ALPHABET, max_size=10).map("".join)
KEYS = st.lists(st.lists(KEY_ALPHABET, max_size=8).map("".join), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(patterns=st.lists(PATTERNS, min_size=1, max_size=6), keys=KEYS)
@example(patterns=["[a-]", "[]x]", "[^]"], keys=["a", "]", "-", "x]", "_"])
@example(patterns=["*?*", "?*?", "[\\]]*"], keys=["", "x", "]x", "xx"])
def test_generated_globs_match_what_redis_matches(
    redis_client: redis.Redis, prefix: str, patterns: list[str], keys: list[str]
) -> None:
    for pattern in patterns:
        assert memory_matches(pattern, keys) == redis_matches(
            redis_client, f"{prefix}:set", pattern, keys
        ), pattern


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(pattern=PATTERNS, keys=KEYS)
def test_generated_globs_agree_with_scan_match(
    redis_client: redis.Redis, prefix: str, pattern: str, keys: list[str]
) -> None:
    """The same through SCAN MATCH over keys of this test's own prefix (the prefix, escaped,
    heads the pattern, as every admin pattern's literal head does)."""
    head = f"{prefix}:{uuid.uuid4().hex[:8]}:"
    names = sorted({head + key for key in keys})
    pipe = redis_client.pipeline(transaction=False)
    for name in names:
        pipe.set(_raw(name), b"1", ex=60)
    pipe.execute()
    try:
        full = escape_glob(head) + pattern
        said = set(redis_client.scan_iter(match=_raw(full), count=10_000))
        assert memory_matches(full, names) == said
    finally:
        redis_client.delete(*(_raw(n) for n in names))


def test_catastrophic_globs_take_no_time() -> None:
    """13 stars against a 60-byte key: hours for a backtracking regex. Run in a child process
    so that a regression fails on the timeout instead of hanging the suite."""
    code = (
        "from cache_middleware._core.globs import compile_glob\n"
        "import time\n"
        "start = time.perf_counter()\n"
        "for stars in range(2, 40):\n"
        "    glob = '/api/events/' + '*a' * stars + '*!'\n"
        "    for key in ('/api/events/' + 'a' * 60, '/api/events/' + 'a' * 4000 + 'b'):\n"
        "        assert not compile_glob(glob).match(key)\n"
        "print(time.perf_counter() - start)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert float(done.stdout) < 5.0


def test_memory_store_invalidation_with_a_catastrophic_glob_is_quick() -> None:
    store = MemoryStore()
    store.set("/api/events/" + "a" * 60, b"x", 60)
    start = time.perf_counter()
    assert store.delete_matching("/api/events/*a*a*a*a*a*a*!") == 0
    assert store.keys_matching("/api/events/*a*a*a*a*a*a*!") == []
    assert time.perf_counter() - start < 1.0


def test_parse_reads_an_unbalanced_class_as_redis_does() -> None:
    tokens = parse_glob("g:*[:venue:lisbon")
    assert [t.kind for t in tokens] == ["literal", "literal", "star", "class"]
    assert tokens[-1].members == frozenset(b":venuelisbo")


# -- forged entries are corrupt ---------------------------------------------------------------


def _record(
    status: int = 200, headers: list[list[bytes]] | None = None, body: bytes = b"ok"
) -> bytes:
    fields = [[b"content-type", b"text/plain"]] if headers is None else headers
    packed: bytes = msgpack.packb([status, fields, body, time.time(), 60, 0, 0], use_bin_type=True)
    return MAGIC + packed


FORGED: list[tuple[str, bytes]] = [
    ("status 101", _record(101)),
    ("status 100", _record(100)),
    ("status 206", _record(206)),
    ("status 304", _record(304)),
    ("status 199", _record(199)),
    ("status 600", _record(600)),
    ("status 999", _record(999)),
    ("transfer-encoding", _record(headers=[[b"transfer-encoding", b"chunked"]])),
    ("connection", _record(headers=[[b"connection", b"close"]])),
    ("upgrade", _record(headers=[[b"upgrade", b"websocket"]])),
    ("set-cookie", _record(headers=[[b"set-cookie", b"session=attacker"]])),
    ("x-cache", _record(headers=[[b"x-cache", b"HIT"]])),
    ("crlf in value", _record(headers=[[b"x-a", b"1\r\nSet-Cookie: s=1"]])),
    ("lf in value", _record(headers=[[b"x-a", b"1\nx"]])),
    ("nul in value", _record(headers=[[b"x-a", b"1\x00"]])),
    ("space in name", _record(headers=[[b"x a", b"1"]])),
    ("colon in name", _record(headers=[[b"x:a", b"1"]])),
    ("upper-case name", _record(headers=[[b"X-A", b"1"]])),
    ("empty name", _record(headers=[[b"", b"1"]])),
    ("short content-length", _record(headers=[[b"content-length", b"1"]])),
    ("long content-length", _record(headers=[[b"content-length", b"99"]])),
    ("padded content-length", _record(headers=[[b"content-length", b" 2"]])),
    (
        "two content-lengths",
        _record(headers=[[b"content-length", b"2"], [b"content-length", b"2"]]),
    ),
    ("204 with content-length", _record(204, [[b"content-length", b"0"]], b"")),
]


@pytest.mark.parametrize("data", [d for _, d in FORGED], ids=[n for n, _ in FORGED])
def test_records_no_route_could_have_stored_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


@pytest.mark.parametrize("status", sorted(STORABLE_STATUSES))
def test_every_storable_status_still_decodes(status: int) -> None:
    body = b"" if status == 204 else b"ok"
    headers = [] if status == 204 else [[b"content-length", b"%d" % len(body)]]
    entry = decode_entry(
        _record(status, [*headers, [b"etag", b'"x"'], [b"x-obs", b"caf\xe9"]], body)
    )
    assert isinstance(entry, CachedResponse) and entry.status == status


# Statuses only a `mode: standard` route stores (with the app's explicit freshness): a record
# holding one is corrupt wherever only gateway routes could have written it.
GATEWAY_FORGED: list[tuple[str, bytes]] = [
    ("status 500", _record(500)),
    ("status 302", _record(302)),
    ("status 307", _record(307)),
    ("status 400", _record(400)),
]


@pytest.mark.parametrize("status", sorted(STANDARD_STATUSES))
def test_every_standard_status_decodes(status: int) -> None:
    assert decode_entry(_record(status)).status == status  # type: ignore[union-attr]


def test_standard_statuses_are_final_bar_206_and_304() -> None:
    assert frozenset(range(200, 600)) - {206, 304} == STANDARD_STATUSES
    assert STORABLE_STATUSES < STANDARD_STATUSES


def _policy(*rules: Rule) -> CachePolicy:
    return CachePolicy(rules, key_prefix="p")


def _lookup(rule: Rule) -> Lookup:
    return Lookup(rule, "p:k", False, False, None, None, "p:i", "p:l")  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [d for _, d in GATEWAY_FORGED], ids=[n for n, _ in GATEWAY_FORGED])
def test_gateway_routes_read_standard_only_statuses_as_corrupt(data: bytes) -> None:
    """Gateway routes only: as strict as before standard mode (every read of the policy)."""
    policy = _policy(Rule("/g", 60))
    with pytest.raises(CorruptEntry):
        policy.decoded("p:k", data)
    assert policy.held_entry(data) is None
    assert policy.found_held("p:k", data) is None
    read = policy.on_read(_lookup(Rule("/g", 60)), "p:k", data, first=False)
    assert isinstance(read, NotFound) and read.drop == "p:k"


@pytest.mark.parametrize("data", [d for _, d in GATEWAY_FORGED], ids=[n for n, _ in GATEWAY_FORGED])
def test_with_a_standard_route_only_its_reads_take_them(data: bytes) -> None:
    gateway, standard = Rule("/g", 60), Rule("/s", 60, standard=True)
    policy = _policy(gateway, standard)
    assert isinstance(policy.on_read(_lookup(standard), "p:k", data, first=False), Found)
    read = policy.on_read(_lookup(gateway), "p:k", data, first=False)
    assert isinstance(read, NotFound) and read.drop == "p:k"


def test_storable_statuses_are_exactly_what_a_route_may_list() -> None:
    """The decoder accepts what config's `statuses:` accepts: a status added to one and not the
    other would be stored and then dropped as corrupt on every read."""
    assert frozenset(CACHEABLE_STATUSES) == STORABLE_STATUSES


def test_what_the_cache_stores_decodes() -> None:
    entry = CachedResponse(
        200, [(b"content-type", b"text/plain"), (b"content-length", b"2")], b"ok", 1.0, 5
    )
    assert decode_entry(encode_entry(entry)) == entry


# Through the adapters: a forged record under a real key is a MISS, and the value is deleted
# (the app's second answer is not storable, so the key must end up empty).


def _asgi_app(config: dict[str, Any], calls: list[int]) -> Any:
    async def page(request: Request) -> PlainTextResponse:
        calls.append(1)
        if len(calls) == 1:
            return PlainTextResponse("fresh")
        return PlainTextResponse("not storable", status_code=503)

    app = Starlette(routes=[Route("/api/page", page)])
    app.add_middleware(CacheMiddleware, config=config)
    return app


def _wsgi_app(config: dict[str, Any], calls: list[int]) -> Any:
    flask_app = Flask(__name__)

    @flask_app.get("/api/page")
    def page() -> tuple[str, int]:
        calls.append(1)
        return ("fresh", 200) if len(calls) == 1 else ("not storable", 503)

    flask_app.wsgi_app = WSGICacheMiddleware(flask_app.wsgi_app, config=config)  # type: ignore[method-assign]
    return flask_app


class _Keys:
    """The entry keys under a prefix, and writing to them, on either store."""

    def __init__(self, config: dict[str, Any], client: redis.Redis | None) -> None:
        from cache_middleware.config import load_config

        self.prefix = config["key_prefix"]
        self.client = client
        self.memory = None if client else shared_memory_store(load_config(config))

    def entries(self) -> list[str]:
        if self.client is not None:
            return sorted(k.decode() for k in self.client.scan_iter(match=f"{self.prefix}:GET:*"))
        assert self.memory is not None
        return sorted(self.memory.keys_matching(f"{self.prefix}:GET:*"))

    def put(self, key: str, value: bytes) -> None:
        if self.client is not None:
            self.client.set(key, value, ex=60)
        else:
            assert self.memory is not None
            self.memory.set(key, value, 60)


ADAPTER_CASES = (
    "status 101",
    "status 500",
    "status 302",
    "crlf in value",
    "short content-length",
    "set-cookie",
)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize(
    "forged",
    [pytest.param(d, id=n) for n, d in [*FORGED, *GATEWAY_FORGED] if n in ADAPTER_CASES],
)
# A standard route beside the gateway one makes the decoder take standard-only statuses: the
# gateway route's reads, the short way's included, must still refuse them.
@pytest.mark.parametrize("beside", [None, "standard"], ids=["gateway-only", "standard-beside"])
async def test_a_forged_entry_is_a_miss_and_is_deleted(
    request: pytest.FixtureRequest,
    memory_url: str,
    prefix: str,
    adapter: str,
    store: str,
    forged: bytes,
    beside: str | None,
) -> None:
    client = None
    url = memory_url
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
    routes: dict[str, Any] = {"/api/page": {"ttl": 60}}
    if beside is not None:
        routes["/std"] = {"mode": "standard"}
    config = {"redis_url": url, "key_prefix": prefix, "routes": routes}
    keys = _Keys(config, client)
    calls: list[int] = []
    try:
        if adapter == "asgi":
            transport = httpx.ASGITransport(app=_asgi_app(config, calls))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                assert (await http.get("/api/page")).headers["x-cache"] == "MISS"
                (key,) = keys.entries()
                keys.put(key, forged)
                reply = await http.get("/api/page")
        else:
            flask_app = _wsgi_app(config, calls)
            http_wsgi = flask_app.test_client()
            assert http_wsgi.get("/api/page", buffered=True).headers["x-cache"] == "MISS"
            (key,) = keys.entries()
            keys.put(key, forged)
            reply = http_wsgi.get("/api/page", buffered=True)
        assert reply.status_code == 503  # the app answered: the forged record was not replayed
        assert len(calls) == 2
        assert "set-cookie" not in reply.headers
        assert keys.entries() == []  # and it is gone
    finally:
        if client is not None:
            client.close()
