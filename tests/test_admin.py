"""The admin sub-app (`create_admin_app`) mounted at /admin/cache inside a Starlette app wrapped in
CacheMiddleware, driven over httpx's ASGI transport.

Endpoint tests run over the real Redis and the memory store, each with a key prefix of its own.
Tests that count Redis commands (`INFO commandstats`: KEYS never used, no HINCRBY per request, one
keyspace SCAN per minute) run on a private redis-server, so no other client's commands are
counted; the outage tests stop a throwaway one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

import cache_middleware.admin.app as admin_module
from cache_middleware import CacheMiddleware, create_admin_app
from cache_middleware._asgi.request import AsgiRequest
from cache_middleware._core.keys import path_index_key, tag_index_key
from cache_middleware._core.policy import Lookup
from cache_middleware._core.stats import Counters
from cache_middleware.config import load_config
from cache_middleware.errors import ConfigError
from cache_middleware.events import MemorySink
from cache_middleware.storage.factory import shared_memory_store
from cache_middleware.storage.memory import MemoryStore

from .redis_process import RedisProcess

TOKEN = "admin-s3cret"
# t2's token is not ASCII: it is compared on its UTF-8 bytes.
VENUE_TOKENS = {"t1": "tok-t1", "t10": "tok-t10", "t2": "tök-t2-ü"}
VENUES = ("t1", "t10", "t2")
HOST = "testserver"
BASE_URL = f"http://{HOST}"
EVENT_ROUTE = "/api/events/{event_id}"
LIFECYCLE = {"cache.invalidated", "cache.warmed", "cache.cleared", "cache.optimized"}


def make_config(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    routes: dict[str, Any] = {
        EVENT_ROUTE: {"ttl": 60, "tags": ["event:{event_id}"]},
        "/api/news": {"ttl": 60},  # the handler adds tags with Cache-Tag
        "/api/legacy/{item}": {"ttl": 60},
        "/api/big": {"ttl": 60},
        "/api/slow/{n}": {"ttl": 60},
        "/api/short/{n}": {"ttl": 1, "tags": ["short:{n}"]},
    }
    for dropped in extra.pop("drop_routes", ()):
        del routes[dropped]
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "venue_header": "X-Venue",
        "routes": routes,
        **extra,
    }


# -- looking at the store from outside --------------------------------------------------------


class RedisView:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def keys(self, pattern: str) -> set[str]:
        return {k.decode() for k in self.client.scan_iter(match=pattern, count=1000)}

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def ttl(self, key: str) -> float | None:
        ms = self.client.pttl(key)
        return None if ms < 0 else ms / 1000

    def expires_at(self, key: str) -> float:
        """When `key` expires (PEXPIRETIME: exact, unlike two TTL readings taken apart)."""
        return int(self.client.execute_command("PEXPIRETIME", key)) / 1000

    def members(self, index: str) -> set[str]:
        return {m.decode() for m in self.client.smembers(index)}

    def size(self, key: str) -> int:
        return int(self.client.strlen(key))

    def put(self, key: str, value: bytes, ttl: int = 60) -> None:
        self.client.set(key, value, ex=ttl)

    def unlink(self, key: str) -> None:
        self.client.unlink(key)

    def close(self) -> None:
        self.client.close()


class ClusterView(RedisView):
    """The same questions asked of a Redis Cluster: SCAN visits every primary, the rest is
    routed by key."""

    def __init__(self, url: str) -> None:
        from redis.cluster import ClusterNode, RedisCluster

        from cache_middleware.storage.redis_cluster import cluster_parts

        seeds, _ = cluster_parts(url)
        self.client = RedisCluster(  # type: ignore[assignment]
            startup_nodes=[ClusterNode(host, port) for host, port in seeds]
        )

    def keys(self, pattern: str) -> set[str]:
        found: set[str] = set()
        for node in self.client.get_primaries():  # type: ignore[attr-defined]
            found |= {
                k.decode()
                for k in self.client.scan_iter(match=pattern, count=1000, target_nodes=node)
            }
        return found


class MemoryView:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def keys(self, pattern: str) -> set[str]:
        return set(self.store.keys_matching(pattern))

    def exists(self, key: str) -> bool:
        return bool(self.store.exists([key]))

    def ttl(self, key: str) -> float | None:
        found = self.store.ttl(key)
        return found if found is not None else self.store.index_ttl(key)

    def expires_at(self, key: str) -> float:
        # The store's own deadlines (monotonic clock): exact, unlike two TTL readings.
        if key in self.store._data:
            return self.store._data[key][1]
        return self.store._indexes[key].expires_at

    def members(self, index: str) -> set[str]:
        return set(self.store.index_members(index) or ())

    def size(self, key: str) -> int:
        size = self.store.sizes([key])[0]
        assert size is not None
        return size

    def put(self, key: str, value: bytes, ttl: int = 60) -> None:
        self.store.set(key, value, ttl)

    def unlink(self, key: str) -> None:
        self.store.delete(key)

    def close(self) -> None:
        return None


View = RedisView | MemoryView


# -- the app under test ---------------------------------------------------------------------


@dataclass
class AppState:
    calls: int = 0
    inflight: int = 0
    max_inflight: int = 0
    # Awaited by the events handler while it answers (something happening during a fill).
    meanwhile: Callable[[], Awaitable[Any]] | None = None


def build_inner(admin: Starlette, state: AppState) -> Starlette:
    async def event(request: Request) -> Response:
        state.calls += 1
        if state.meanwhile is not None:
            await state.meanwhile()
        return JSONResponse({"event": request.path_params["event_id"]})

    async def news(request: Request) -> Response:
        state.calls += 1
        tags = request.query_params.get("tags", "news, front")
        return PlainTextResponse("news", headers={"Cache-Tag": tags})

    async def plain(request: Request) -> Response:
        state.calls += 1
        return PlainTextResponse("x" * int(request.query_params.get("n", "4")))

    async def slow(request: Request) -> Response:
        state.calls += 1
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            await asyncio.sleep(0.05)
        finally:
            state.inflight -= 1
        return PlainTextResponse("slow")

    async def short(request: Request) -> Response:
        state.calls += 1
        return PlainTextResponse("short", headers={"Cache-Tag": "brief"})

    return Starlette(
        routes=[
            Route(EVENT_ROUTE, event, methods=["GET", "POST"]),
            Route("/api/news", news, methods=["GET", "POST"]),
            Route("/api/legacy/{item}", plain),
            Route("/api/big", plain),
            Route("/api/slow/{n}", slow),
            Route("/api/short/{n}", short),
            Route("/api/uncached", plain),
            Mount("/admin/cache", admin),
        ]
    )


def auth(token: str | bytes | None) -> list[tuple[bytes, bytes]]:
    if token is None:
        return []
    raw = token.encode() if isinstance(token, str) else token
    return [(b"authorization", b"Bearer " + raw)]


@dataclass
class Site:
    kind: str
    url: str
    prefix: str
    config: dict[str, Any]
    mw: CacheMiddleware
    admin_app: Starlette
    client: httpx.AsyncClient
    sink: MemorySink
    state: AppState
    db: View
    extra: list[Any] = field(default_factory=list)

    def key(self, target: str, venue: str | None = None) -> str:
        """The entry key the middleware uses for `GET target` from this test's client (asked of
        its policy, so the tests do not depend on the key layout)."""
        path, _, query = target.partition("?")
        headers = [(b"host", HOST.encode())]
        if venue is not None:
            headers.append((b"x-venue", venue.encode()))
        scope = {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "query_string": query.encode(),
            "headers": headers,
        }
        plan = self.mw.policy.plan("GET", path, query, AsgiRequest(scope))
        assert isinstance(plan, Lookup), target
        return plan.key

    def entries(self) -> set[str]:
        return self.db.keys(f"{self.prefix}:GET:*")

    async def get(self, path: str, venue: str | None = None) -> httpx.Response:
        headers = {"X-Venue": venue} if venue else {}
        reply = await self.client.get(path, headers=headers)
        assert reply.status_code < 500, reply.text
        return reply

    async def admin(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | bytes | None = TOKEN,
        headers: list[tuple[bytes, bytes]] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        return await call_admin(
            self.client, method, "/admin/cache" + path, body, token, headers, content
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [data for name, data in self.sink.events if kind is None or name == kind]

    async def aclose(self) -> None:
        await self.client.aclose()
        for thing in (self.mw, self.admin_app.state, *self.extra):
            await thing.store.aclose()
        self.db.close()


async def call_admin(
    client: httpx.AsyncClient,
    method: str,
    target: str,
    body: Any = None,
    token: str | bytes | None = TOKEN,
    headers: list[tuple[bytes, bytes]] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """One admin request; every admin answer must be no-store and never a 500."""
    reply = await client.request(
        method,
        target,
        json=body if content is None else None,
        content=content,
        headers=[*auth(token), *(headers or [])],
    )
    assert reply.status_code != 500, reply.text
    assert reply.headers.get("cache-control") == "no-store", (target, reply.headers)
    return reply


def view_for(kind: str, url: str, config: dict[str, Any]) -> View:
    if kind == "memory":
        return MemoryView(shared_memory_store(load_config(config)))
    if kind == "cluster":
        return ClusterView(url)
    return RedisView(url)


def open_site(kind: str, url: str, prefix: str, **extra: Any) -> Site:
    config = make_config(url, prefix, **extra)
    sink = MemorySink()
    state = AppState()
    admin = create_admin_app(config, token=TOKEN, venue_tokens=VENUE_TOKENS, event_sink=sink)
    mw = CacheMiddleware(build_inner(admin, state), config=config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url=BASE_URL)
    return Site(
        kind, url, prefix, config, mw, admin, client, sink, state, view_for(kind, url, config)
    )


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess | None]:
    """A redis-server of this module's own (None when the binary is not installed).

    Why not the shared server: the stores' invalidation epoch (`cache-middleware:epoch`) is one
    key per Redis database, whatever the prefix, so any other process invalidating on the same
    database makes this module's fills lose their lease now and then (flaky MISS-not-stored).
    Its own server also lets INFO commandstats count only these tests' commands.
    """
    if shutil.which("redis-server") is None:
        yield None
        return
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def real_redis(request: pytest.FixtureRequest, own_redis: RedisProcess | None) -> Iterator[str]:
    """URL of a real Redis: this module's own server, else the shared one (`redis_url`)."""
    if own_redis is None:
        yield request.getfixturevalue("redis_url")
        return
    yield own_redis.url
    client = own_redis.client()
    client.flushdb()  # the server is this module's alone
    client.close()


