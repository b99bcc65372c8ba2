"""CacheManager and SyncCacheManager over memory, fakeredis and the real Redis.

Behaviour both managers share is tested once through `Manager`, an awaitable face over either;
single-flight is tested with asyncio tasks for the async manager and threads for the sync one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import msgpack
import pytest
import redis

from cache_middleware._core.values import VALUE_MAGIC
from cache_middleware.errors import StoreUnavailable
from cache_middleware.manager import (
    CacheManager,
    SyncCacheManager,
    get_cache_manager,
    get_sync_cache_manager,
)
from cache_middleware.storage import AsyncMemoryStore, MemoryStore
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore
from tests.conftest import FakeAsyncRedisStore, fake_sync_store

DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused
MANAGER_LOGGER = "cache_middleware.manager"

K = Callable[..., str]


class AwaitableFace:
    """Every method of a sync or async object, awaitable (so one test body runs for both)."""

    def __init__(self, inner: Any, is_async: bool) -> None:
        self.inner = inner
        self.is_async = is_async

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return await result if self.is_async else result

        return call


class Manager(AwaitableFace):
    @property
    def store(self) -> AwaitableFace:
        return AwaitableFace(self.inner.store, self.is_async)

    async def close(self) -> None:
        if self.is_async:
            await self.inner.aclose()
        else:
            self.inner.close()


def _async_store(kind: str, request: pytest.FixtureRequest, server: fakeredis.FakeServer) -> Any:
    if kind == "memory":
        return AsyncMemoryStore()
    if kind == "fakeredis":
        return FakeAsyncRedisStore(server)
    if kind == "dead":
        return AsyncRedisStore(DEAD_URL, timeout=0.1)
    return AsyncRedisStore(request.getfixturevalue("redis_url"), timeout=2.0)


def _sync_store(kind: str, request: pytest.FixtureRequest, server: fakeredis.FakeServer) -> Any:
    if kind == "memory":
        return MemoryStore()
    if kind == "fakeredis":
        return fake_sync_store(server)
    if kind == "dead":
        return RedisStore(DEAD_URL, timeout=0.1)
    return RedisStore(request.getfixturevalue("redis_url"), timeout=2.0)


BACKENDS = ["memory", "fakeredis", "redis"]


@pytest.fixture(params=BACKENDS)
async def async_manager(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> AsyncIterator[CacheManager]:
    manager = CacheManager(_async_store(request.param, request, fake_server))
    yield manager
    await manager.aclose()


@pytest.fixture(params=BACKENDS)
def sync_manager(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> Iterator[SyncCacheManager]:
    manager = SyncCacheManager(_sync_store(request.param, request, fake_server))
    yield manager
    manager.close()


def _both(kinds: list[str]) -> list[str]:
    return [f"{mode}-{kind}" for mode in ("async", "sync") for kind in kinds]


async def _manager(request: pytest.FixtureRequest, server: fakeredis.FakeServer) -> Manager:
    mode, kind = request.param.split("-")
    if mode == "async":
        return Manager(CacheManager(_async_store(kind, request, server)), True)
    return Manager(SyncCacheManager(_sync_store(kind, request, server)), False)


@pytest.fixture(params=_both(BACKENDS))
async def manager(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> AsyncIterator[Manager]:
    facade = await _manager(request, fake_server)
    yield facade
    await facade.close()


@pytest.fixture(params=_both(["dead"]))
async def dead_manager(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> AsyncIterator[Manager]:
    facade = await _manager(request, fake_server)
    yield facade
    await facade.close()


@pytest.fixture
def k(prefix: str) -> K:
    """k("a", "b") -> "<prefix>:a:b"."""
    return lambda *parts: ":".join((prefix, *parts))


# -- get / set ------------------------------------------------------------------------------------


async def test_get_missing_returns_default(manager: Manager, k: K) -> None:
    assert await manager.get(k("missing")) is None
    assert await manager.get(k("missing"), "fallback") == "fallback"
    assert await manager.get(k("missing"), default=0) == 0


VALUES = [
    {"a": 1, "b": [1, 2.5, None, True], "c": {"nested": "ok"}},
    [1, "two", 3.0, False, None, [], {}],
    "text with ünïcode and \x00",
    "",
    0,
    -1,
    2**63,
    -(2**63),
    3.14,
    -0.5,
    True,
    False,
    None,
    [],
    {},
    {1: "int keys"},
    b"\xffraw bytes",
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:20] for v in VALUES])
async def test_set_get_round_trip(manager: Manager, k: K, value: Any) -> None:
    assert await manager.set(k("v"), value) is True
    got = await manager.get(k("v"), default="<missing>")
    assert got == value
    assert type(got) is type(value)


async def test_none_is_a_value_not_a_miss(manager: Manager, k: K) -> None:
    assert await manager.set(k("none"), None, ttl=60) is True
    assert await manager.get(k("none"), default="<missing>") is None


async def test_set_overwrites(manager: Manager, k: K) -> None:
    await manager.set(k("o"), {"v": 1})
    await manager.set(k("o"), [2])
    assert await manager.get(k("o")) == [2]


def test_set_uses_ttl(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    manager = SyncCacheManager(RedisStore(redis_url, timeout=2.0), default_ttl=120)
    try:
        manager.set(f"{prefix}:explicit", 1, ttl=77)
        manager.set(f"{prefix}:default", 1)
        manager.get_or_set(f"{prefix}:factory", lambda: 1, ttl=33)
        assert 70 < client.ttl(f"{prefix}:explicit") <= 77
        assert 110 < client.ttl(f"{prefix}:default") <= 120
        assert 25 < client.ttl(f"{prefix}:factory") <= 33
    finally:
        manager.close()
        client.close()


BAD_TTLS = [0, -1, 1.5, "60", True]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttl_raises_value_error(manager: Manager, k: K, ttl: Any) -> None:
    calls = 0

    def factory() -> int:
        nonlocal calls
        calls += 1
        return 1

    with pytest.raises(ValueError, match="ttl"):
        await manager.set(k("t"), "v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await manager.get_or_set(k("t"), factory, ttl=ttl)
    assert calls == 0
    assert await manager.get(k("t"), "<missing>") == "<missing>"


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_bad_default_ttl_raises_value_error(ttl: Any) -> None:
    with pytest.raises(ValueError):
        CacheManager(AsyncMemoryStore(), default_ttl=ttl)
    with pytest.raises(ValueError):
        SyncCacheManager(MemoryStore(), default_ttl=ttl)


UNSERIALIZABLE = [
    object(),
    {1, 2},
    datetime.datetime(2024, 1, 1),
    {"nested": [object()]},
    2**64,
    (lambda: None),
]


@pytest.mark.parametrize("value", UNSERIALIZABLE, ids=lambda v: type(v).__name__)
async def test_unserializable_value_raises_type_error(manager: Manager, k: K, value: Any) -> None:
    with pytest.raises(TypeError, match="serializable"):
        await manager.set(k("bad"), value)
    assert await manager.get(k("bad"), "<missing>") == "<missing>"


# -- get_or_set -----------------------------------------------------------------------------------


async def test_get_or_set_sync_factory(manager: Manager, k: K) -> None:
    calls = 0

    def factory() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    assert await manager.get_or_set(k("g"), factory) == {"n": 1}
    assert await manager.get_or_set(k("g"), factory) == {"n": 1}
    assert calls == 1
    assert await manager.get(k("g")) == {"n": 1}


async def test_get_or_set_async_factory(async_manager: CacheManager, k: K) -> None:
    calls = 0

    async def factory() -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return [calls]

    assert await async_manager.get_or_set(k("g"), factory) == [1]
    assert await async_manager.get_or_set(k("g"), factory) == [1]
    assert calls == 1
    assert await async_manager.get(k("g")) == [1]


async def test_get_or_set_returns_existing_value_without_calling(manager: Manager, k: K) -> None:
    await manager.set(k("e"), "already")

    def factory() -> str:
        raise AssertionError("must not be called")

    assert await manager.get_or_set(k("e"), factory) == "already"


@pytest.mark.parametrize("falsy", [None, 0, "", [], {}, False], ids=repr)
async def test_get_or_set_caches_falsy_values(manager: Manager, k: K, falsy: Any) -> None:
    """A factory returning None (or anything falsy) is not called again: a stored None is a
    value, distinct from a miss."""
    calls = 0

    def factory() -> Any:
        nonlocal calls
        calls += 1
        return falsy

    assert await manager.get_or_set(k("f"), factory) == falsy
    assert await manager.get_or_set(k("f"), factory) == falsy
    assert calls == 1


async def test_get_or_set_factory_error_is_not_cached(manager: Manager, k: K) -> None:
    def boom() -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await manager.get_or_set(k("x"), boom)
    assert await manager.get(k("x"), "<missing>") == "<missing>"
    assert await manager.get_or_set(k("x"), lambda: "fine") == "fine"


# -- single flight --------------------------------------------------------------------------------


async def test_single_flight_tasks(async_manager: CacheManager, k: K) -> None:
    calls = 0

    async def factory() -> dict[str, str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"computed": "once"}

    results = await asyncio.gather(
        *(async_manager.get_or_set(k("hot"), factory, ttl=60) for _ in range(50))
    )
    assert calls == 1
    assert results == [{"computed": "once"}] * 50
    assert await async_manager.get(k("hot")) == {"computed": "once"}
    assert async_manager._inflight == {}


async def test_single_flight_tasks_error_reaches_every_waiter(
    async_manager: CacheManager, k: K
) -> None:
    calls = 0

    async def factory() -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise LookupError("backend said no")

    results = await asyncio.gather(
        *(async_manager.get_or_set(k("hot"), factory) for _ in range(20)),
        return_exceptions=True,
    )
    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results), results
    assert await async_manager.get(k("hot"), "<missing>") == "<missing>"
    assert async_manager._inflight == {}
    # Not cached: the next caller computes afresh.
    assert await async_manager.get_or_set(k("hot"), lambda: "second try") == "second try"


async def test_single_flight_leader_cancellation_does_not_cancel_waiters() -> None:
    manager = CacheManager(AsyncMemoryStore())

    async def factory() -> str:
        await asyncio.sleep(0.05)
        return "value"

    leader = asyncio.create_task(manager.get_or_set("k", factory))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(manager.get_or_set("k", factory))
    await asyncio.sleep(0.01)
    leader.cancel()
    results = await asyncio.gather(leader, waiter, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == "value"


def _run_threads(n: int, target: Callable[[], Any]) -> list[Any]:
    """Run `target` in n threads released together; return each result or exception."""
    barrier = threading.Barrier(n)

    def worker() -> Any:
        barrier.wait()
        try:
            return target()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: worker(), range(n)))


def test_single_flight_threads(sync_manager: SyncCacheManager, k: K) -> None:
    calls = 0
    lock = threading.Lock()

    def factory() -> list[int]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        return [4, 2]

    results = _run_threads(20, lambda: sync_manager.get_or_set(k("hot"), factory, ttl=60))
    assert calls == 1
    assert results == [[4, 2]] * 20
    assert sync_manager.get(k("hot")) == [4, 2]
    assert sync_manager._inflight == {}


def test_single_flight_threads_error_reaches_every_waiter(
    sync_manager: SyncCacheManager, k: K
) -> None:
    calls = 0
    lock = threading.Lock()

    def factory() -> Any:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        raise LookupError("backend said no")

    results = _run_threads(10, lambda: sync_manager.get_or_set(k("hot"), factory))
    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results), results
    assert sync_manager.get(k("hot"), "<missing>") == "<missing>"
    assert sync_manager._inflight == {}
    assert sync_manager.get_or_set(k("hot"), lambda: "second try") == "second try"


# -- invalidate -----------------------------------------------------------------------------------


async def test_invalidate_returns_count(manager: Manager, k: K) -> None:
    events = [k("events", str(i)) for i in range(5)] + [k("events", "a", "b"), k("events", "")]
    others = [k("event"), k("eventsX"), k("other", "events", "1")]
    for key in events + others:
        await manager.set(key, key)
    assert await manager.invalidate(f"{k('events')}:*") == len(events)
    for key in events:
        assert await manager.get(key, "<missing>") == "<missing>"
    for key in others:
        assert await manager.get(key) == key
    assert await manager.invalidate(f"{k('events')}:*") == 0


async def test_invalidate_many_keys(manager: Manager, k: K) -> None:
    for i in range(1100):
        await manager.set(k("events", str(i)), i)
    assert await manager.invalidate(f"{k('events')}:*") == 1100


async def test_delete(manager: Manager, k: K) -> None:
    await manager.set(k("a"), 1)
    await manager.set(k("b"), 2)
    assert await manager.delete(k("a"), k("b"), k("c")) == 2
    assert await manager.get(k("a")) is None


# -- foreign and corrupt values -------------------------------------------------------------------

CORRUPT = {
    "foreign": b"not written by cache-middleware",
    "empty": b"",
    "pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
    "json": b'{"json": true}',
    "magic-only": VALUE_MAGIC,
    "old-version": b"CMV\x00" + msgpack.packb(1),
    "truncated": VALUE_MAGIC + b"\x92\x01",
    "trailing-garbage": VALUE_MAGIC + msgpack.packb(1) + b"x",
    "huge-array-header": VALUE_MAGIC + b"\xdd\xff\xff\xff\xff",
    "ext-type": VALUE_MAGIC + b"\xd4\x01\x00",
    "bad-utf8-str": VALUE_MAGIC + b"\xa2\xff\xfe",
}


@pytest.mark.parametrize("raw", list(CORRUPT.values()), ids=list(CORRUPT))
async def test_corrupt_value_reads_as_missing_and_is_deleted(
    manager: Manager, k: K, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=MANAGER_LOGGER)
    await manager.store.set(k("c"), raw, 60)
    assert await manager.get(k("c"), "<missing>") == "<missing>"
    assert await manager.store.get(k("c")) is None  # dropped, not left to fail again
    assert any(r.name == MANAGER_LOGGER for r in caplog.records)


async def test_corrupt_value_is_recomputed_by_get_or_set(manager: Manager, k: K) -> None:
    await manager.store.set(k("c"), b"garbage", 60)
    assert await manager.get_or_set(k("c"), lambda: {"fresh": True}) == {"fresh": True}
    assert await manager.get(k("c")) == {"fresh": True}


# -- Redis unreachable: fail open, except for deletions --------------------------------------------


async def test_unreachable_store_fails_open(dead_manager: Manager, k: K) -> None:
    started = time.monotonic()
    calls = 0

    def factory() -> str:
        nonlocal calls
        calls += 1
        return "computed"

    assert await dead_manager.get(k("x")) is None
    assert await dead_manager.get(k("x"), "fallback") == "fallback"
    assert await dead_manager.set(k("x"), 1) is False
    assert await dead_manager.get_or_set(k("x"), factory) == "computed"
    assert await dead_manager.get_or_set(k("x"), factory) == "computed"
    assert calls == 2  # nothing could be cached
    with pytest.raises(StoreUnavailable):
        await dead_manager.invalidate(f"{k('events')}:*")
    with pytest.raises(StoreUnavailable):
        await dead_manager.delete(k("x"))
    # Caller errors are still caller errors.
    with pytest.raises(ValueError):
        await dead_manager.set(k("x"), 1, ttl=0)
    with pytest.raises(TypeError):
        await dead_manager.set(k("x"), object())
    assert time.monotonic() - started < 2.0


async def test_unreachable_store_still_single_flight(k: K) -> None:
    manager = CacheManager(AsyncRedisStore(DEAD_URL, timeout=0.1))
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "computed"

    try:
        results = await asyncio.gather(*(manager.get_or_set(k("x"), factory) for _ in range(20)))
    finally:
        await manager.aclose()
    assert calls == 1
    assert results == ["computed"] * 20


# -- process-wide managers ------------------------------------------------------------------------


def test_get_cache_manager_is_shared_per_config(memory_url: str) -> None:
    first = get_cache_manager({"redis_url": memory_url})
    assert get_cache_manager({"redis_url": memory_url}) is first
    assert get_cache_manager({"redis_url": memory_url + "-other"}) is not first
    sync_first = get_sync_cache_manager({"redis_url": memory_url})
    assert get_sync_cache_manager({"redis_url": memory_url}) is sync_first
    assert isinstance(first.store, AsyncMemoryStore)
    assert isinstance(sync_first.store, MemoryStore)


async def test_async_and_sync_managers_of_one_config_share_memory(memory_url: str, k: K) -> None:
    async_manager = get_cache_manager({"redis_url": memory_url})
    sync_manager = get_sync_cache_manager({"redis_url": memory_url})
    await async_manager.set(k("shared"), {"from": "async"})
    assert sync_manager.get(k("shared")) == {"from": "async"}
    sync_manager.set(k("shared"), {"from": "sync"})
    assert await async_manager.get(k("shared")) == {"from": "sync"}


def test_get_cache_manager_default_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    manager = get_cache_manager()
    assert get_cache_manager() is manager
    assert isinstance(manager.store, AsyncMemoryStore)
    assert isinstance(get_sync_cache_manager().store, MemoryStore)


def test_get_cache_manager_follows_cache_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_REDIS_URL", DEAD_URL)  # stores connect lazily: nothing is dialled
    manager = get_cache_manager()
    assert isinstance(manager.store, AsyncRedisStore)
    assert manager.store.url == DEAD_URL
    assert isinstance(get_sync_cache_manager().store, RedisStore)
    assert get_cache_manager() is manager
