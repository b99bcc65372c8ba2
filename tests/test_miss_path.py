"""The MISS path on routes that mostly miss: the lookup also takes the fill lease.

A route keyed on a parameter that rarely repeats misses on nearly every lookup; there the
middleware asks the store for the entry and, when there is none, for the lease in the same
round trip (`get_or_acquire`), so a MISS costs two round trips (that, and the store) instead of
three. A route that mostly hits keeps the plain GET. Either way the fill protocol is the same:
one fill per key across processes, invalidations win over fills in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.trend import SATURATION, MissTrend
from cache_middleware.storage.base import Fill
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore


class CountingStore(AsyncRedisStore):
    """The real async Redis store, counting the calls the middleware makes."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=2.0)
        self.calls: Counter[str] = Counter()

    async def get(self, key: str) -> bytes | None:
        self.calls["get"] += 1
        return await super().get(key)

    async def get_or_acquire(self, *args: Any) -> tuple[bytes | None, int | None]:
        self.calls["get_or_acquire"] += 1
        return await super().get_or_acquire(*args)

    async def acquire_fill(self, *args: Any) -> int | None:
        self.calls["acquire_fill"] += 1
        return await super().acquire_fill(*args)

    async def store_fill(self, *args: Any) -> bool:
        self.calls["store_fill"] += 1
        return await super().store_fill(*args)


def make_app(calls: list[str], delay: float = 0.0) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["query_string"].decode())
        await asyncio.sleep(delay)
        body = f"{scope['query_string'].decode()} #{len(calls)}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def config(url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "routes": {"/api": {"ttl": 60, "vary_by": ["n"]}},
    }


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_trend_saturates_both_ways() -> None:
    trend = MissTrend()
    assert not trend.mostly_misses("/a")  # unknown: the plain read
    trend.missed("/a")
    assert trend.mostly_misses("/a")
    for _ in range(50):
        trend.found("/a")
    assert not trend.mostly_misses("/a")
    for _ in range(SATURATION):
        trend.missed("/a")
    assert not trend.mostly_misses("/a")  # a route settled on hits needs more than that
    trend.missed("/a")
    assert trend.mostly_misses("/a")
    assert not trend.mostly_misses("/b")  # per route


async def test_a_route_that_mostly_misses_looks_up_and_leases_at_once(
    redis_url: str, prefix: str
) -> None:
    store = CountingStore(redis_url)
    calls: list[str] = []
    mw = CacheMiddleware(make_app(calls), config=config(redis_url, prefix), store=store)
    raw = redis.Redis.from_url(redis_url)
    async with client(mw) as http:
        first = await http.get("/api/x?n=0")
        assert first.headers["x-cache"] == "MISS"
        # Nothing known about the route yet: GET, then the lease, then the store.
        assert store.calls == {"get": 1, "acquire_fill": 1, "store_fill": 1}
        for n in range(1, 6):
            store.calls.clear()
            reply = await http.get(f"/api/x?n={n}")
            assert reply.headers["x-cache"] == "MISS"
            assert store.calls == {"get_or_acquire": 1, "store_fill": 1}  # two round trips
        assert calls == [f"n={n}" for n in range(6)]
        # The fills really stored, and gave their leases back.
        assert not list(raw.scan_iter(match=f"{prefix}*LOCK*"))
        store.calls.clear()
        again = await http.get("/api/x?n=3")
        assert (again.headers["x-cache"], again.text) == ("HIT", "n=3 #4")
        assert store.calls == {"get_or_acquire": 1}  # found: no lease taken
        assert not list(raw.scan_iter(match=f"{prefix}*LOCK*"))
        # Once the route mostly hits, its lookups are plain GETs again.
        for _ in range(2 * SATURATION):
            assert (await http.get("/api/x?n=3")).headers["x-cache"] == "HIT"
        store.calls.clear()
        assert (await http.get("/api/x?n=3")).headers["x-cache"] == "HIT"
        assert store.calls == {"get": 1}
    assert calls == [f"n={n}" for n in range(6)]
    raw.close()
    await store.aclose()