@pytest.fixture
def private_redis(own_redis: RedisProcess | None, real_redis: str) -> RedisProcess:
    if own_redis is None:
        message = "counting commands needs a redis-server of this module's own"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {message}")
        pytest.skip(message)
    return own_redis


@pytest.fixture(params=["redis", "memory", "cluster"])
async def site(request: pytest.FixtureRequest, prefix: str, memory_url: str) -> AsyncIterator[Site]:
    if request.param == "redis":
        url = request.getfixturevalue("real_redis")
    elif request.param == "cluster":  # the session's 3-primary cluster (tests/cluster_process.py)
        url = request.getfixturevalue("cluster_group").url
    else:
        url = memory_url
    opened = open_site(request.param, url, prefix)
    yield opened
    await opened.aclose()


@pytest.fixture
async def redis_site(real_redis: str, prefix: str) -> AsyncIterator[Site]:
    opened = open_site("redis", real_redis, prefix)
    yield opened
    await opened.aclose()


@pytest.fixture
async def private_site(private_redis: RedisProcess, prefix: str) -> AsyncIterator[Site]:
    opened = open_site("redis", private_redis.url, prefix)
    yield opened
    await opened.aclose()


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


async def seed_events(site: Site, ids: tuple[str, ...], venues: tuple[str | None, ...]) -> None:
    for event_id in ids:
        for venue in venues:
            reply = await site.get(f"/api/events/{event_id}", venue)
            assert reply.headers["x-cache"] == "MISS"


# -- authentication -----------------------------------------------------------------------------

BAD_AUTHORIZATION: list[bytes | None] = [
    None,
    b"",
    b"Bearer",
    b"Bearer ",
    b"Basic YWRtaW46YWRtaW4tczNjcmV0",
    b"Token " + TOKEN.encode(),
    b"Bearer" + TOKEN.encode(),
    b"Bearer wrong",
    b"Bearer " + TOKEN.encode()[:-1],
    b"Bearer " + TOKEN.encode() + b"x",
    b"Bearer " + TOKEN.encode() + b" extra",
    b"Bearer \xe9\xff\xfe\x80",
    b"\xff\xfe Bearer " + TOKEN.encode(),
    b"Bearer " + VENUE_TOKENS["t2"].encode("latin-1"),  # t2's token, wrongly encoded
    b"Bearer \x00" + TOKEN.encode(),
    b"Bearer " + b"A" * 5000,
    b"Bearer " + b"\xff" * 200_000,
]
# Every endpoint but the dashboard page, which holds no data and asks for the token itself.
ENDPOINTS = [
    ("GET", "/stats"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/invalidate"),
    ("POST", "/warm"),
    ("POST", "/clear"),
    ("POST", "/optimize"),
]


async def test_every_endpoint_answers_401_with_www_authenticate_for_bad_credentials(
    redis_site: Site,
) -> None:
    site = redis_site
    await seed_events(site, ("1",), (None, "t1"))
    before = site.entries()
    bodies = {
        "/invalidate": {"patterns": [f"{site.prefix}:*"]},
        "/warm": {"paths": ["/api/events/9"]},
        "/clear": {"confirm": True},
        "/optimize": {},
    }
    for header in BAD_AUTHORIZATION:
        for method, path in ENDPOINTS:
            reply = await site.admin(
                method,
                path,
                bodies.get(path),
                token=None,
                headers=[] if header is None else [(b"authorization", header)],
            )
            assert reply.status_code == 401, (header[:40] if header else header, path)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["success"] is False
    assert site.entries() == before  # nothing was deleted
    assert site.state.calls == 2  # nothing was warmed
    assert site.sink.events == []
    page = await site.admin("GET", "/", token=None)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-type"].startswith("text/html")


async def test_valid_tokens_are_accepted_including_non_ascii_and_lowercase_scheme(
    redis_site: Site,
) -> None:
    site = redis_site
    assert (await site.admin("GET", "/stats")).status_code == 200
    lower = [(b"authorization", b"bearer " + TOKEN.encode())]
    assert (await site.admin("GET", "/stats", token=None, headers=lower)).status_code == 200
    for venue, token in VENUE_TOKENS.items():
        reply = await site.admin("GET", "/stats", token=token.encode("utf-8"))
        assert reply.status_code == 200, venue
        assert set(reply.json()["venues"]) <= {venue}


async def test_tokens_are_compared_in_constant_time_on_bytes_against_every_token(
    redis_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[type, type]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for token, status in ((TOKEN, 200), ("nope", 401), (VENUE_TOKENS["t2"], 200)):
        seen.clear()
        reply = await redis_site.admin("GET", "/stats", token=token)
        assert reply.status_code == status
        # No early exit: the main token and the three venue tokens are all compared.
        assert seen == [(bytes, bytes)] * (1 + len(VENUE_TOKENS))


def test_building_without_a_token_refuses_unless_insecure(memory_url: str, prefix: str) -> None:
    config = make_config(memory_url, prefix)
    for kwargs in ({}, {"token": ""}, {"token": None, "venue_tokens": {}}):
        with pytest.raises(ConfigError) as refused:
            create_admin_app(config, **kwargs)
        message = str(refused.value)
        assert "token" in message and "insecure=True" in message
    create_admin_app(config, insecure=True)
    create_admin_app(config, venue_tokens={"t1": "only-venue"})


async def test_insecure_mode_and_config_tokens(memory_url: str, prefix: str) -> None:
    open_app = create_admin_app(make_config(memory_url, prefix), insecure=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=open_app), base_url="http://t"
    ) as client:
        assert (await call_admin(client, "GET", "/stats", token=None)).status_code == 200
    config = make_config(
        memory_url, prefix, admin={"token": "from-config", "venue_tokens": {"t1": "cfg-t1"}}
    )
    configured = create_admin_app(config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=configured), base_url="http://t"
    ) as client:
        assert (await call_admin(client, "GET", "/stats", token=None)).status_code == 401
        assert (await call_admin(client, "GET", "/stats", token="from-config")).status_code == 200
        venue = await call_admin(client, "GET", "/stats", token="cfg-t1")
        assert venue.status_code == 200
        assert venue.json()["routes"] == {}


