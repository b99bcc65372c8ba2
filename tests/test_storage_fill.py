"""The fill, index and epoch contract, over every store (the `store` fixture of
tests/test_storage_contract.py: memory, fakeredis and real Redis, each sync and async).

The invariant under test: a fill stores only while it holds its lease and no invalidation
happened since it took it; otherwise it writes nothing at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cache_middleware._core.globs import escape_glob
from cache_middleware.storage.base import EPOCH_KEY, SCAN_BATCH, Fill, Indexed
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore
from tests import test_storage_contract as contract
from tests.redis_process import RedisProcess
from tests.test_storage_contract import K, Store

# The contract suite's fixtures, so these tests run over the very same backends.
store = contract.store
k = contract.k

LEASE_MS = 5000


def near(ms: int | None, seconds: float) -> bool:
    """A TTL read back a moment after it was set: within 2 s below, never above."""
    return ms is not None and seconds * 1000 - 2000 <= ms <= seconds * 1000


# -- epoch ----------------------------------------------------------------------------------------


async def test_epoch_reads_the_counter(store: Store) -> None:
    if store.kind in contract.SHARED_KINDS:
        # The session's Redis is shared, its counter bumped by earlier tests: read it raw.
        raw = store.inspect.client.get(EPOCH_KEY)
        assert await store.epoch() == (0 if raw is None else int(raw))
    else:
        assert await store.epoch() == 0  # a fresh store: never bumped


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_epoch_is_zero_on_a_fresh_redis(mode: str, redis_process: RedisProcess) -> None:
    raw: Any
    if mode == "async":
        raw = AsyncRedisStore(redis_process.url, timeout=2.0)
    else:
        raw = RedisStore(redis_process.url, timeout=2.0)
    fresh = Store(raw, kind="redis", is_async=mode == "async")
    try:
        assert await fresh.epoch() == 0
        assert await fresh.acquire_fill("lock", "t", LEASE_MS) == 0
        assert await fresh.delete("x") == 0
        assert await fresh.epoch() == 1
    finally:
        await fresh.close()


Invalidation = Callable[[Store, K], Awaitable[int]]


async def _delete_hit(store: Store, k: K) -> int:
    await store.set(k("entry"), b"v", 60)
    return await store.delete(k("entry"))


async def _delete_miss(store: Store, k: K) -> int:
    return await store.delete(k("never-set"))


async def _delete_matching_hit(store: Store, k: K) -> int:
    await store.set(k("entry"), b"v", 60)
    return await store.delete_matching(escape_glob(k("")) + "*")


async def _delete_matching_miss(store: Store, k: K) -> int:
    return await store.delete_matching(escape_glob(k("nothing", "")) + "*")


async def _delete_index_hit(store: Store, k: K) -> int:
    await store.set_indexed(Indexed(k("entry"), b"v", 60, k("other-index"), 60))
    return await store.delete_index(k("other-index"))


async def _delete_index_miss(store: Store, k: K) -> int:
    return await store.delete_index(k("no-such-index"))


# (invalidation, how many keys it deletes): an invalidation that matched nothing still counts.
# Store-wide deletions move the epoch; `delete_index` does not (it takes its own leases away).
INVALIDATIONS: dict[str, tuple[Invalidation, int]] = {
    "delete": (_delete_hit, 1),
    "delete-nothing": (_delete_miss, 0),
    "delete_matching": (_delete_matching_hit, 1),
    "delete_matching-nothing": (_delete_matching_miss, 0),
}


@pytest.mark.parametrize("how", list(INVALIDATIONS))
async def test_every_store_wide_deletion_bumps_the_epoch_once(store: Store, k: K, how: str) -> None:
    invalidate, deleted = INVALIDATIONS[how]
    before = await store.epoch()
    assert await invalidate(store, k) == deleted
    assert await store.epoch() == before + 1


@pytest.mark.parametrize("hit", [True, False])
async def test_delete_index_leaves_the_epoch_alone(store: Store, k: K, hit: bool) -> None:
    before = await store.epoch()
    await (_delete_index_hit if hit else _delete_index_miss)(store, k)
    assert await store.epoch() == before


async def test_delete_index_voids_only_the_leases_that_joined_it(store: Store, k: K) -> None:
    """An unsafe method on one path takes that path's fills away, not every fill in flight."""
    mine = await store.acquire_fill(k("lock", "mine"), "t", LEASE_MS, k("ix", "mine"))
    other = await store.acquire_fill(k("lock", "other"), "t", LEASE_MS, k("ix", "other"))
    assert mine is not None and other is not None
    assert store.inspect.members(k("ix", "mine")) == {k("lock", "mine")}
    await store.delete_index(k("ix", "mine"))
    writes = [(k("fill", "mine"), b"stale", 60)]
    assert not await store.store_fill(
        Fill(k("lock", "mine"), "t", mine, writes, [k("ix", "mine")], 60)
    )
    assert await store.get(k("fill", "mine")) is None
    writes = [(k("fill", "other"), b"fresh", 60)]
    assert await store.store_fill(
        Fill(k("lock", "other"), "t", other, writes, [k("ix", "other")], 60)
    )
    assert await store.get(k("fill", "other")) == b"fresh"