async def test_two_processes_both_merging_fill_a_key_once(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    one = CacheMiddleware(make_app(calls, delay=0.2), config=config(redis_url, prefix))
    two = CacheMiddleware(make_app(calls, delay=0.2), config=config(redis_url, prefix))
    async with client(one) as a, client(two) as b:
        # Each process has seen its route miss: its next lookups also ask for the lease.
        await asyncio.gather(a.get("/api/x?n=warm-a"), b.get("/api/x?n=warm-b"))
        assert one.trend.mostly_misses("/api") and two.trend.mostly_misses("/api")
        calls.clear()
        replies = await asyncio.gather(*((a, b)[i % 2].get("/api/x?n=hot") for i in range(20)))
    assert calls == ["n=hot"]
    assert {r.text for r in replies} == {"n=hot #1"}
    assert sorted(r.headers["x-cache"] for r in replies) == ["HIT"] * 19 + ["MISS"]


async def test_an_unsafe_method_during_a_merged_fill_wins(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(make_app(calls, delay=0.2), config=config(redis_url, prefix))
    async with client(mw) as http:
        await http.get("/api/x?n=warm")
        assert mw.trend.mostly_misses("/api")
        filling = asyncio.ensure_future(http.get("/api/x?n=1"))
        await asyncio.sleep(0.05)  # the fill runs the app, its lease taken with the lookup
        await http.post("/api/x")
        assert (await filling).headers["x-cache"] == "MISS"
        # The fill was overtaken: not stored, the next request runs the app again.
        reply = await http.get("/api/x?n=1")
        assert reply.headers["x-cache"] == "MISS"
    assert calls == ["n=warm", "n=1", "", "n=1"]  # the POST ran too


@pytest.mark.parametrize("near_cache", [False, True])
async def test_merged_lookups_with_and_without_the_near_cache(
    redis_url: str, prefix: str, near_cache: bool
) -> None:
    calls: list[str] = []
    settings = {**config(redis_url, prefix), "near_cache": near_cache}
    mw = CacheMiddleware(make_app(calls), config=settings)
    async with client(mw) as http:
        states = [(await http.get(f"/api/x?n={n}")).headers["x-cache"] for n in range(5)]
        assert states == ["MISS"] * 5
        assert mw.trend.mostly_misses("/api")
        replies = [await http.get(f"/api/x?n={n}") for n in range(5)]
        assert [r.headers["x-cache"] for r in replies] == ["HIT"] * 5
        assert [r.text for r in replies] == [f"n={n} #{n + 1}" for n in range(5)]
    assert len(calls) == 5


# -- WSGI ----------------------------------------------------------------------------------------


class CountingSyncStore(RedisStore):
    """The real sync Redis store, counting the calls the WSGI middleware makes."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=2.0)
        self.calls: Counter[str] = Counter()

    def get(self, key: str) -> bytes | None:
        self.calls["get"] += 1
        return super().get(key)

    def get_or_acquire(self, *args: Any) -> tuple[bytes | None, int | None]:
        self.calls["get_or_acquire"] += 1
        return super().get_or_acquire(*args)

    def acquire_fill(self, *args: Any) -> int | None:
        self.calls["acquire_fill"] += 1
        return super().acquire_fill(*args)

    def store_fill(self, *args: Any) -> bool:
        self.calls["store_fill"] += 1
        return super().store_fill(*args)


def make_wsgi_app(calls: list[str], delay: float = 0.0) -> Any:
    lock = threading.Lock()

    def app(environ: Any, start_response: Any) -> Any:
        with lock:
            calls.append(environ["QUERY_STRING"])
            n = len(calls)
        time.sleep(delay)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['QUERY_STRING']} #{n}".encode()]

    return app


def test_wsgi_route_that_mostly_misses_looks_up_and_leases_at_once(
    redis_url: str, prefix: str
) -> None:
    store = CountingSyncStore(redis_url)
    calls: list[str] = []
    mw = WSGICacheMiddleware(make_wsgi_app(calls), config=config(redis_url, prefix), store=store)
    raw = redis.Redis.from_url(redis_url)
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as http:
        assert http.get("/api/x?n=0").headers["x-cache"] == "MISS"
        assert store.calls == {"get": 1, "acquire_fill": 1, "store_fill": 1}
        for n in range(1, 4):
            store.calls.clear()
            assert http.get(f"/api/x?n={n}").headers["x-cache"] == "MISS"
            assert store.calls == {"get_or_acquire": 1, "store_fill": 1}
        assert not list(raw.scan_iter(match=f"{prefix}*LOCK*"))
        store.calls.clear()
        again = http.get("/api/x?n=2")
        assert (again.headers["x-cache"], again.text) == ("HIT", "n=2 #3")
        assert store.calls == {"get_or_acquire": 1}
        for _ in range(2 * SATURATION):
            assert http.get("/api/x?n=2").headers["x-cache"] == "HIT"
        store.calls.clear()
        assert http.get("/api/x?n=2").headers["x-cache"] == "HIT"
        assert store.calls == {"get": 1}
    assert calls == [f"n={n}" for n in range(4)]
    raw.close()
    store.close()


def test_wsgi_two_processes_both_merging_fill_a_key_once(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    apps = [
        WSGICacheMiddleware(make_wsgi_app(calls, delay=0.2), config=config(redis_url, prefix))
        for _ in range(2)
    ]
    clients = [
        httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") for app in apps
    ]
    for i, http in enumerate(clients):
        http.get(f"/api/x?n=warm-{i}")
    assert all(app.trend.mostly_misses("/api") for app in apps)
    calls.clear()
    barrier = threading.Barrier(10)

    def one(i: int) -> httpx.Response:
        barrier.wait()
        return clients[i % 2].get("/api/x?n=hot")

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(one, range(10)))
    assert calls == ["n=hot"]
    assert {r.text for r in replies} == {"n=hot #1"}
    for http in clients:
        http.close()


class SlowLeaseStore(AsyncRedisStore):
    """The lookup that takes the lease comes back late: a request of the same process that
    found the lease taken (by it) has claimed the key meanwhile."""

    async def get_or_acquire(self, *args: Any) -> tuple[bytes | None, int | None]:
        got = await super().get_or_acquire(*args)
        if got[1] is not None:
            await asyncio.sleep(0.1)
        return got


class SlowLeaseSyncStore(RedisStore):
    def get_or_acquire(self, *args: Any) -> tuple[bytes | None, int | None]:
        got = super().get_or_acquire(*args)
        if got[1] is not None:
            time.sleep(0.1)
        return got


async def test_the_lease_holder_fills_even_when_another_request_claimed_first(
    redis_url: str, prefix: str
) -> None:
    calls: list[str] = []
    store = SlowLeaseStore(redis_url, timeout=2.0)
    mw = CacheMiddleware(make_app(calls, delay=0.1), config=config(redis_url, prefix), store=store)
    async with client(mw) as http:
        await http.get("/api/x?n=warm")
        leader = asyncio.ensure_future(http.get("/api/x?n=hot"))
        await asyncio.sleep(0.02)  # the leader's lookup took the lease; its reply is late
        follower = asyncio.ensure_future(http.get("/api/x?n=hot"))
        replies = await asyncio.gather(leader, follower)
    assert calls == ["n=warm", "n=hot"]  # filled once: by the request holding the lease
    assert [r.headers["x-cache"] for r in replies] == ["MISS", "HIT"]
    await store.aclose()


def test_wsgi_the_lease_holder_fills_even_when_another_thread_claimed_first(
    redis_url: str, prefix: str
) -> None:
    calls: list[str] = []
    store = SlowLeaseSyncStore(redis_url, timeout=2.0)
    mw = WSGICacheMiddleware(
        make_wsgi_app(calls, delay=0.1), config=config(redis_url, prefix), store=store
    )
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as http:
        http.get("/api/x?n=warm")
        with ThreadPoolExecutor(2) as pool:
            leader = pool.submit(http.get, "/api/x?n=hot")
            time.sleep(0.02)
            follower = pool.submit(http.get, "/api/x?n=hot")
            replies = [leader.result(), follower.result()]
    assert calls == ["n=warm", "n=hot"]
    assert [r.headers["x-cache"] for r in replies] == ["MISS", "HIT"]
    store.close()


async def test_near_cache_over_a_store_without_the_merged_call() -> None:
    """The near-cache wrapper answers get_or_acquire over any store: the two calls then."""
    from cache_middleware.storage.memory import AsyncMemoryStore, MemoryStore
    from cache_middleware.storage.near import NearAsyncStore, NearCache

    inner = AsyncMemoryStore(MemoryStore())
    assert not hasattr(inner, "get_or_acquire")
    near = NearCache(1 << 20, 60)
    near.set_live(True)
    store = NearAsyncStore(inner, near)
    assert await store.get_or_acquire("k", "lock", "t", 5000) == (None, 0)
    assert await store.get_or_acquire("k", "lock", "u", 5000) == (None, None)  # held
    assert await store.store_fill(Fill("lock", "t", 0, [("k", b"v", 60)]))
    assert await store.get_or_acquire("k", "lock", "u", 5000) == (b"v", None)
    assert near.get("k") == b"v"  # read through: kept in process