async def test_every_endpoint_answer_is_no_store(redis_site: Site) -> None:
    site = redis_site
    await seed_events(site, ("1",), (None,))
    answers = [
        await site.admin("GET", "/"),
        await site.admin("GET", "/openapi.json"),
        await site.admin("GET", "/stats"),
        await site.admin("GET", "/metrics"),
        await site.admin("POST", "/invalidate", {"paths": ["/api/events/1"], "dry_run": True}),
        await site.admin("POST", "/invalidate", {"paths": []}),  # 400
        await site.admin("POST", "/invalidate", {"patterns": ["*"]}, token=VENUE_TOKENS["t1"]),
        await site.admin("POST", "/warm", {"paths": ["/api/events/2"]}),
        await site.admin("POST", "/optimize", {}),
        await site.admin("POST", "/clear", {"confirm": True}),
        await site.admin("GET", "/stats", token="wrong"),
    ]
    # call_admin checked no-store on each; these are the statuses covered.
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 200, 200, 200, 400, 403, 200, 200, 200, 401]


async def test_unrouted_admin_answers_are_no_store_too(redis_site: Site) -> None:
    for method, path in (("GET", "/nope"), ("GET", "/invalidate"), ("DELETE", "/stats")):
        reply = await redis_site.client.request(method, "/admin/cache" + path, headers=auth(TOKEN))
        assert reply.status_code in (404, 405)
        assert reply.headers.get("cache-control") == "no-store", (method, path)


# -- invalidation -----------------------------------------------------------------------------


async def test_invalidate_by_pattern_path_tag_and_key(site: Site) -> None:
    await seed_events(site, ("1", "2", "3"), (None,))
    for target in ("/api/news", "/api/news?tags=sports", "/api/legacy/a"):
        assert (await site.get(target)).headers["x-cache"] == "MISS"

    async def invalidate(body: dict[str, Any], expected: int) -> None:
        reply = await site.admin("POST", "/invalidate", body)
        assert reply.status_code == 200
        assert reply.json() == {"success": True, "invalidated": expected, "dry_run": False}

    await invalidate({"patterns": [site.key("/api/events/1")]}, 1)
    await invalidate({"paths": ["/api/legacy/*"]}, 1)
    await invalidate({"tags": ["event:2"]}, 1)  # a route tag, filled from the path
    await invalidate({"tags": ["front"]}, 1)  # a tag the handler sent in Cache-Tag
    await invalidate({"keys": [site.key("/api/events/3"), site.key("/api/events/nothing")]}, 1)
    await invalidate({"tags": ["no-such-tag"]}, 0)

    states = {
        target: (await site.get(target)).headers["x-cache"]
        for target in (
            "/api/events/1",
            "/api/events/2",
            "/api/events/3",
            "/api/legacy/a",
            "/api/news",
            "/api/news?tags=sports",
        )
    }
    assert states == {
        "/api/events/1": "MISS",
        "/api/events/2": "MISS",
        "/api/events/3": "MISS",
        "/api/legacy/a": "MISS",
        "/api/news": "MISS",
        "/api/news?tags=sports": "HIT",
    }
    events = site.events("cache.invalidated")
    assert [e["count"] for e in events] == [1, 1, 1, 1, 1, 0]
    assert events[0]["patterns"] == [site.key("/api/events/1")]
    assert events[1]["paths"] == ["/api/legacy/*"]
    assert events[2]["tags"] == ["event:2"]
    assert events[4]["keys"] == [site.key("/api/events/3"), site.key("/api/events/nothing")]
    assert all(e["venue"] is None and e["reason"] == "manual" for e in events)


async def test_dry_run_counts_what_the_real_deletion_then_deletes(site: Site) -> None:
    selectors: list[dict[str, Any]] = [
        {"patterns": [f"{site.prefix}:GET:/api/events/*"]},
        {"paths": ["/api/events/*"]},
        {"paths": ["/api/events/1"]},
        {"tags": ["event:2"]},
        {"tags": ["news"]},
        {"keys": [site.key("/api/events/1"), site.key("/api/events/4")]},
    ]
    for selector in selectors:
        await seed_events(site, ("1", "2", "3"), (None, "t1"))
        await site.get("/api/news")
        before = site.entries()
        dry = await site.admin("POST", "/invalidate", {**selector, "dry_run": True})
        assert dry.json()["dry_run"] is True
        assert site.entries() == before, selector  # counted, nothing deleted
        assert site.events("cache.invalidated") == []  # a dry run is not an invalidation
        real = await site.admin("POST", "/invalidate", selector)
        assert real.json()["invalidated"] == dry.json()["invalidated"], selector
        assert len(before - site.entries()) == real.json()["invalidated"], selector
        assert real.json()["invalidated"] > 0
        await site.admin("POST", "/clear", {"confirm": True})
        site.sink.events.clear()


async def test_dry_run_count_matches_real_deletion_with_overlapping_selectors(
    site: Site,
) -> None:
    await seed_events(site, ("1", "2"), (None,))
    selector = {"paths": ["/api/*", "/api/events/*"], "tags": ["event:1"]}
    dry = await site.admin("POST", "/invalidate", {**selector, "dry_run": True})
    real = await site.admin("POST", "/invalidate", selector)
    assert real.json()["invalidated"] == 2
    assert dry.json()["invalidated"] == real.json()["invalidated"]