async def test_delete_without_keys_is_not_an_invalidation(store: Store) -> None:
    before = await store.epoch()
    assert await store.delete() == 0
    assert await store.epoch() == before


async def test_deletions_never_delete_the_epoch(store: Store, k: K) -> None:
    """A counter that fell back to 0 could let a fill that read epoch 0 store stale data."""
    await store.delete(k("x"))  # the counter exists now, on every backend
    before = await store.epoch()
    assert before > 0
    assert await store.delete(EPOCH_KEY) == 0
    assert await store.delete_matching(escape_glob(EPOCH_KEY)) == 0
    assert await store.epoch() == before + 2


# -- leases ----------------------------------------------------------------------------------------


async def test_acquire_fill_returns_the_current_epoch(store: Store, k: K) -> None:
    await store.delete(k("bump"))
    epoch = await store.epoch()
    assert await store.acquire_fill(k("lock"), "t1", LEASE_MS) == epoch
    assert near(store.inspect.pttl(k("lock")), LEASE_MS / 1000)
    assert await store.get(k("lock")) == b"t1"  # a lease is a plain key holding its token


async def test_acquire_fill_is_exclusive_across_instances(store: Store, k: K) -> None:
    other = store.twin()
    try:
        assert await store.acquire_fill(k("lock"), "mine", LEASE_MS) is not None
        assert await other.acquire_fill(k("lock"), "theirs", LEASE_MS) is None
        assert await store.acquire_fill(k("lock"), "mine", LEASE_MS) is None  # not re-entrant
        assert await store.get(k("lock")) == b"mine"
        # Another key is another lease.
        assert await other.acquire_fill(k("lock2"), "theirs", LEASE_MS) is not None
    finally:
        await other.close()


async def test_one_of_many_contenders_wins(store: Store, k: K) -> None:
    others = [store.twin() for _ in range(8)]
    try:
        won = await asyncio.gather(
            *(s.acquire_fill(k("lock"), f"t{i}", LEASE_MS) for i, s in enumerate(others))
        )
        winners = [i for i, epoch in enumerate(won) if epoch is not None]
        assert len(winners) == 1
        assert await store.get(k("lock")) == f"t{winners[0]}".encode()
    finally:
        for other in others:
            await other.close()


async def test_lease_expires(store: Store, k: K) -> None:
    other = store.twin()
    try:
        epoch = await store.acquire_fill(k("lock"), "slow", 50)
        assert epoch is not None
        await asyncio.sleep(0.12)
        assert await store.peek_fill(k("entry"), k("lock")) == (None, False)
        assert await other.acquire_fill(k("lock"), "next", LEASE_MS) == epoch
        # The slow filler comes back: its lease is gone, and someone else's must survive it.
        assert not await store.store_fill(
            Fill(k("lock"), "slow", epoch, [(k("entry"), b"old", 60)])
        )
        assert await store.get(k("entry")) is None
        assert await store.get(k("lock")) == b"next"
        await store.release_fill(k("lock"), "slow")
        assert await store.get(k("lock")) == b"next"
        assert await other.store_fill(Fill(k("lock"), "next", epoch, [(k("entry"), b"new", 60)]))
        assert await store.get(k("entry")) == b"new"
    finally:
        await other.close()


