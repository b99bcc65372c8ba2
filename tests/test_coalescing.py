"""Request coalescing and the fill lease, through both adapters.

Concurrent misses on one key call the app once, in a process (a future or an event) and across
processes (a Redis lease: two middleware instances on one Redis stand for two processes); an
unstorable answer sends every waiter to the app; a foreign lease is waited on for a bounded
time; a fill that an invalidation overtook is not written.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from cache_middleware import CacheMiddleware, WSGICacheMiddleware

SLOW = 0.2


def asgi_app(calls: list[str], cookie: bool = False) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["method"])
        n = len(calls)
        await asyncio.sleep(SLOW)
        headers = [(b"content-type", b"text/plain")]
        if cookie:
            headers.append((b"set-cookie", b"s=1"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": f"call {n}".encode()})

    return app


def wsgi_app(calls: list[str], cookie: bool = False) -> Any:
    lock = threading.Lock()

    def app(environ: Any, start_response: Any) -> Any:
        with lock:
            calls.append(environ["REQUEST_METHOD"])
            n = len(calls)
        time.sleep(SLOW)
        headers = [("Content-Type", "text/plain")]
        if cookie:
            headers.append(("Set-Cookie", "s=1"))
        start_response("200 OK", headers)
        return [f"call {n}".encode()]

    return app


def config(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    # A generous redis_timeout: these tests count app calls, and on a loaded 2-core CI machine
    # twelve threads queueing for the GIL once kept a reply past the default 0.1 s; the store
    # then failed open and the BYPASSed requests called the app (a timeout is not what is tested).
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "redis_timeout": 2.0,
        "routes": {"/api": {"ttl": 60}},
        **extra,
    }


async def asgi_burst(apps: list[Any], n: int, path: str = "/api/events") -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        for app in apps
    ]
    try:
        return await asyncio.gather(*(clients[i % len(clients)].get(path) for i in range(n)))
    finally:
        for client in clients:
            await client.aclose()


def wsgi_burst(apps: list[Any], n: int, path: str = "/api/events") -> list[httpx.Response]:
    clients = [
        httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") for app in apps
    ]
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        barrier.wait()
        return clients[i % len(clients)].get(path)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(params=["memory", "redis"])
def url(request: pytest.FixtureRequest, memory_url: str) -> str:
    return memory_url if request.param == "memory" else str(request.getfixturevalue("redis_url"))


async def test_asgi_one_process_calls_the_app_once(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls), config=config(url, prefix))
    replies = await asgi_burst([mw], 20)
    assert calls == ["GET"]
    assert {r.text for r in replies} == {"call 1"}
    assert sorted(r.headers["x-cache"] for r in replies) == ["HIT"] * 19 + ["MISS"]
    assert mw.stats.coalesced == 19


def test_wsgi_one_process_calls_the_app_once(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = WSGICacheMiddleware(wsgi_app(calls), config=config(url, prefix))
    replies = wsgi_burst([mw], 12)
    assert calls == ["GET"]
    assert {r.text for r in replies} == {"call 1"}
    assert mw.stats.coalesced == 11


async def test_asgi_two_processes_call_the_app_once(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    one = CacheMiddleware(asgi_app(calls), config=config(redis_url, prefix))
    two = CacheMiddleware(asgi_app(calls), config=config(redis_url, prefix))
    replies = await asgi_burst([one, two], 20)
    assert calls == ["GET"]
    assert {r.text for r in replies} == {"call 1"}


def test_wsgi_two_processes_call_the_app_once(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    one = WSGICacheMiddleware(wsgi_app(calls), config=config(redis_url, prefix))
    two = WSGICacheMiddleware(wsgi_app(calls), config=config(redis_url, prefix))
    replies = wsgi_burst([one, two], 10)
    assert calls == ["GET"]
    assert {r.text for r in replies} == {"call 1"}


async def test_asgi_unstorable_leader_sends_every_waiter_to_the_app(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls, cookie=True), config=config(url, prefix))
    replies = await asgi_burst([mw], 8)
    assert len(calls) == 8  # each got its own answer: a Set-Cookie is never shared
    assert len({r.text for r in replies}) == 8
    assert {r.headers["x-cache"] for r in replies} == {"BYPASS"}


def test_wsgi_unstorable_leader_sends_every_waiter_to_the_app(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = WSGICacheMiddleware(wsgi_app(calls, cookie=True), config=config(url, prefix))
    replies = wsgi_burst([mw], 6)
    assert len(calls) == 6
    assert len({r.text for r in replies}) == 6


async def test_foreign_lease_is_waited_on_for_a_bounded_time(redis_url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls), config=config(redis_url, prefix, coalesce_wait=0.3))
    lock = f"{prefix}:LOCK:GET:/api/events:host:http%3A//t"
    assert await mw.store.acquire_fill(lock, "someone-else", 30_000) is not None
    start = time.perf_counter()
    (reply,) = await asgi_burst([mw], 1)
    elapsed = time.perf_counter() - start
    assert 0.3 <= elapsed < 0.3 + SLOW + 0.4
    assert reply.headers["x-cache"] == "BYPASS"  # answered, not stored: not the lease holder
    assert "not-leader" in reply.headers["cache-status"]
    assert calls == ["GET"]
    await mw.store.release_fill(lock, "someone-else")


async def test_fill_overtaken_by_an_invalidation_is_not_written(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls), config=config(url, prefix))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t")

    async def invalidate_midway() -> None:
        await asyncio.sleep(SLOW / 2)
        # Any invalidation counts: here the manager's glob, from another code path.
        await mw.store.delete_matching(f"{prefix}:GET:/api/other*")

    first, _ = await asyncio.gather(client.get("/api/events"), invalidate_midway())
    assert first.headers["x-cache"] == "MISS"
    assert mw.stats.lost_leases == 1
    assert mw.stats.stores == 0
    second = await client.get("/api/events")
    assert second.headers["x-cache"] == "MISS"  # the first answer was never written
    third = await client.get("/api/events")
    assert third.headers["x-cache"] == "HIT"
    await client.aclose()


async def test_unsafe_method_during_a_fill_wins(url: str, prefix: str) -> None:
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls), config=config(url, prefix))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t")

    async def post_midway() -> httpx.Response:
        await asyncio.sleep(SLOW / 2)
        return await client.post("/api/events")

    get, post = await asyncio.gather(client.get("/api/events"), post_midway())
    assert (get.headers["x-cache"], post.headers["x-cache"]) == ("MISS", "BYPASS")
    assert (await client.get("/api/events")).headers["x-cache"] == "MISS"
    await client.aclose()


async def test_dropping_an_unreadable_entry_voids_no_fill(url: str, prefix: str) -> None:
    """Garbage under one key is housekeeping, not an invalidation: other fills still store."""
    calls: list[str] = []
    mw = CacheMiddleware(asgi_app(calls), config=config(url, prefix))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t")
    await mw.store.set(f"{prefix}:GET:/api/b:host:http%3A//t", b"not an entry", 60)

    async def read_garbage_midway() -> httpx.Response:
        await asyncio.sleep(SLOW / 2)
        return await client.get("/api/b")

    first, garbage = await asyncio.gather(client.get("/api/a"), read_garbage_midway())
    assert (first.headers["x-cache"], garbage.headers["x-cache"]) == ("MISS", "MISS")
    assert mw.stats.lost_leases == 0
    assert (await client.get("/api/a")).headers["x-cache"] == "HIT"
    assert (await client.get("/api/b")).headers["x-cache"] == "HIT"
    await client.aclose()