async def test_invalid_input_is_a_400_that_says_why_and_deletes_nothing(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, "t1"))
    before = site.entries()
    everything = f"{site.prefix}:GET:*"
    cases: list[tuple[Any, str]] = [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe{}", "not valid JSON"),
        ({}, "nothing to invalidate"),
        ({"patterns": []}, "nothing to invalidate"),
        ({"patterns": everything}, "patterns: must be a list"),
        ({"patterns": [everything], "bogus": 1}, "unknown field 'bogus'"),
        ({"patterns": [everything] * 101}, "patterns: at most 100 items, got 101"),
        ({"patterns": [everything] * 50, "keys": ["k"] * 51}, "at most 100 items in all"),
        ({"patterns": [everything, "x" * 257]}, "patterns[1]: at most 256 characters"),
        ({"patterns": [everything, "bad\x01"]}, "patterns[1]: control characters"),
        ({"keys": ["k\x7f"]}, "keys[0]: control characters"),
        ({"tags": ["a\nb"]}, "tags[0]: control characters"),
        ({"paths": ["/api/\tx"]}, "paths[0]: control characters"),
        ({"paths": ["api/events/1"]}, "paths[0]: a request path starts with '/'"),
        ({"tags": [""]}, "tags[0]: must be a non-empty string"),
        ({"keys": [5]}, "keys[0]: must be a non-empty string"),
        ({"patterns": [everything], "dry_run": "yes"}, "dry_run: must be true or false"),
    ]
    for body, message in cases:
        if isinstance(body, bytes):
            reply = await site.admin("POST", "/invalidate", content=body)
        else:
            reply = await site.admin("POST", "/invalidate", body)
        assert reply.status_code == 400, body
        assert reply.json()["success"] is False
        assert message in reply.json()["error"], (body, reply.json())
    # A body over the limit is refused before it is read in full: 413, the same error shape.
    reply = await site.admin(
        "POST", "/invalidate", content=b'{"patterns": ["' + b"x" * 70_000 + b'"]}'
    )
    assert reply.status_code == 413
    assert reply.json()["success"] is False
    assert "request body over 65536 bytes" in reply.json()["error"]
    assert site.entries() == before
    assert site.events() == []
    # The limits themselves are allowed.
    at_limit = {
        "keys": [site.key(f"/api/events/none{i}") for i in range(99)],
        "patterns": [(everything + "z" * 256)[:256]],
        "dry_run": True,
    }
    assert (await site.admin("POST", "/invalidate", at_limit)).json()["invalidated"] == 0


async def test_c1_control_characters_are_rejected(redis_site: Site) -> None:
    body = {"patterns": [f"{redis_site.prefix}:GET:\u0085*"], "dry_run": True}
    reply = await redis_site.admin("POST", "/invalidate", body)
    assert reply.status_code == 400


# -- venue tokens -----------------------------------------------------------------------------


async def test_venue_token_reaching_outside_its_venue_is_403_and_deletes_nothing(
    site: Site,
) -> None:
    await seed_events(site, ("1", "2"), (None, *VENUES))
    before = site.entries()
    p = site.prefix
    forbidden: list[dict[str, Any]] = [
        {"patterns": [f"{p}:GET:*"]},
        {"patterns": ["*"]},
        {"patterns": [f"{p}:*"]},
        {"patterns": [f"{p}:GET:*:venue:t10"]},
        {"patterns": [f"{p}:GET:*:venue:t2"]},
        {"patterns": [f"{p}:GET:*:venue:t1*"]},  # would reach t10
        {"patterns": [f"{p}:GET:*:venue:t1", f"{p}:GET:*"]},  # one good, one bad
        {"keys": [site.key("/api/events/1", "t10")]},
        {"keys": [site.key("/api/events/1")]},
        {"keys": [site.key("/api/events/1", "t1"), site.key("/api/events/1", "t2")]},
    ]
    for body in forbidden:
        for dry_run in (False, True):
            reply = await site.admin(
                "POST", "/invalidate", {**body, "dry_run": dry_run}, token=VENUE_TOKENS["t1"]
            )
            assert reply.status_code == 403, body
            assert reply.json()["success"] is False
            assert "t1" in reply.json()["error"]
    optimize = await site.admin("POST", "/optimize", {}, token=VENUE_TOKENS["t1"])
    assert optimize.status_code == 403
    assert site.entries() == before
    assert site.events() == []


async def test_venue_token_touches_only_its_venue(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, *VENUES))
    t1 = VENUE_TOKENS["t1"]
    before = site.entries()

    async def invalidate(body: dict[str, Any]) -> int:
        reply = await site.admin("POST", "/invalidate", body, token=t1)
        assert reply.status_code == 200, reply.json()
        return int(reply.json()["invalidated"])

    dry = {"patterns": [f"{site.prefix}:GET:*:venue:t1"], "dry_run": True}
    assert await invalidate(dry) == 2
    assert await invalidate({"paths": ["/api/events/1"]}) == 1
    assert await invalidate({"tags": ["event:2"]}) == 1
    assert before - site.entries() == {
        site.key("/api/events/1", "t1"),
        site.key("/api/events/2", "t1"),
    }
    for venue in (None, "t10", "t2"):
        for event_id in ("1", "2"):
            reply = await site.get(f"/api/events/{event_id}", venue)
            assert reply.headers["x-cache"] == "HIT", (venue, event_id)
    assert (await site.get("/api/events/1", "t1")).headers["x-cache"] == "MISS"
    assert {e["venue"] for e in site.events("cache.invalidated")} == {"t1"}
    assert await invalidate({"keys": [site.key("/api/events/1", "t1")]}) == 1


async def test_venue_token_stats_show_only_its_venue(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, *VENUES))
    await site.get("/api/events/1", "t1")  # a t1 HIT
    await site.get("/api/events/1", "t10")
    await site.get("/api/events/1", "t10")
    full = (await site.admin("GET", "/stats")).json()
    assert set(full["venues"]) == set(VENUES)
    own = (await site.admin("GET", "/stats", token=VENUE_TOKENS["t1"])).json()
    assert set(own["venues"]) == {"t1"}
    assert own["routes"] == {}
    assert (
        (own["hits"], own["misses"])
        == (1, 2)
        == (
            full["venues"]["t1"]["hits"],
            full["venues"]["t1"]["misses"],
        )
    )
    assert "t10" not in str(own) and "t2" not in str(own)
    assert "entries" not in own or own["entries"] <= 2


async def test_venue_token_cannot_delete_keys_outside_the_prefix(site: Site) -> None:
    foreign = f"other-{uuid.uuid4().hex[:8]}:session:venue:t1"
    site.db.put(foreign, b"not the cache's")
    try:
        reply = await site.admin(
            "POST", "/invalidate", {"keys": [foreign]}, token=VENUE_TOKENS["t1"]
        )
        assert site.db.exists(foreign)
        assert reply.status_code == 403
    finally:
        site.db.unlink(foreign)


async def test_venue_token_cannot_read_the_whole_cache_metrics(site: Site) -> None:
    await seed_events(site, ("1", "2"), ("t10", "t2"))
    await site.get("/api/events/1", "t1")
    reply = await site.admin("GET", "/metrics", token=VENUE_TOKENS["t1"])
    # Metrics cover the whole cache: a venue token is refused rather than shown everyone's.
    assert reply.status_code == 403
    assert "cache_middleware_misses" not in reply.text