async def test_store_fill_after_lease_expired_and_nobody_took_it(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "slow", 50)
    assert epoch is not None
    await asyncio.sleep(0.12)
    assert not await store.store_fill(
        Fill(k("lock"), "slow", epoch, [(k("entry"), b"v", 60)], [k("ix")], 60)
    )
    assert await store.get(k("entry")) is None
    assert store.inspect.members(k("ix")) is None


async def test_release_fill_is_compare_and_delete(store: Store, k: K) -> None:
    other = store.twin()
    try:
        assert await store.acquire_fill(k("lock"), "mine", LEASE_MS) is not None
        await other.release_fill(k("lock"), "theirs")
        assert await store.get(k("lock")) == b"mine"
        assert await other.acquire_fill(k("lock"), "theirs", LEASE_MS) is None
        await store.release_fill(k("lock"), "mine")
        assert await store.get(k("lock")) is None
        await store.release_fill(k("lock"), "mine")  # releasing twice is harmless
        assert await other.acquire_fill(k("lock"), "theirs", LEASE_MS) is not None
    finally:
        await other.close()


async def test_release_fill_does_not_bump_the_epoch(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    await store.release_fill(k("lock"), "t")
    assert await store.epoch() == epoch


async def test_peek_fill(store: Store, k: K) -> None:
    assert await store.peek_fill(k("entry"), k("lock")) == (None, False)
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    assert await store.peek_fill(k("entry"), k("lock")) == (None, True)
    assert await store.store_fill(Fill(k("lock"), "t", epoch, [(k("entry"), b"\x00body", 60)]))
    assert await store.peek_fill(k("entry"), k("lock")) == (b"\x00body", False)
    assert await store.acquire_fill(k("lock"), "t2", LEASE_MS) is not None
    assert await store.peek_fill(k("entry"), k("lock")) == (b"\x00body", True)


# -- get_or_acquire: the lookup that also takes the lease (the Redis stores) ----------------------

MERGING_IDS = [n for n in contract.STORE_IDS if not n.startswith("memory")]


@pytest.fixture(params=MERGING_IDS)
async def merging(request: pytest.FixtureRequest, fake_server: Any) -> Any:
    """A Redis store: one script (LOOKUP_OR_ACQUIRE) where the entry and its lease share a server
    and the store can run it (sync: Redis, fakeredis, Sentinel; async: the plain Redis URL, on
    the pipelined connection), the two calls elsewhere (Cluster; async fakeredis and Sentinel)."""
    facade = contract._build(request.param, request, fake_server)
    yield facade
    await facade.close()
    facade.inspect.close()


async def test_get_or_acquire_answers_a_value_and_takes_no_lease(merging: Store, k: K) -> None:
    await merging.set(k("entry"), b"\x00body", 60)
    got = await merging.get_or_acquire(k("entry"), k("lock"), "t", LEASE_MS, k("ix"))
    assert got == (b"\x00body", None)
    assert await merging.get(k("lock")) is None
    assert merging.inspect.members(k("ix")) is None


async def test_get_or_acquire_takes_the_lease_when_nothing_is_there(merging: Store, k: K) -> None:
    """Exactly what acquire_fill does: the lease with its TTL, the lock in the path index, the
    current epoch; a contender gets nothing; the fill then stores as usual."""
    await merging.delete(k("bump"))
    epoch = await merging.epoch()
    got = await merging.get_or_acquire(k("entry"), k("lock"), "t", LEASE_MS, k("ix"))
    assert got == (None, epoch)
    assert await merging.get(k("lock")) == b"t"
    assert near(merging.inspect.pttl(k("lock")), LEASE_MS / 1000)
    assert merging.inspect.members(k("ix")) == {k("lock")}
    other = merging.twin()
    try:
        got = await other.get_or_acquire(k("entry"), k("lock"), "u", LEASE_MS, k("ix"))
        assert got == (None, None)
    finally:
        await other.close()
    assert await merging.store_fill(
        Fill(k("lock"), "t", epoch, [(k("entry"), b"E", 60)], [k("ix")], 60)
    )
    assert merging.inspect.members(k("ix")) == {k("entry")}
    assert await merging.get_or_acquire(k("entry"), k("lock"), "v", LEASE_MS) == (b"E", None)


async def test_get_or_acquire_lease_is_voided_by_an_unsafe_method(merging: Store, k: K) -> None:
    got = await merging.get_or_acquire(k("entry"), k("lock"), "t", LEASE_MS, k("ix"))
    epoch = got[1]
    assert epoch is not None
    await merging.delete_index(k("ix"))  # a POST on the path: the lease leaves with the index
    assert not await merging.store_fill(Fill(k("lock"), "t", epoch, [(k("entry"), b"E", 60)]))
    assert await merging.get(k("entry")) is None


async def test_get_or_acquire_reads_a_foreign_value_as_get_does(merging: Store, k: K) -> None:
    merging.inspect.client.rpush(k("entry"), b"not an entry")
    expected = await merging.get(k("entry"))
    assert expected == b""  # unreadable: the caller drops it and misses
    got = await merging.get_or_acquire(k("entry"), k("lock"), "t", LEASE_MS)
    assert got == (expected, None)


# -- store_fill ------------------------------------------------------------------------------------


async def test_store_fill_writes_keys_ttls_index_and_drops_the_lease(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    writes = [(k("a"), b"A", 60), (k("b"), b"", 120), (k("c"), bytes(range(256)), 30)]
    assert await store.store_fill(Fill(k("lock"), "t", epoch, writes, [k("ix")], 150))
    for key, value, ttl in writes:
        assert await store.get(key) == value
        assert near(store.inspect.pttl(key), ttl)
    assert store.inspect.members(k("ix")) == {k("a"), k("b"), k("c")}
    assert near(store.inspect.pttl(k("ix")), 150)
    assert await store.get(k("lock")) is None
    assert await store.epoch() == epoch  # storing is not an invalidation


async def test_store_fill_without_index(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    assert await store.store_fill(Fill(k("lock"), "t", epoch, [(k("a"), b"A", 60)]))
    assert await store.get(k("a")) == b"A"
    assert await store.get(k("lock")) is None


async def test_store_fill_with_no_writes_just_releases(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    assert await store.store_fill(Fill(k("lock"), "t", epoch, [], [k("ix")], 60))
    assert await store.get(k("lock")) is None
    assert store.inspect.members(k("ix")) is None


@pytest.mark.parametrize("how", list(INVALIDATIONS))
async def test_store_fill_refused_after_an_invalidation(store: Store, k: K, how: str) -> None:
    """Any deletion between acquire and store, even one that matched nothing, voids the fill:
    it writes nothing, and the lease is released so the next request can fill afresh."""
    invalidate, _ = INVALIDATIONS[how]
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    await invalidate(store, k)
    writes = [(k("fill", "a"), b"stale", 60), (k("fill", "b"), b"stale", 60)]
    assert not await store.store_fill(Fill(k("lock"), "t", epoch, writes, [k("ix")], 60))
    assert await store.get(k("fill", "a")) is None
    assert await store.get(k("fill", "b")) is None
    assert store.inspect.members(k("ix")) is None
    assert await store.get(k("lock")) is None
    fresh = await store.acquire_fill(k("lock"), "t2", LEASE_MS)
    assert fresh == epoch + 1
    assert await store.store_fill(Fill(k("lock"), "t2", fresh, writes, [k("ix")], 60))
    assert await store.get(k("fill", "a")) == b"stale"


async def test_store_fill_refused_for_a_wrong_token(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "mine", LEASE_MS)
    assert epoch is not None
    assert not await store.store_fill(Fill(k("lock"), "forged", epoch, [(k("a"), b"x", 60)]))
    assert await store.get(k("a")) is None
    assert await store.get(k("lock")) == b"mine"  # not ours to release


async def test_store_fill_rejects_bad_ttls_before_writing(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    for writes, index_ttl in [
        ([(k("a"), b"x", 60), (k("b"), b"x", 0)], 60),
        ([(k("a"), b"x", 60)], 0),
    ]:
        with pytest.raises(ValueError, match="ttl"):
            await store.store_fill(Fill(k("lock"), "t", epoch, writes, [k("ix")], index_ttl))
    assert await store.get(k("a")) is None
    assert await store.get(k("lock")) == b"t"  # still ours: the caller may retry or release
    with pytest.raises(ValueError, match="ttl_ms"):
        await store.acquire_fill(k("lock2"), "t", 0)


async def test_index_ttl_is_extended_never_shortened(store: Store, k: K) -> None:
    """EXPIRE NX then GT: the index outlives its longest-lived member."""
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    assert await store.store_fill(
        Fill(k("lock"), "t", epoch, [(k("a"), b"x", 100)], [k("ix")], 100)
    )
    assert near(store.inspect.pttl(k("ix")), 100)
    await store.set_indexed(Indexed(k("b"), b"x", 300, k("ix"), 300))
    assert near(store.inspect.pttl(k("ix")), 300)
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    assert await store.store_fill(Fill(k("lock"), "t", epoch, [(k("c"), b"x", 50)], [k("ix")], 50))
    assert near(store.inspect.pttl(k("ix")), 300)
    assert store.inspect.members(k("ix")) == {k("a"), k("b"), k("c")}


async def test_set_indexed(store: Store, k: K) -> None:
    before = await store.epoch()
    await store.set_indexed(Indexed(k("a"), b"A", 40, k("ix"), 80))
    await store.set_indexed(Indexed(k("a"), b"A2", 40, k("ix"), 80))  # re-adding is idempotent
    assert await store.get(k("a")) == b"A2"
    assert near(store.inspect.pttl(k("a")), 40)
    assert store.inspect.members(k("ix")) == {k("a")}
    assert near(store.inspect.pttl(k("ix")), 80)
    assert await store.epoch() == before


# -- delete_index ----------------------------------------------------------------------------------


async def test_delete_index_counts_only_members_that_existed(store: Store, k: K) -> None:
    for name in ["a", "b", "c"]:
        await store.set_indexed(Indexed(k(name), name.encode(), 60, k("ix"), 60))
    await store.set_indexed(Indexed(k("other"), b"o", 60, k("ix2"), 60))
    await store.set(k("plain"), b"p", 60)
    assert await store.delete(k("b")) == 1  # gone already: not counted again
    assert await store.delete_index(k("ix")) == 2
    assert await store.get(k("a")) is None
    assert await store.get(k("c")) is None
    assert store.inspect.members(k("ix")) is None
    assert store.inspect.pttl(k("ix")) is None
    assert await store.get(k("other")) == b"o"
    assert await store.get(k("plain")) == b"p"
    assert store.inspect.members(k("ix2")) == {k("other")}
    assert await store.delete_index(k("ix")) == 0


async def test_index_starts_afresh_after_delete_index(store: Store, k: K) -> None:
    await store.set_indexed(Indexed(k("old"), b"o", 60, k("ix"), 60))
    assert await store.delete_index(k("ix")) == 1
    await store.set_indexed(Indexed(k("new"), b"n", 60, k("ix"), 60))
    assert store.inspect.members(k("ix")) == {k("new")}
    assert await store.delete_index(k("ix")) == 1


BIG = 1200  # past one Lua unpack() slice (1000) and two delete_index batches of SCAN_BATCH
assert BIG > 2 * SCAN_BATCH


async def test_big_fill_and_big_index(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    writes = [(k("big", str(i)), b"x", 60) for i in range(BIG)]
    assert await store.store_fill(Fill(k("lock"), "t", epoch, writes, [k("ix")], 60))
    members = store.inspect.members(k("ix"))
    assert members is not None and len(members) == BIG
    assert await store.delete(k("big", "7")) == 1
    assert await store.delete_index(k("ix")) == BIG - 1
    assert await store.get(k("big", "0")) is None
    assert await store.get(k("big", str(BIG - 1))) is None
    assert await store.delete_matching(escape_glob(k("")) + "*") == 0  # nothing left over


async def test_delete_many_keys_in_one_call(store: Store, k: K) -> None:
    epoch = await store.acquire_fill(k("lock"), "t", LEASE_MS)
    assert epoch is not None
    keys = [k("many", str(i)) for i in range(BIG)]
    assert await store.store_fill(Fill(k("lock"), "t", epoch, [(key, b"x", 60) for key in keys]))
    assert await store.delete(*keys, k("missing")) == BIG
    assert await store.get(keys[0]) is None


async def test_index_members_may_be_gone_already(store: Store, k: K) -> None:
    await store.set_indexed(Indexed(k("a"), b"x", 60, k("ix"), 60))
    await store.set_indexed(Indexed(k("b"), b"x", 60, k("ix"), 60))
    assert await store.delete_matching(escape_glob(k("a"))) == 1
    assert await store.delete_index(k("ix")) == 1


async def test_each_cache_has_its_own_epoch(store: Store, k: K) -> None:
    """An invalidation in one cache (key prefix) voids that cache's fills, not another's;
    a glob that could reach any cache voids them all."""
    a, b = k("cache-a"), k("cache-b")
    lock_a, lock_b = f"{a}:LOCK:GET:/x", f"{b}:LOCK:GET:/x"
    epoch_a = await store.acquire_fill(lock_a, "t", LEASE_MS)
    epoch_b = await store.acquire_fill(lock_b, "t", LEASE_MS)
    assert epoch_a is not None and epoch_b is not None
    await store.delete_matching(f"{a}:GET:/x*")
    assert not await store.store_fill(Fill(lock_a, "t", epoch_a, [(f"{a}:GET:/x", b"old", 60)]))
    assert await store.store_fill(Fill(lock_b, "t", epoch_b, [(f"{b}:GET:/x", b"new", 60)]))
    assert await store.get(f"{b}:GET:/x") == b"new"
    # An exact key names its cache too.
    epoch_b = await store.acquire_fill(lock_b, "t", LEASE_MS)
    assert epoch_b is not None
    await store.delete(f"{a}:GET:/y")
    assert await store.store_fill(Fill(lock_b, "t", epoch_b, [(f"{b}:GET:/y", b"new", 60)]))
    # A glob without a cache's marker may reach every cache: all fills are void.
    epoch_a = await store.acquire_fill(lock_a, "t", LEASE_MS)
    epoch_b = await store.acquire_fill(lock_b, "t", LEASE_MS)
    assert epoch_a is not None and epoch_b is not None
    await store.delete_matching(escape_glob(k("nothing")) + "*")
    assert not await store.store_fill(Fill(lock_a, "t", epoch_a, [(f"{a}:GET:/z", b"old", 60)]))
    assert not await store.store_fill(Fill(lock_b, "t", epoch_b, [(f"{b}:GET:/z", b"old", 60)]))


def test_a_big_index_sheds_dead_members_as_it_grows(redis_url: str, prefix: str) -> None:
    # Index members outlive their entries; adds prune a sample every few adds, never all at once.
    import redis

    raw = redis.Redis.from_url(redis_url)
    store = RedisStore(redis_url)
    index = f"{prefix}:IDX:/big"
    raw.sadd(index, *[f"{prefix}:GET:/big:dead{i}" for i in range(400)])
    live = [f"{prefix}:GET:/big:live{i}" for i in range(80)]
    try:
        for key in live:
            store.set_indexed(Indexed(key, b"v", 60, index, 60))
        members = {m.decode() for m in raw.smembers(index)}
        assert set(live) <= members  # a live member is never shed
        assert len(members) < 400, len(members)  # dead ones go faster than adds come
    finally:
        store.close()
        raw.close()
