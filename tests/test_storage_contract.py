"""One contract, every store.

The `store` fixture (in the style of cashews' `raw_backend`) builds each backend in turn — the
sync `MemoryStore`, `AsyncMemoryStore`, `RedisStore` and `AsyncRedisStore` over fakeredis, and
`RedisStore` and `AsyncRedisStore` over the real Redis, the same two on a Sentinel group's master,
and `RedisClusterStore` / `AsyncRedisClusterStore` on a 3-primary Redis Cluster (both started for
the session by tests/cluster_process.py) — and hands the test the same awaitable face, so one
test body checks them all. Every key lives under the test's own `prefix`.

The fill, index and epoch operations run through the same fixture in tests/test_storage_fill.py.
fakeredis runs the stores' Lua scripts through `lupa`; without it the fakeredis params are
skipped, never the real-Redis ones.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis

from cache_middleware._core.globs import escape_glob
from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage import AsyncMemoryStore, MemoryStore
from cache_middleware.storage.base import SCAN_BATCH, Fill, Indexed
from cache_middleware.storage.health import CircuitBreaker
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_cluster import AsyncRedisClusterStore, RedisClusterStore
from cache_middleware.storage.redis_sync import RedisStore
from tests.conftest import FakeAsyncRedisStore, fake_sync_store

STORE_LOGGER = "cache_middleware.storage"
BREAKER_LOGGER = "cache_middleware.storage.breaker"
DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused


class Inspector:
    """Looks at a backend's raw state (TTLs, index sets) beside the store under test."""

    def __init__(self, *, memory: MemoryStore | None = None, client: Any = None) -> None:
        self.memory = memory
        self.client = client  # a sync redis-py or fakeredis client on the same data

    def pttl(self, key: str) -> int | None:
        """Milliseconds `key` (an entry, a lease or an index) has left; None when absent."""
        if self.memory is not None:
            left = self.memory.ttl(key)
            if left is None or left <= 0:
                left = self.memory.index_ttl(key)
            return None if left is None or left <= 0 else round(left * 1000)
        ms = int(self.client.pttl(key))
        assert ms != -1, f"{key} has no TTL"
        return None if ms == -2 else ms

    def members(self, index_key: str) -> set[str] | None:
        if self.memory is not None:
            found = self.memory.index_members(index_key)
            return None if found is None else set(found)
        raw = self.client.smembers(index_key)
        return {m.decode() for m in raw} or None  # Redis has no empty sets: absent

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Store:
    """An awaitable face over a sync or an async store, so one test body runs for both."""

    def __init__(
        self,
        raw: Any,
        *,
        kind: str,
        is_async: bool,
        inspector: Inspector | None = None,
        twin: Callable[[], Any] | None = None,
    ) -> None:
        self.raw = raw
        self.kind = kind  # "memory" | "fakeredis" | "redis" | "sentinel" | "cluster"
        self.is_async = is_async
        self.inspect = inspector if inspector is not None else Inspector()
        self._twin = twin

    def twin(self) -> Store:
        """Another store instance on the same data: another process, as far as leases go."""
        assert self._twin is not None
        return Store(self._twin(), kind=self.kind, is_async=self.is_async, inspector=self.inspect)

    async def _call(self, method: str, *args: Any) -> Any:
        result = getattr(self.raw, method)(*args)
        if self.is_async:
            result = await result
        return result

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", key)
        return value

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self._call("set", key, value, ttl)

    async def delete(self, *keys: str) -> int:
        count: int = await self._call("delete", *keys)
        return count

    async def delete_matching(self, pattern: str) -> int:
        count: int = await self._call("delete_matching", pattern)
        return count

    async def ping(self) -> bool:
        ok: bool = await self._call("ping")
        return ok

    async def epoch(self) -> int:
        value: int = await self._call("epoch")
        return value

    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        epoch: int | None = await self._call("acquire_fill", lock_key, token, ttl_ms, index_key)
        return epoch

    async def get_or_acquire(
        self, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> tuple[bytes | None, int | None]:
        got: tuple[bytes | None, int | None] = await self._call(
            "get_or_acquire", key, lock_key, token, ttl_ms, index_key
        )
        return got

    async def store_fill(self, fill: Fill) -> bool:
        ok: bool = await self._call("store_fill", fill)
        return ok

    async def release_fill(self, lock_key: str, token: str) -> None:
        await self._call("release_fill", lock_key, token)

    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        found: tuple[bytes | None, bool] = await self._call("peek_fill", key, lock_key)
        return found

    async def set_indexed(self, entry: Indexed) -> None:
        await self._call("set_indexed", entry)

    async def delete_index(self, index_key: str) -> int:
        count: int = await self._call("delete_index", index_key)
        return count

    async def close(self) -> None:
        await self._call("aclose" if self.is_async else "close")


STORE_IDS = [
    "memory-sync",
    "memory-async",
    "fakeredis-sync",
    "fakeredis-async",
    "redis-sync",
    "redis-async",
    "sentinel-sync",
    "sentinel-async",
    "cluster-sync",
    "cluster-async",
]
REDIS_IDS = [name for name in STORE_IDS if "redis" in name or "sentinel" in name]
# Servers whose counters other tests move: the epoch is read raw, not assumed.
SHARED_KINDS = ("redis", "sentinel", "cluster")


def _lua_in_fakeredis() -> bool:
    return importlib.util.find_spec("lupa") is not None  # fakeredis runs EVAL through it


def _build(name: str, request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer) -> Store:
    kind, mode = name.split("-")
    is_async = mode == "async"
    make: Callable[[], Any]
    if kind == "memory":
        shared = MemoryStore()
        make = (lambda: AsyncMemoryStore(shared)) if is_async else (lambda: shared)
        inspector = Inspector(memory=shared)
    elif kind == "fakeredis":
        if not _lua_in_fakeredis():
            # Deletions are Lua scripts (they bump the invalidation epoch in the same step).
            message = "fakeredis needs `lupa` to run the stores' Lua scripts: pip install lupa"
            if os.environ.get("CI"):
                pytest.fail(f"CI is set: {message}")
            pytest.skip(message)

        def make() -> Any:
            return FakeAsyncRedisStore(fake_server) if is_async else fake_sync_store(fake_server)

        inspector = Inspector(client=fakeredis.FakeRedis(server=fake_server))
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")  # skips, or fails under CI, without Redis

        def make() -> Any:
            # A generous timeout: these tests check the contract, not the timeout (tested below).
            return AsyncRedisStore(url, timeout=2.0) if is_async else RedisStore(url, timeout=2.0)

        inspector = Inspector(client=redis.Redis.from_url(url))
    elif kind == "sentinel":
        group = request.getfixturevalue("sentinel_group")
        url = group.url

        def make() -> Any:
            return AsyncRedisStore(url, timeout=2.0) if is_async else RedisStore(url, timeout=2.0)

        inspector = Inspector(client=group.client(group.current_master()))
    elif kind == "cluster":
        group = request.getfixturevalue("cluster_group")
        url = group.url

        def make() -> Any:
            if is_async:
                return AsyncRedisClusterStore(url, timeout=2.0)
            return RedisClusterStore(url, timeout=2.0)

        inspector = Inspector(client=group.cluster_client())
    else:
        raise AssertionError(f"unknown store {name}")
    return Store(make(), kind=kind, is_async=is_async, inspector=inspector, twin=make)


@pytest.fixture(params=STORE_IDS)
async def store(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> AsyncIterator[Store]:
    facade = _build(request.param, request, fake_server)
    yield facade
    await facade.close()
    facade.inspect.close()


@pytest.fixture(params=REDIS_IDS)
async def redis_store(
    request: pytest.FixtureRequest, fake_server: fakeredis.FakeServer
) -> AsyncIterator[Store]:
    facade = _build(request.param, request, fake_server)
    yield facade
    await facade.close()
    facade.inspect.close()


K = Callable[..., str]


@pytest.fixture
def k(prefix: str) -> K:
    """k("a", "b") -> "<prefix>:a:b"."""
    return lambda *parts: ":".join((prefix, *parts))


# -- basic contract -----------------------------------------------------------------------------


async def test_get_missing_is_none(store: Store, k: K) -> None:
    assert await store.get(k("missing")) is None


@pytest.mark.parametrize(
    "value",
    [
        b"hello",
        b"",
        b"\xff\xfe\x00\x80 not utf-8 \xc3\x28",
        bytes(range(256)),
        b"\x00" * 3 + b"x" * 200_000,
    ],
    ids=["ascii", "empty", "non-utf8", "all-bytes", "200kB"],
)
async def test_set_get_round_trip(store: Store, k: K, value: bytes) -> None:
    await store.set(k("v"), value, 60)
    got = await store.get(k("v"))
    assert got == value
    assert type(got) is bytes


async def test_keys_with_odd_characters(store: Store, k: K) -> None:
    keys = [k("a b"), k("ünï"), k("*?[]\\"), k(""), k("new\nline")]
    for i, key in enumerate(keys):
        await store.set(key, b"%d" % i, 60)
    for i, key in enumerate(keys):
        assert await store.get(key) == b"%d" % i


async def test_overwrite(store: Store, k: K) -> None:
    await store.set(k("o"), b"first", 60)
    await store.set(k("o"), b"second", 60)
    assert await store.get(k("o")) == b"second"
    await store.set(k("o"), b"", 60)
    assert await store.get(k("o")) == b""


async def test_ttl_expiry(store: Store, k: K) -> None:
    await store.set(k("ttl", "short"), b"s", 1)
    await store.set(k("ttl", "long"), b"l", 60)
    await store.set(k("ttl", "renewed"), b"old", 1)
    await store.set(k("ttl", "renewed"), b"new", 60)  # an overwrite replaces the expiry too
    assert await store.get(k("ttl", "short")) == b"s"
    await asyncio.sleep(1.1)
    assert await store.get(k("ttl", "long")) == b"l"
    assert await store.get(k("ttl", "renewed")) == b"new"
    # "short" expired but may not be reaped yet: delete_matching must not count it...
    assert await store.delete_matching(escape_glob(k("ttl", "")) + "*") == 2
    # ...and get must not return it.
    assert await store.get(k("ttl", "short")) is None
    assert await store.get(k("ttl", "long")) is None


async def test_ttl_survivors(store: Store, k: K) -> None:
    # No sleep: a fresh ttl=1 entry is readable immediately, and other keys are independent.
    await store.set(k("a"), b"1", 1)
    await store.set(k("b"), b"2", 3600)
    assert await store.get(k("a")) == b"1"
    assert await store.get(k("b")) == b"2"


async def test_delete_counts_keys_actually_deleted(store: Store, k: K) -> None:
    await store.set(k("d1"), b"1", 60)
    await store.set(k("d2"), b"2", 60)
    await store.set(k("keep"), b"3", 60)
    assert await store.delete() == 0
    assert await store.delete(k("d1"), k("d2"), k("never-set")) == 2
    assert await store.delete(k("d1"), k("d2")) == 0
    assert await store.get(k("d1")) is None
    assert await store.get(k("d2")) is None
    assert await store.get(k("keep")) == b"3"


async def test_delete_same_key_twice_in_one_call(store: Store, k: K) -> None:
    await store.set(k("dup"), b"1", 60)
    assert await store.delete(k("dup"), k("dup")) == 1


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


# -- delete_matching -----------------------------------------------------------------------------

# Key suffixes under "<prefix>:" — a keyspace with separators and every glob special character.
KEYSPACE = [
    "user:1",
    "user:2",
    "user:10",
    "user:a:b",
    "users",
    "user:",
    "user:*",
    "user:?",
    "user:[x]",
    "user:\\back",
    "other:1",
    "other:user:1",
]
USER_COLON = [s for s in KEYSPACE if s.startswith("user:")]

# (pattern suffix, suffixes it must delete) — expectations written out by hand from Redis' rules.
GLOB_CASES = [
    ("*", KEYSPACE),
    ("user:*", USER_COLON),
    ("user*", [*USER_COLON, "users"]),
    ("user:?", ["user:1", "user:2", "user:*", "user:?"]),
    ("user:??", ["user:10"]),
    ("user:[12]", ["user:1", "user:2"]),
    ("user:[^1]", ["user:2", "user:*", "user:?"]),
    ("user:[0-9]*", ["user:1", "user:2", "user:10"]),
    ("*user:1", ["user:1", "other:user:1"]),
    ("*:*:*", ["user:a:b", "other:user:1"]),
    ("user:" + escape_glob("*"), ["user:*"]),
    (escape_glob("user:?"), ["user:?"]),
    (escape_glob("user:[x]"), ["user:[x]"]),
    ("user:[x]", []),  # unescaped, the brackets are a class: would match "user:x" only
    (escape_glob("user:\\back"), ["user:\\back"]),
    ("user:\\back", []),  # unescaped, "\b" is just "b"
    ("nothing:*", []),
]


@pytest.mark.parametrize(
    ("pattern", "doomed"), GLOB_CASES, ids=[case[0] or "empty" for case in GLOB_CASES]
)
async def test_delete_matching(store: Store, prefix: str, pattern: str, doomed: list[str]) -> None:
    for suffix in KEYSPACE:
        await store.set(f"{prefix}:{suffix}", suffix.encode(), 60)
    count = await store.delete_matching(escape_glob(f"{prefix}:") + pattern)
    assert count == len(doomed)
    survivors = {s for s in KEYSPACE if await store.get(f"{prefix}:{s}") is not None}
    assert survivors == set(KEYSPACE) - set(doomed)
    # Idempotent: nothing left to delete.
    assert await store.delete_matching(escape_glob(f"{prefix}:") + pattern) == 0


BULK = 1200  # more than two SCAN/UNLINK batches of SCAN_BATCH
assert BULK > 2 * SCAN_BATCH


async def _seed_bulk(store: Store, k: K) -> None:
    for i in range(BULK):
        await store.set(k("bulk", str(i)), b"x", 60)
    for i in range(50):
        await store.set(k("keep", str(i)), b"y", 60)


async def test_delete_matching_many_keys_exact_count(store: Store, k: K) -> None:
    await _seed_bulk(store, k)
    assert await store.delete_matching(escape_glob(k("bulk", "")) + "*") == BULK
    assert await store.delete_matching(escape_glob(k("bulk", "")) + "*") == 0
    assert await store.get(k("bulk", "0")) is None
    assert await store.get(k("bulk", str(BULK - 1))) is None
    assert await store.delete_matching(escape_glob(k("keep", "")) + "*") == 50


async def test_delete_matching_scans_and_unlinks_in_batches(
    redis_store: Store, k: K, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never KEYS; UNLINK at most SCAN_BATCH keys per call; SCAN with COUNT SCAN_BATCH."""
    await _seed_bulk(redis_store, k)
    client = redis_store.raw.client  # the async store's client for this event loop
    unlink_sizes: list[int] = []
    scan_counts: list[Any] = []
    real_unlink, real_scan = client.unlink, client.scan

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("KEYS must never be used")

    if redis_store.is_async:

        async def unlink(*keys: Any) -> Any:
            unlink_sizes.append(len(keys))
            return await real_unlink(*keys)

        async def scan(*args: Any, **kwargs: Any) -> Any:
            scan_counts.append(kwargs.get("count"))
            return await real_scan(*args, **kwargs)

    else:

        def unlink(*keys: Any) -> Any:
            unlink_sizes.append(len(keys))
            return real_unlink(*keys)

        def scan(*args: Any, **kwargs: Any) -> Any:
            scan_counts.append(kwargs.get("count"))
            return real_scan(*args, **kwargs)

    monkeypatch.setattr(client, "unlink", unlink)
    monkeypatch.setattr(client, "scan", scan)
    monkeypatch.setattr(client, "keys", forbidden)
    assert redis_store.raw.client is client  # the store will use the patched client

    assert await redis_store.delete_matching(escape_glob(k("bulk", "")) + "*") == BULK
    assert len(unlink_sizes) >= -(-BULK // SCAN_BATCH)
    assert max(unlink_sizes) <= SCAN_BATCH
    assert sum(unlink_sizes) >= BULK
    assert scan_counts and set(scan_counts) == {SCAN_BATCH}


# -- memory only: a bounded LRU -------------------------------------------------------------------


MemoryFactory = Callable[[int], tuple[Store, MemoryStore]]


@pytest.fixture(params=["memory-sync", "memory-async"])
def memory_factory(request: pytest.FixtureRequest) -> MemoryFactory:
    """max_bytes -> (Store facade, the underlying MemoryStore)."""

    def make(max_bytes: int) -> tuple[Store, MemoryStore]:
        if request.param == "memory-async":
            raw = AsyncMemoryStore(max_bytes=max_bytes)
            return Store(raw, kind="memory", is_async=True), raw.sync
        sync = MemoryStore(max_bytes)
        return Store(sync, kind="memory", is_async=False), sync

    return make


def _entry_cost(key: str, value: bytes) -> int:
    probe = MemoryStore()
    probe.set(key, value, 60)
    return probe.size_bytes


async def test_lru_eviction_bounded_by_max_bytes(memory_factory: MemoryFactory) -> None:
    value = b"v" * 1000
    cost = _entry_cost("k:a", value)
    store, raw = memory_factory(3 * cost + cost // 2)  # room for three entries, not four
    for name in "abc":
        await store.set(f"k:{name}", value, 60)
    assert len(raw) == 3
    assert await store.get("k:a") == value  # a is now the most recently used; b the least
    await store.set("k:d", value, 60)
    assert await store.get("k:b") is None
    assert await store.get("k:a") == value
    assert await store.get("k:c") == value
    assert await store.get("k:d") == value
    assert len(raw) == 3
    assert raw.size_bytes <= raw.max_bytes
    # Overwriting does not double-count the old value.
    await store.set("k:a", value, 60)
    assert len(raw) == 3
    assert raw.size_bytes == 3 * cost


async def test_many_small_entries_stay_within_budget(memory_factory: MemoryFactory) -> None:
    store, raw = memory_factory(10_000)
    for i in range(1000):
        await store.set(f"k:{i}", b"x", 60)
        assert raw.size_bytes <= 10_000
    assert 0 < len(raw) < 1000
    assert await store.get("k:999") == b"x"  # the newest survives
    assert await store.get("k:0") is None  # the oldest went first


async def test_value_larger_than_max_bytes_is_not_stored(memory_factory: MemoryFactory) -> None:
    store, raw = memory_factory(10_000)
    await store.set("k:small", b"s", 60)
    await store.set("k:other", b"o", 60)
    used = raw.size_bytes
    await store.set("k:huge", b"h" * 20_000, 60)
    assert await store.get("k:huge") is None
    assert await store.get("k:small") == b"s"  # nothing was evicted to make room
    assert raw.size_bytes == used
    # Overwriting an entry with a value too big to keep drops the stale one instead of serving it.
    await store.set("k:small", b"h" * 20_000, 60)
    assert await store.get("k:small") is None
    assert await store.get("k:other") == b"o"


async def test_size_accounting_returns_to_zero(memory_factory: MemoryFactory) -> None:
    store, raw = memory_factory(1_000_000)
    for i in range(10):
        await store.set(f"k:{i}", b"x" * i, 60)
    assert await store.delete("k:0", "k:1") == 2
    assert await store.delete_matching("k:*") == 8
    assert raw.size_bytes == 0
    assert len(raw) == 0


# -- outages ---------------------------------------------------------------------------------------


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts TCP connections (in the backlog) and never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


OPS: dict[str, tuple[Any, ...]] = {
    "get": ("get", "k"),
    "set": ("set", "k", b"v", 60),
    "delete": ("delete", "k"),
    "delete_matching": ("delete_matching", "k*"),
    "ping": ("ping",),
    "epoch": ("epoch",),
    "acquire_fill": ("acquire_fill", "lk", "t", 1000),
    "store_fill": ("store_fill", Fill("lk", "t", 0, [("k", b"v", 60)], ["ix"], 60)),
    "release_fill": ("release_fill", "lk", "t"),
    "peek_fill": ("peek_fill", "k", "lk"),
    "set_indexed": ("set_indexed", Indexed("k", b"v", 60, "ix", 60)),
    "delete_index": ("delete_index", "ix"),
}


def _dead(url: str, is_async: bool, **kwargs: Any) -> Store:
    raw: Any
    if is_async:
        raw = AsyncRedisStore(url, timeout=0.1, **kwargs)
    else:
        raw = RedisStore(url, timeout=0.1, **kwargs)
    return Store(raw, kind="redis", is_async=is_async)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_unreachable_redis_raises_store_unavailable_quickly(mode: str, op: str) -> None:
    store = _dead(DEAD_URL, mode == "async")
    method, *args = OPS[op]
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await getattr(store, method)(*args)
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()


@pytest.mark.parametrize("op", ["get", "set", "delete_matching"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_hung_redis_times_out_quickly(silent_url: str, mode: str, op: str) -> None:
    store = _dead(silent_url, mode == "async")
    method, *args = OPS[op]
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await getattr(store, method)(*args)
        assert time.monotonic() - started < 1.0
    finally:
        await store.close()


def _records(
    caplog: pytest.LogCaptureFixture, level: int, name: str = STORE_LOGGER
) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and r.levelno == level]


@pytest.mark.parametrize("breaker", ["breaker-off", "breaker-on"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_outage_is_logged_once(
    mode: str, breaker: str, caplog: pytest.LogCaptureFixture
) -> None:
    failures = 0 if breaker == "breaker-off" else 5
    store = _dead("redis://app:s3cret@127.0.0.1:1/0", mode == "async", breaker_failures=failures)
    caplog.set_level(logging.INFO, logger=STORE_LOGGER)
    try:
        for _ in range(5):
            for method, *args in OPS.values():
                with pytest.raises(StoreUnavailable):
                    await getattr(store, method)(*args)
    finally:
        await store.close()
    calls = 5 * len(OPS)
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text  # the password never reaches the logs
    assert store.raw.monitor.down is True
    assert _records(caplog, logging.INFO) == []
    opened = _records(caplog, logging.WARNING, BREAKER_LOGGER)
    if failures:
        # The breaker opened after `failures` tries; every later call was refused without I/O.
        assert store.raw.monitor.failures == failures
        assert store.raw.breaker.rejected == calls - failures
        assert store.raw.breaker.state == "open"
        assert len(opened) == 1
        assert "circuit breaker open" in opened[0].getMessage()
    else:
        assert store.raw.monitor.failures == calls
        assert store.raw.breaker.state == "closed"
        assert opened == []


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_recovery_is_logged_once_and_a_new_outage_again(
    mode: str, fake_server: fakeredis.FakeServer, caplog: pytest.LogCaptureFixture, k: K
) -> None:
    """fakeredis' `server.connected = False` makes every command fail with ConnectionError, as
    a Redis that went away would; setting it back brings the same server (and data) back."""
    raw: Any = FakeAsyncRedisStore(fake_server) if mode == "async" else fake_sync_store(fake_server)
    # The breaker would refuse calls after five failures; this test is about the outage log
    # alone (the breaker's recovery is tested in tests/test_breaker.py).
    raw.breaker = CircuitBreaker("fake", failures=0)
    store = Store(raw, kind="fakeredis", is_async=mode == "async")
    caplog.set_level(logging.INFO, logger=STORE_LOGGER)
    try:
        await store.set(k("x"), b"kept", 60)
        fake_server.connected = False
        for _ in range(10):
            with pytest.raises(StoreUnavailable):
                await store.get(k("x"))
        with pytest.raises(StoreUnavailable):
            await store.delete_matching(k("*"))
        assert len(_records(caplog, logging.WARNING)) == 1
        assert _records(caplog, logging.INFO) == []

        fake_server.connected = True
        assert await store.get(k("x")) == b"kept"
        assert await store.ping() is True
        await store.set(k("y"), b"2", 60)
        infos = _records(caplog, logging.INFO)
        assert len(infos) == 1
        assert "reachable again" in infos[0].getMessage()
        assert raw.monitor.down is False

        fake_server.connected = False  # a second outage is announced again
        with pytest.raises(StoreUnavailable):
            await store.get(k("x"))
        assert len(_records(caplog, logging.WARNING)) == 2
    finally:
        fake_server.connected = True
        await store.close()