async def test_venue_t1_clear_leaves_t10_and_t2_untouched(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, *VENUES))
    for venue in (None, *VENUES):
        await site.get("/api/news", venue)
    before = site.entries()
    t1_keys = {k for k in before if k.endswith(":venue:t1")}
    assert len(t1_keys) == 3
    t10_index = tag_index_key(site.prefix, "event:1", "t10")
    assert site.db.exists(tag_index_key(site.prefix, "event:1", "t1"))

    reply = await site.admin("POST", "/clear", {"confirm": True}, token=VENUE_TOKENS["t1"])
    assert reply.status_code == 200
    assert reply.json()["success"] is True
    assert reply.json()["cleared"] >= len(t1_keys)
    assert site.entries() == before - t1_keys
    assert not site.db.exists(tag_index_key(site.prefix, "event:1", "t1"))
    assert site.db.exists(t10_index)
    for venue in (None, "t10", "t2"):
        assert (await site.get("/api/events/1", venue)).headers["x-cache"] == "HIT"
        assert (await site.get("/api/news", venue)).headers["x-cache"] == "HIT"
    assert (await site.get("/api/events/1", "t1")).headers["x-cache"] == "MISS"
    [event] = site.events("cache.cleared")
    assert event["venue"] == "t1" and event["count"] == reply.json()["cleared"]


# -- clear ------------------------------------------------------------------------------------


async def test_clear_needs_confirmation_and_removes_everything_under_the_prefix(
    site: Site,
) -> None:
    await seed_events(site, ("1", "2"), (None, "t1"))
    await site.get("/api/news")
    foreign = f"other-{uuid.uuid4().hex[:8]}:GET:/api/events/1"
    site.db.put(foreign, b"another cache's entry")
    try:
        before = site.entries()
        for body in (None, {}, {"confirm": False}, {"confirm": "true"}, {"confirm": 1}):
            reply = await site.admin("POST", "/clear", body)
            assert reply.status_code == 400, body
            assert "confirm" in reply.json()["error"]
        bad = await site.admin("POST", "/clear", {"confirm": True, "venue": "t2"})
        assert bad.status_code == 400 and "unknown field 'venue'" in bad.json()["error"]
        assert site.entries() == before
        assert site.events() == []

        reply = await site.admin("POST", "/clear", {"confirm": True})
        assert reply.status_code == 200
        assert reply.json()["success"] is True
        assert reply.json()["cleared"] >= len(before)
        # What stays: the shared statistics and the cache's invalidation epoch (a counter that
        # must never go back, or a fill from before the clear could write after it).
        assert site.db.keys(f"{site.prefix}:*") <= {
            f"{site.prefix}:STATS",
            f"{site.prefix}:EPOCH:%",
        }
        assert site.db.exists(foreign)
        assert (await site.get("/api/events/1")).headers["x-cache"] == "MISS"
        [event] = site.events("cache.cleared")
        assert event == {"venue": None, "prefix": site.prefix, "count": reply.json()["cleared"]}
    finally:
        site.db.unlink(foreign)


# -- tags -------------------------------------------------------------------------------------


async def test_tags_from_routes_and_cache_tag_header_which_clients_never_see(site: Site) -> None:
    seen: list[httpx.Response] = []
    for _ in range(2):
        seen.append(await site.get("/api/news"))
        seen.append(await site.get("/api/news?tags=a,b%20c"))
        seen.append(await site.get("/api/short/1"))
        seen.append(await site.get("/api/events/1"))
        seen.append(await site.get("/api/events/1", "t1"))
    assert [r.headers["x-cache"] for r in seen] == ["MISS"] * 5 + ["HIT"] * 5
    for reply in seen:
        assert "cache-tag" not in reply.headers, reply.headers

    news = site.key("/api/news")
    tagged = site.key("/api/news?tags=a,b%20c")
    assert site.db.members(tag_index_key(site.prefix, "news")) == {news}
    assert site.db.members(tag_index_key(site.prefix, "front")) == {news}
    assert site.db.members(tag_index_key(site.prefix, "a")) == {tagged}
    assert site.db.members(tag_index_key(site.prefix, "c")) == {tagged}
    assert site.db.members(tag_index_key(site.prefix, "event:1")) == {
        site.key("/api/events/1"),
        site.key("/api/events/1", "t1"),
    }
    assert site.db.members(tag_index_key(site.prefix, "event:1", "t1")) == {
        site.key("/api/events/1", "t1")
    }

    reply = await site.admin("POST", "/invalidate", {"tags": ["event:1", "b"]})
    assert reply.json()["invalidated"] == 3
    assert (await site.get("/api/events/1")).headers["x-cache"] == "MISS"
    assert (await site.get("/api/news?tags=a,b%20c")).headers["x-cache"] == "MISS"
    assert (await site.get("/api/news")).headers["x-cache"] == "HIT"
    bypass = await site.client.post("/api/news")  # an unsafe method: BYPASS, still stripped
    assert bypass.headers["x-cache"] == "BYPASS"
    assert "cache-tag" not in bypass.headers


async def test_tag_index_lives_as_long_as_its_entries_and_expires_with_them(
    site: Site,
) -> None:
    await site.get("/api/short/1")  # ttl 1, tags short:1 (route) and brief (Cache-Tag)
    entry = site.key("/api/short/1")
    indexes = [tag_index_key(site.prefix, "short:1"), tag_index_key(site.prefix, "brief")]
    entry_ttl = site.db.ttl(entry)
    assert entry_ttl is not None and 0 < entry_ttl <= 1
    for index in indexes:
        assert site.db.expires_at(index) >= site.db.expires_at(entry), index
    # A longer-lived entry joining a tag extends the index, never the other way round.
    await site.get("/api/news?tags=brief")
    long_ttl = site.db.ttl(indexes[1])
    assert long_ttl is not None and long_ttl > 50

    await asyncio.sleep(1.15)
    assert not site.db.exists(entry)
    assert not site.db.exists(indexes[0])  # gone with its only entry
    assert site.db.exists(indexes[1])  # still indexes the news entry
    assert site.db.exists(site.key("/api/news?tags=brief"))


# -- stats ------------------------------------------------------------------------------------


