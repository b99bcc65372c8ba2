"""Scale-out: Redis Cluster and Sentinel beyond the shared store contract.

The contract itself (get/set/delete, fills, indexes, epochs) runs on both in
tests/test_storage_contract.py and tests/test_storage_fill.py. Here: the factory picks the
right store for each URL form; pattern invalidation, key listing and figures reach every
primary; an unreachable cluster fails open; and a primary (or the Sentinel master) killed while
requests run costs a bounded number of `StoreUnavailable`, after which operations resume on the
promoted replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest
import redis.cluster

from cache_middleware.config import Settings
from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage import make_async_store, make_sync_store
from cache_middleware.storage.base import Fill
from cache_middleware.storage.redis_async import AsyncRedisStore, sentinel_parts
from cache_middleware.storage.redis_cluster import (
    AsyncRedisClusterStore,
    RedisClusterStore,
    cluster_parts,
)
from cache_middleware.storage.redis_sync import RedisStore
from tests.cluster_process import ClusterGroup, SentinelGroup
from tests.test_storage_contract import OPS, Store

# -- URLs and the factory --------------------------------------------------------------------------


def test_sentinel_url_forms() -> None:
    assert sentinel_parts("redis://h:1/0") is None
    nodes, service, kwargs = sentinel_parts("redis+sentinel://s1:26379,s2:26380/mymaster/3")  # type: ignore[misc]
    assert nodes == [("s1", 26379), ("s2", 26380)]
    assert (service, kwargs) == ("mymaster", {"db": 3})
    nodes, service, kwargs = sentinel_parts("rediss+sentinel://app:p%40ss@s1/cache")  # type: ignore[misc]
    assert nodes == [("s1", 26379)]
    assert (service, kwargs) == ("cache", {"username": "app", "password": "p@ss", "ssl": True})
    with pytest.raises(ValueError, match="service_name"):
        sentinel_parts("redis+sentinel://s1:26379")


def test_cluster_url_forms() -> None:
    nodes, kwargs = cluster_parts("redis+cluster://a:7000,b:7001,[::1]:7002")
    assert nodes == [("a", 7000), ("b", 7001), ("::1", 7002)]
    assert kwargs == {}
    nodes, kwargs = cluster_parts("rediss+cluster://:secret@a:7000/")
    assert nodes == [("a", 7000)]
    assert kwargs == {"password": "secret", "ssl": True}


@pytest.mark.parametrize(
    ("url", "async_type", "sync_type"),
    [
        ("redis://127.0.0.1:1/0", AsyncRedisStore, RedisStore),
        ("redis+sentinel://127.0.0.1:1/svc", AsyncRedisStore, RedisStore),
        ("redis+cluster://127.0.0.1:1", AsyncRedisClusterStore, RedisClusterStore),
        ("rediss+cluster://127.0.0.1:1", AsyncRedisClusterStore, RedisClusterStore),
    ],
)
def test_factory_builds_the_store_for_each_url(url: str, async_type: Any, sync_type: Any) -> None:
    settings = Settings(redis_url=url, redis_timeout=0.2, breaker_failures=3)
    built = make_async_store(settings)
    assert type(built) is async_type
    assert built.breaker.failures == 3  # type: ignore[attr-defined]
    if "+" in url:  # the pipelined GET speaks to one known server: plain redis:// only
        assert built._fast_params is None  # type: ignore[attr-defined]
    sync = make_sync_store(settings)
    assert type(sync) is sync_type
    sync.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_unreachable_cluster_fails_open(mode: str) -> None:
    """No seed node answers: building the store is fine, every operation is StoreUnavailable."""
    url = "redis+cluster://127.0.0.1:1"
    raw: Any = (
        AsyncRedisClusterStore(url, timeout=0.1, breaker_failures=0)
        if mode == "async"
        else RedisClusterStore(url, timeout=0.1, breaker_failures=0)
    )
    store = Store(raw, kind="cluster", is_async=mode == "async")
    try:
        for method, *args in OPS.values():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await getattr(store, method)(*args)
            assert time.monotonic() - started < 1.0, method
    finally:
        await store.close()


# -- every primary ---------------------------------------------------------------------------


def _keys_on_every_primary(cluster: redis.cluster.RedisCluster, prefix: str) -> list[str]:
    """Keys under `prefix` spread so that each primary holds several."""
    keys = [f"{prefix}:GET:/api/events/{i}" for i in range(60)]
    owners = {cluster.get_node_from_key(key).name for key in keys}
    assert len(owners) == 3, owners
    return keys


@pytest.mark.parametrize("call", ["keys_matching", "info", "delete_matching"])
async def test_a_fresh_async_store_sees_every_primary_on_its_first_call(
    call: str, cluster_group: ClusterGroup
) -> None:
    # redis.asyncio's RedisCluster learns the topology on its first command: an admin whose
    # first call is a dry run, /stats or a pattern invalidation must still see every primary.
    prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    inspect = cluster_group.cluster_client()
    keys = _keys_on_every_primary(inspect, prefix)
    for key in keys:
        inspect.set(key, b"v", ex=60)
    inspect.close()
    fresh = AsyncRedisClusterStore(cluster_group.url, timeout=2.0)
    try:
        if call == "keys_matching":
            assert sorted(await fresh.keys_matching(f"{prefix}:*")) == sorted(keys)
        elif call == "info":
            assert (await fresh.info())["primaries"] == 3
        else:
            assert await fresh.delete_matching(f"{prefix}:*") == len(keys)
    finally:
        await fresh.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_delete_matching_reaches_every_primary(
    mode: str, cluster_group: ClusterGroup
) -> None:
    prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    inspect = cluster_group.cluster_client()
    raw: Any = (
        AsyncRedisClusterStore(cluster_group.url, timeout=2.0)
        if mode == "async"
        else RedisClusterStore(cluster_group.url, timeout=2.0)
    )
    store = Store(raw, kind="cluster", is_async=mode == "async")
    try:
        keys = _keys_on_every_primary(inspect, prefix)
        for key in keys:
            await store.set(key, b"v", 60)
        await store.set(f"{prefix}:GET:/api/venues", b"kept", 60)
        if mode == "async":
            listed = await raw.keys_matching(f"{prefix}:GET:/api/events/*")
            assert sorted(listed) == sorted(keys)
            assert len(await raw.keys_matching(f"{prefix}:*", limit=7)) == 7
            facts = await raw.info()
            assert facts["primaries"] == 3 and facts["used_memory"] > 0
        before = await store.epoch()
        assert await store.delete_matching(f"{prefix}:GET:/api/events/*") == len(keys)
        assert await store.epoch() == before + 1
        for port in cluster_group.primaries():  # each primary, asked directly: nothing left
            node = cluster_group.client(port)
            assert list(node.scan_iter(match=f"{prefix}:GET:/api/events/*")) == []
            node.close()
        assert await store.get(f"{prefix}:GET:/api/venues") == b"kept"
    finally:
        await store.close()
        inspect.close()


async def test_tag_index_spanning_primaries(cluster_group: ClusterGroup) -> None:
    """An index whose members live on every primary: delete_index reaches them all."""
    prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    inspect = cluster_group.cluster_client()
    store = AsyncRedisClusterStore(cluster_group.url, timeout=2.0)
    try:
        keys = _keys_on_every_primary(inspect, prefix)
        lock = f"{prefix}:LOCK:GET:/api/events"
        epoch = await store.acquire_fill(lock, "t", 5000, f"{prefix}:IDX:/api/events")
        assert epoch is not None
        writes = [(key, b"v", 60) for key in keys]
        tags = [f"{prefix}:IDX:/api/events", f"{prefix}:TAG:event"]
        assert await store.store_fill(Fill(lock, "t", epoch, writes, tags, 60))
        assert await store.exists(keys) == len(keys)
        assert await store.delete_index(f"{prefix}:TAG:event") == len(keys)
        assert await store.exists(keys) == 0
        assert await store.delete_index(f"{prefix}:IDX:/api/events") == 0
    finally:
        await store.aclose()
        inspect.close()


# -- failover ---------------------------------------------------------------------------------

# A primary killed: redis-server nodes notice after cluster-node-timeout (1 s in the fixture)
# and promote its replica; Sentinel (down-after 1 s) does the same for a master.
RECOVERY_DEADLINE = 20.0
BREAKER_OPEN = "circuit breaker open"


class Outcome:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []  # (key, message) of each StoreUnavailable
        self.took = 0.0  # seconds from the kill until every key answered again


async def _traffic_through_failover(store: Store, kill: Any, keys: list[str]) -> Outcome:
    """set + get over `keys` in a loop; `kill()` after a healthy warm-up; until two full rounds
    pass without a failure. Any exception other than StoreUnavailable fails the test."""
    for key in keys:
        await store.set(key, b"before", 60)
    outcome = Outcome()
    killed_at = 0.0
    round_ok = 0
    i = 0
    deadline = time.monotonic() + RECOVERY_DEADLINE + 5
    while time.monotonic() < deadline:
        key = keys[i % len(keys)]
        i += 1
        if i == 3 * len(keys):
            kill()
            killed_at = time.monotonic()
            round_ok = 0
        try:
            await store.set(key, b"after", 60)
            assert await store.get(key) == b"after"
        except StoreUnavailable as exc:
            outcome.failed.append((key, str(exc)))
            round_ok = 0
            await asyncio.sleep(0.01)
            continue
        round_ok += 1
        if killed_at and round_ok >= 2 * len(keys):
            outcome.took = time.monotonic() - killed_at
            return outcome
        await asyncio.sleep(0.002)
    raise AssertionError(f"operations did not resume ({len(outcome.failed)} failed)")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_cluster_primary_killed_under_traffic(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cache_middleware.storage")
    group = ClusterGroup()
    try:
        group.start()
        inspect = group.cluster_client()
        keys = _keys_on_every_primary(inspect, f"cmtest:{uuid.uuid4().hex[:8]}")[:30]
        victim = group.primaries()[0]
        on_victim = [key for key in keys if inspect.get_node_from_key(key).port == victim]
        inspect.close()
        assert on_victim
        kwargs = {"timeout": 0.2, "breaker_cooldown": 0.25}
        raw: Any = (
            AsyncRedisClusterStore(group.url, **kwargs)
            if mode == "async"
            else RedisClusterStore(group.url, **kwargs)
        )
        store = Store(raw, kind="cluster", is_async=mode == "async")
        try:
            outcome = await _traffic_through_failover(store, lambda: group.kill(victim), keys)
        finally:
            await store.close()
        assert victim not in group.primaries()  # a replica took its slots
        assert outcome.failed  # the outage was felt, as StoreUnavailable (BYPASS), nothing else
        assert outcome.took < RECOVERY_DEADLINE
        # Only the dead primary's slots paid with I/O; the others kept answering (a request on
        # them could only be refused by the breaker, without I/O, after 5 failures in a row).
        paid = [key for key, message in outcome.failed if BREAKER_OPEN not in message]
        assert set(paid) <= set(on_victim), [f for f in outcome.failed if f[0] not in on_victim]
        # One failed attempt per request for the dead slots while the failover lasts, and the
        # outage logged once: the monitor does not flap between the dead and the live primaries.
        assert raw.monitor.failures == len(paid)
        warnings = [r for r in caplog.records if r.name == "cache_middleware.storage"]
        # Logged once, not at each alternation of dead and live primaries ("reachable again"
        # follows once no operation has failed for a second, after this loop ended).
        assert [r.levelno for r in warnings] == [logging.WARNING], warnings
    finally:
        group.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_sentinel_master_killed_under_traffic(mode: str) -> None:
    group = SentinelGroup()
    try:
        group.start()
        keys = [f"cmtest:{uuid.uuid4().hex[:8]}:GET:/k/{i}" for i in range(10)]
        kwargs = {"timeout": 0.2, "breaker_cooldown": 0.25}
        raw: Any = (
            AsyncRedisStore(group.url, **kwargs)
            if mode == "async"
            else RedisStore(group.url, **kwargs)
        )
        store = Store(raw, kind="sentinel", is_async=mode == "async")
        # The master Sentinel names now (on a loaded machine it may already have failed over
        # once at start-up: the server started as master is then a replica).
        old_master = group.current_master()
        try:
            outcome = await _traffic_through_failover(store, lambda: group.kill(old_master), keys)
        finally:
            await store.close()
        assert group.current_master() != old_master
        assert outcome.failed
        assert outcome.took < RECOVERY_DEADLINE
        # One master: the breaker opens after 5 failures and then sends one probe per cooldown
        # (0.25 s), so the failures that cost I/O are bounded by the failover's duration.
        assert raw.monitor.failures <= 5 + outcome.took / 0.25 + 2
    finally:
        group.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_dead_primary_opens_its_own_breaker_only(mode: str) -> None:
    group = ClusterGroup()
    try:
        group.start()
        inspect = group.cluster_client()
        keys = _keys_on_every_primary(inspect, f"cmtest:{uuid.uuid4().hex[:8]}")
        # The victim is a primary that owns slots: right after the cluster is made, a node's
        # CLUSTER NODES may still list a slotless node as a master, which owns no key here.
        dead = keys[0]
        victim = inspect.get_node_from_key(dead).port
        live = next(k for k in keys if inspect.get_node_from_key(k).port != victim)
        inspect.close()
        # A long cooldown: no probe during the test, so every refusal is the breaker's.
        kwargs = {"timeout": 0.2, "breaker_failures": 3, "breaker_cooldown": 30.0}
        raw: Any = (
            AsyncRedisClusterStore(group.url, **kwargs)
            if mode == "async"
            else RedisClusterStore(group.url, **kwargs)
        )
        store = Store(raw, kind="cluster", is_async=mode == "async")
        try:
            await store.set(dead, b"v", 60)
            await store.set(live, b"v", 60)
            assert await store.get(dead) == b"v"
            group.kill(victim)
            with_io, refused = 0, 0
            for _ in range(15):
                try:
                    await store.get(dead)
                except StoreUnavailable as exc:
                    if BREAKER_OPEN in str(exc):
                        refused += 1
                    else:
                        with_io += 1
                # The other primaries' keys are served in between, every time.
                assert await store.get(live) == b"v"
            assert with_io <= 3, with_io  # then its breaker opened: no more attempts
            assert refused >= 12 - with_io
            assert raw.breaker.state == "closed"  # the store's own breaker never opened
        finally:
            await store.close()
    finally:
        group.stop()


# -- through the middleware ------------------------------------------------------------------------


async def test_a_primary_killed_under_http_traffic_never_costs_an_error_page() -> None:
    """What the user sees of a failover: every answer the app's, 200, marked HIT, MISS or
    BYPASS; never a 500 nor an exception out of the middleware."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from cache_middleware import CacheMiddleware

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    group = ClusterGroup()
    try:
        group.start()
        config = {
            "redis_url": group.url,
            "key_prefix": f"cmtest:{uuid.uuid4().hex[:8]}",
            "redis_timeout": 0.2,
            "breaker_cooldown": 0.25,
            "routes": {"/api/items/{id}": {"ttl": 60}},
        }
        app = CacheMiddleware(Starlette(routes=[Route("/api/items/{id}", item)]), config=config)
        transport = httpx.ASGITransport(app=app)
        seen: dict[str, int] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            killed_at = 0.0
            deadline = time.monotonic() + RECOVERY_DEADLINE + 5
            healthy_since = None
            i = 0
            while time.monotonic() < deadline:
                i += 1
                if i == 60:
                    group.kill(group.primaries()[0])
                    killed_at = time.monotonic()
                answer = await client.get(f"/api/items/{i % 30}")
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"id": str(i % 30)}
                state = answer.headers["x-cache"]
                assert state in ("HIT", "MISS", "BYPASS"), state
                seen[state] = seen.get(state, 0) + 1
                if killed_at and state != "BYPASS":
                    healthy_since = healthy_since or time.monotonic()
                    if time.monotonic() - healthy_since > 1.0:
                        break  # a second without a BYPASS: recovered
                elif killed_at:
                    healthy_since = None
                await asyncio.sleep(0.005)
        assert killed_at, "the primary was never killed"
        assert seen.get("HIT", 0) > 0 and seen.get("BYPASS", 0) > 0, seen
        assert healthy_since is not None, f"never recovered: {seen}"
    finally:
        group.stop()