async def test_stats_report_counters_keyspace_routes_venues_and_backend(site: Site) -> None:
    for target, venue, state in (
        ("/api/events/1", None, "MISS"),
        ("/api/events/1", None, "HIT"),
        ("/api/events/1", None, "HIT"),
        ("/api/events/2", None, "MISS"),
        ("/api/news", None, "MISS"),
        ("/api/news", None, "HIT"),
        ("/api/events/1", "t1", "MISS"),
        ("/api/events/1", "t1", "HIT"),
    ):
        assert (await site.get(target, venue)).headers["x-cache"] == state
    assert (await site.client.post("/api/events/1")).headers["x-cache"] == "BYPASS"
    await site.get("/api/uncached")  # no route: not counted

    # No flush by hand: the admin app adds this process's counters itself.
    stats = (await site.admin("GET", "/stats")).json()
    assert {k: stats[k] for k in ("hits", "misses", "stores", "bypasses", "invalidations")} == {
        "hits": 4,
        "misses": 4,
        "stores": 4,
        "bypasses": 1,
        "invalidations": 1,
    }
    assert stats["errors"] == 0
    assert stats["hit_ratio"] == 0.5
    entries = site.entries()
    assert entries == {site.key("/api/events/2"), site.key("/api/news")}
    assert stats["entries"] == 2
    assert stats["bytes"] == sum(site.db.size(k) + len(k) for k in entries)
    events = stats["routes"][EVENT_ROUTE]
    assert (events["hits"], events["misses"], events["bypasses"]) == (3, 3, 1)
    assert events["hit_ratio"] == 0.5
    assert (stats["routes"]["/api/news"]["hits"], stats["routes"]["/api/news"]["misses"]) == (1, 1)
    assert set(stats["routes"]) == {EVENT_ROUTE, "/api/news"}
    assert stats["venues"] == {"t1": {**stats["venues"]["t1"], "hits": 1, "misses": 1}}
    backend = stats["backend"]
    if site.kind == "cluster":
        assert backend["type"] == "redis-cluster" and backend["primaries"] == 3
        assert backend["breaker"] == "closed"
    elif site.kind == "redis":
        assert backend["type"] == "redis"
        assert backend["redis_version"].count(".") == 2
        assert isinstance(backend["used_memory"], int)
        assert backend["breaker"] == "closed"
    else:
        assert backend["type"] == "memory"


async def test_stats_aggregate_two_processes_sharing_one_redis(
    redis_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = redis_site
    # The second middleware stands for another process: the admin app must not see it in
    # process, only through what it flushes to Redis.
    monkeypatch.setattr(admin_module, "middlewares_for", lambda prefix: [site.mw])
    other = CacheMiddleware(build_inner(Starlette(), AppState()), config=site.config)
    site.extra.append(other)
    other_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=other), base_url=BASE_URL)
    try:
        assert (await site.get("/api/events/1")).headers["x-cache"] == "MISS"
        assert (await site.get("/api/events/1")).headers["x-cache"] == "HIT"
        for target, state in (
            ("/api/events/1", "HIT"),  # the entry the first process stored
            ("/api/events/1", "HIT"),
            ("/api/events/5", "MISS"),
            ("/api/events/5", "HIT"),
        ):
            assert (await other_client.get(target)).headers["x-cache"] == state
        await site.mw.flush_stats()
        alone = (await site.admin("GET", "/stats")).json()
        assert (alone["hits"], alone["misses"]) == (1, 1)  # the other process has not flushed
        await other.flush_stats()
        both = (await site.admin("GET", "/stats")).json()
        assert (both["hits"], both["misses"], both["stores"]) == (4, 2, 2)
        assert both["routes"][EVENT_ROUTE]["hits"] == 4
        assert both["hit_ratio"] == round(4 / 6, 4)
        await other.flush_stats()  # nothing new: nothing added twice
        again = (await site.admin("GET", "/stats")).json()
        assert (again["hits"], again["misses"]) == (4, 2)
    finally:
        await other_client.aclose()


async def test_counting_requests_writes_nothing_to_redis_until_a_flush(
    private_site: Site, private_redis: RedisProcess
) -> None:
    site = private_site
    probe = private_redis.client()
    try:
        await site.get("/api/events/1", "t1")
        probe.config_resetstat()
        for i in range(50):
            await site.get("/api/events/1" if i % 5 else f"/api/events/{100 + i}", "t1")
        during = command_calls(probe)
        assert during.get("hincrby", 0) == 0
        assert during.get("hset", 0) == 0
        await site.mw.flush_stats()
        flushed = command_calls(probe)["hincrby"]
        assert 0 < flushed <= 30  # one batch of fields, not one write per request
        tally = {k.decode(): int(v) for k, v in probe.hgetall(f"{site.prefix}:STATS").items()}
        assert tally["total||hits"] == 40
        assert tally["total||misses"] == 11
        assert tally["venue|t1|hits"] == 40
    finally:
        probe.close()


async def test_stats_scan_the_keyspace_at_most_once_a_minute(
    private_site: Site, private_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = private_site
    probe = private_redis.client()
    scans: list[str] = []
    store = site.admin_app.state.store
    real = store.keys_matching

    async def counting(pattern: str, limit: int | None = None) -> list[str]:
        scans.append(pattern)
        return await real(pattern, limit)

    monkeypatch.setattr(store, "keys_matching", counting)
    try:
        await seed_events(site, ("1", "2"), (None,))
        probe.config_resetstat()
        first = (await site.admin("GET", "/stats")).json()
        assert first["entries"] == 2
        assert command_calls(probe).get("scan", 0) >= 1
        assert len(scans) == 1
        probe.config_resetstat()
        for _ in range(3):
            assert (await site.admin("GET", "/stats")).status_code == 200
            assert (await site.admin("GET", "/metrics")).status_code == 200
        assert command_calls(probe).get("scan", 0) == 0
        assert len(scans) == 1
    finally:
        probe.close()


async def test_deletion_uses_scan_and_unlink_in_batches_never_keys(
    private_site: Site, private_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = private_site

    async def no_keys(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("KEYS must never be used")

    monkeypatch.setattr(redis.asyncio.Redis, "keys", no_keys)
    probe = private_redis.client()
    try:
        bulk = 1200
        pipe = probe.pipeline(transaction=False)
        for i in range(bulk):
            pipe.set(f"{site.prefix}:GET:/bulk/{i}", b"x", ex=60)
        pipe.execute()
        await seed_events(site, ("1", "2"), (None, "t1"))
        await site.get("/api/news")

        probe.config_resetstat()
        reply = await site.admin(
            "POST", "/invalidate", {"patterns": [f"{site.prefix}:GET:/bulk/*"]}
        )
        assert reply.json()["invalidated"] == bulk
        calls = command_calls(probe)
        assert calls.get("scan", 0) >= 1
        assert 3 <= calls["unlink"] <= 10  # batches, not one UNLINK per key nor one for all
        assert "keys" not in calls and "del" not in calls

        # A tag costs O(its entries): no scan of the keyspace.
        probe.config_resetstat()
        reply = await site.admin("POST", "/invalidate", {"tags": ["event:1"]})
        assert reply.json()["invalidated"] == 2
        calls = command_calls(probe)
        assert calls.get("scan", 0) == 0 and "keys" not in calls

        probe.config_resetstat()
        for method, path, body in (
            ("POST", "/invalidate", {"paths": ["/api/events/*"], "dry_run": True}),
            ("POST", "/invalidate", {"patterns": [f"{site.prefix}:GET:*"], "dry_run": True}),
            ("POST", "/invalidate", {"paths": ["/api/news"]}),
            ("POST", "/invalidate", {"keys": [site.key("/api/events/2")]}),
            ("GET", "/stats", None),
            ("GET", "/metrics", None),
            ("POST", "/warm", {"paths": ["/api/events/3"]}),
            ("POST", "/optimize", {}),
            ("POST", "/clear", {"confirm": True}),
        ):
            assert (await site.admin(method, path, body)).status_code == 200, path
        venue_clear = await site.admin(
            "POST", "/clear", {"confirm": True}, token=VENUE_TOKENS["t1"]
        )
        assert venue_clear.json()["success"] is True
        assert "keys" not in command_calls(probe)
    finally:
        probe.close()


async def test_invalidating_another_cache_does_not_drop_this_caches_fills(
    redis_site: Site,
) -> None:
    other = open_site("redis", redis_site.url, f"{redis_site.prefix}-other")
    try:

        async def invalidate_the_other_cache() -> None:
            body = {"keys": [other.key("/api/events/1")]}
            assert (await other.admin("POST", "/invalidate", body)).status_code == 200

        redis_site.state.meanwhile = invalidate_the_other_cache
        assert (await redis_site.get("/api/events/1")).headers["x-cache"] == "MISS"
        redis_site.state.meanwhile = None
        assert (await redis_site.get("/api/events/1")).headers["x-cache"] == "HIT"
    finally:
        await other.aclose()


# -- Redis down -------------------------------------------------------------------------------


async def test_redis_down_is_503_for_every_action_never_a_false_success(
    redis_process: RedisProcess, prefix: str
) -> None:
    site = open_site("redis", redis_process.url, prefix, breaker_failures=3, breaker_cooldown=0.2)
    try:
        await seed_events(site, ("1", "2"), (None, "t1"))
        redis_process.stop()
        reply = await site.get("/api/events/1")
        assert (reply.status_code, reply.headers["x-cache"]) == (200, "BYPASS")
        failing: list[tuple[str, str, Any, str]] = [
            ("POST", "/invalidate", {"patterns": [f"{prefix}:GET:*"]}, TOKEN),
            ("POST", "/invalidate", {"paths": ["/api/events/*"]}, TOKEN),
            ("POST", "/invalidate", {"tags": ["event:1"]}, TOKEN),
            ("POST", "/invalidate", {"keys": [site.key("/api/events/1")]}, TOKEN),
            ("POST", "/invalidate", {"paths": ["/api/events/1"], "dry_run": True}, TOKEN),
            ("POST", "/invalidate", {"paths": ["/api/events/1"]}, VENUE_TOKENS["t1"]),
            ("POST", "/clear", {"confirm": True}, TOKEN),
            ("POST", "/clear", {"confirm": True}, VENUE_TOKENS["t1"]),
            ("POST", "/optimize", {}, TOKEN),
            ("GET", "/stats", None, TOKEN),
            ("GET", "/metrics", None, TOKEN),
        ]
        for _ in range(2):  # with the breaker closed, then open
            for method, path, body, token in failing:
                reply = await site.admin(method, path, body, token=token)
                assert reply.status_code == 503, (path, body, reply.text)
                assert reply.json() == {
                    "success": False,
                    "error": "cache store unavailable: nothing was done",
                }
        warm = await site.admin("POST", "/warm", {"paths": ["/api/events/7"]})
        assert warm.status_code in (200, 503)
        if warm.status_code == 200:
            assert warm.json()["success"] is False
            assert warm.json()["warmed"] == []
            assert "store-unavailable" in warm.json()["failed"][0]["error"]
        assert not {name for name, _ in site.sink.events} & {
            "cache.invalidated",
            "cache.cleared",
            "cache.optimized",
        }
        # Invalid input is still a 400, and bad credentials still a 401, while Redis is down.
        assert (await site.admin("POST", "/invalidate", {})).status_code == 400
        assert (await site.admin("GET", "/stats", token="nope")).status_code == 401

        redis_process.start()
        await asyncio.sleep(0.3)  # past the breaker's cooldown
        stats = await site.admin("GET", "/stats")
        assert stats.status_code == 200
        assert stats.json()["errors"] >= 1  # the outage was counted
        assert stats.json()["backend"]["breaker"] == "closed"
        ok = await site.admin("POST", "/invalidate", {"paths": ["/api/events/*"]})
        assert ok.json()["success"] is True
    finally:
        await site.aclose()


# -- warm -------------------------------------------------------------------------------------


async def test_warm_fetches_through_the_app_and_reports_warmed_and_failed(site: Site) -> None:
    targets = ["/api/events/5", "/api/events/6", "/api/uncached", "/api/missing"]
    reply = await site.admin("POST", "/warm", {"paths": targets})
    assert reply.status_code == 200
    body = reply.json()
    assert body["success"] is False  # not everything could be warmed
    assert body["warmed"] == [
        {"path": "/api/events/5", "status": 200, "x_cache": "MISS"},
        {"path": "/api/events/6", "status": 200, "x_cache": "MISS"},
    ]
    assert [f["path"] for f in body["failed"]] == ["/api/uncached", "/api/missing"]
    assert body["failed"][1]["status"] == 404
    assert all(f["error"] for f in body["failed"])
    assert site.state.calls == 3  # /api/missing never reached a handler
    stored = site.entries()
    assert len(stored) == 2
    assert all(k.startswith(f"{site.prefix}:GET:/api/events/") for k in stored)
    [event] = site.events("cache.warmed")
    assert event == {"venue": None, "paths": targets, "warmed": 2, "failed": 2}

    again = (await site.admin("POST", "/warm", {"paths": ["/api/events/5"]})).json()
    assert again == {
        "success": True,
        "warmed": [{"path": "/api/events/5", "status": 200, "x_cache": "HIT"}],
        "failed": [],
    }


async def test_warm_with_a_venue_token_warms_that_venue(site: Site) -> None:
    reply = await site.admin(
        "POST", "/warm", {"paths": ["/api/events/8"]}, token=VENUE_TOKENS["t1"]
    )
    assert reply.json()["success"] is True
    [stored] = site.entries()
    assert stored.startswith(f"{site.prefix}:GET:/api/events/8:")
    assert stored.endswith(":venue:t1")
    assert site.events("cache.warmed")[0]["venue"] == "t1"


# The working tree keys the Host (Settings.key_host, on by default) while /warm sends
# `Host: localhost`: the warmed entries are then not the ones clients of the real host read.
HOST_KEYED = bool(getattr(load_config({}), "key_host", False))


async def test_warmed_paths_are_then_hits_for_clients(site: Site) -> None:
    await site.admin("POST", "/warm", {"paths": ["/api/events/5"]})
    await site.admin("POST", "/warm", {"paths": ["/api/events/8"]}, token=VENUE_TOKENS["t1"])
    assert site.entries() == {site.key("/api/events/5"), site.key("/api/events/8", "t1")}
    assert (await site.get("/api/events/5")).headers["x-cache"] == "HIT"
    assert (await site.get("/api/events/8", "t1")).headers["x-cache"] == "HIT"
    assert (await site.get("/api/events/8", "t10")).headers["x-cache"] == "MISS"
    assert site.state.calls == 3


async def test_warm_runs_with_bounded_concurrency(site: Site) -> None:
    paths = [f"/api/slow/{i}" for i in range(12)]
    reply = await site.admin("POST", "/warm", {"paths": paths})
    assert [w["path"] for w in reply.json()["warmed"]] == paths
    assert 2 <= site.state.max_inflight <= 4
    assert len(site.entries()) == 12


async def test_warm_validates_its_input(site: Site) -> None:
    for body, message in (
        ({}, "at least one path"),
        ({"paths": []}, "at least one path"),
        ({"paths": "/api/events/1"}, "must be a list"),
        ({"paths": ["//evil.example/x"]}, "single '/'"),
        ({"paths": ["http://evil.example/"]}, "single '/'"),
        ({"paths": ["/api/events/1\r\nX-Venue: t2"]}, "control characters"),
        ({"paths": ["/api/events/1"] * 101}, "at most 100 items"),
        ({"paths": ["/" + "a" * 256]}, "at most 256 characters"),
        ({"paths": ["/api/events/1"], "venue": "t2"}, "unknown field"),
    ):
        reply = await site.admin("POST", "/warm", body)
        assert reply.status_code == 400, body
        assert message in reply.json()["error"], (body, reply.json())
    assert site.state.calls == 0
    assert site.events() == []


async def test_warm_without_a_middleware_in_process_is_refused(
    memory_url: str, prefix: str
) -> None:
    lonely = create_admin_app(make_config(memory_url, prefix), token=TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=lonely), base_url="http://t"
    ) as client:
        reply = await call_admin(client, "POST", "/warm", {"paths": ["/api/events/1"]})
    assert reply.status_code == 409
    assert "no CacheMiddleware" in reply.json()["error"]


# -- optimize ---------------------------------------------------------------------------------


def optimizer(site: Site, **changes: Any) -> tuple[Starlette, MemorySink]:
    """A second admin app over the same store and prefix, with a changed config."""
    sink = MemorySink()
    app = create_admin_app(
        make_config(site.url, site.prefix, **changes), token=TOKEN, event_sink=sink
    )
    site.extra.append(app.state)
    return app, sink


async def optimize_with(app: Starlette) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await call_admin(c, "POST", "/optimize", {})


def report(reply: httpx.Response) -> dict[str, Any]:
    return {k: v for k, v in reply.json().items() if k != "success"}


async def test_optimize_drops_orphans_unrouted_and_oversized_entries(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None,))
    for target in ("/api/legacy/a", "/api/legacy/b", "/api/big?n=100000", "/api/news"):
        assert (await site.get(target)).headers["x-cache"] == "MISS"
    orphan = site.key("/api/events/2")
    site.db.unlink(orphan)  # gone behind the indexes' back
    assert orphan in site.db.members(tag_index_key(site.prefix, "event:2"))

    # The app's own config: only the orphans go.
    first = await site.admin("POST", "/optimize", {})
    assert first.json() == {
        "success": True,
        "orphaned_index_members": 2,  # in the path index and in the tag index
        "unrouted_entries": 0,
        "oversized_entries": 0,
        "bytes_reclaimed": 2 * len(orphan),
    }
    assert orphan not in site.db.members(tag_index_key(site.prefix, "event:2"))
    assert orphan not in site.db.members(path_index_key(site.prefix, "/api/events/2"))

    # A config without /api/legacy/{item} and a much smaller body limit.
    doomed = [site.key("/api/legacy/a"), site.key("/api/legacy/b"), site.key("/api/big?n=100000")]
    expected_bytes = sum(site.db.size(k) + len(k) for k in doomed)
    kept = site.entries() - set(doomed)
    app, sink = optimizer(site, drop_routes=["/api/legacy/{item}"], max_body_bytes=1000)
    second = await optimize_with(app)
    got = second.json()
    assert (got["success"], got["unrouted_entries"], got["oversized_entries"]) == (
        True,
        2,
        1,
    )
    # The deleted entries leave their path indexes in the same run (each is in one).
    assert got["orphaned_index_members"] == 3
    index_bytes = sum(len(k.encode()) for k in doomed)
    assert got["bytes_reclaimed"] == expected_bytes + index_bytes
    assert site.entries() == kept
    assert (await site.get("/api/events/1")).headers["x-cache"] == "HIT"
    assert (await site.get("/api/legacy/a")).headers["x-cache"] == "MISS"
    # Each app hands its report to its own sink.
    assert sink.events == [("cache.optimized", {"prefix": site.prefix, **report(second)})]
    assert site.events("cache.optimized") == [{"prefix": site.prefix, **report(first)}]


async def test_optimize_leaves_no_orphans_behind(site: Site) -> None:
    for target in ("/api/legacy/a", "/api/big?n=100000"):
        await site.get(target)
    app, _ = optimizer(site, drop_routes=["/api/legacy/{item}"], max_body_bytes=1000)
    first = (await optimize_with(app)).json()
    assert (first["unrouted_entries"], first["oversized_entries"]) == (1, 1)
    second = (await optimize_with(app)).json()
    assert second["orphaned_index_members"] == 0


async def test_optimize_drops_entries_over_the_body_limit(site: Site) -> None:
    await site.get("/api/big?n=20000")
    app, _ = optimizer(site, max_body_bytes=1000)
    report = (await optimize_with(app)).json()
    assert report["oversized_entries"] == 1
    assert site.entries() == set()


# -- metrics and events -----------------------------------------------------------------------


async def test_metrics_are_prometheus_text_matching_the_stats(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, "t1"))
    await site.get("/api/events/1")
    await site.get("/api/news")
    stats = (await site.admin("GET", "/stats")).json()
    reply = await site.admin("GET", "/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    # Every counter of the stats is exported, store_full and any added later included.
    assert {f"cache_middleware_{c.name}" for c in fields(Counters)} <= set(families)
    for name in ("hits", "misses", "stores", "bypasses", "errors", "invalidations"):
        family = families[f"cache_middleware_{name}"]
        assert family.type == "counter"
        values = {s.labels["route"]: s.value for s in family.samples if s.name.endswith("_total")}
        assert values["_all"] == stats[name], name
        for route, figures in stats["routes"].items():
            assert values[route] == figures[name], (name, route)
    gauges = {
        name: families[f"cache_middleware_{name}"].samples[0].value
        for name in ("hit_ratio", "entries", "bytes", "breaker_open")
    }
    assert gauges == {
        "hit_ratio": stats["hit_ratio"],
        "entries": stats["entries"],
        "bytes": stats["bytes"],
        "breaker_open": 0,
    }
    assert gauges["entries"] == 5


class ExplodingSink:
    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        raise RuntimeError("broker down")


async def test_a_failing_event_sink_does_not_fail_the_action(real_redis: str, prefix: str) -> None:
    config = make_config(real_redis, prefix)
    admin = create_admin_app(config, token=TOKEN, event_sink=ExplodingSink())
    mw = CacheMiddleware(build_inner(admin, AppState()), config=config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
        await c.get("/api/events/1")
        reply = await call_admin(c, "POST", "/admin/cache/invalidate", {"tags": ["event:1"]})
        assert reply.json() == {"success": True, "invalidated": 1, "dry_run": False}
        assert (await c.get("/api/events/1")).headers["x-cache"] == "MISS"
    await mw.store.aclose()
    await admin.state.store.aclose()


async def test_every_action_hands_its_event_to_the_sink(site: Site) -> None:
    await seed_events(site, ("1",), (None,))
    await site.admin("POST", "/invalidate", {"tags": ["event:1"]})
    await site.admin("POST", "/warm", {"paths": ["/api/events/1"]})
    await site.admin("POST", "/optimize", {})
    await site.admin("POST", "/clear", {"confirm": True})
    await site.admin("GET", "/stats")
    names = [name for name, _ in site.sink.events]
    assert names == ["cache.invalidated", "cache.warmed", "cache.optimized", "cache.cleared"]
    assert set(names) == LIFECYCLE
    for _, data in site.sink.events:
        json.dumps(data)  # JSON-serializable, as the sink contract says
    assert site.sink.events[0][1]["count"] == 1
    assert site.sink.events[1][1]["warmed"] == 1
    assert site.sink.events[3][1]["count"] >= 1
