"""The Redis stores for Redis Cluster (`redis+cluster://host:port[,host:port...]`).

Subclasses of the single-server stores: `get`, `set`, `forget`, `release_fill`, `epoch` and the
single-key admin calls are the same code on a `redis.cluster.RedisCluster` /
`redis.asyncio.cluster.RedisCluster` client, through the same circuit breaker and error
translation (a MOVED, ASK or failover that redis-py cannot absorb in its one retry is a
`StoreUnavailable`, never an exception of redis-py's reaching the app).

What differs is every operation that touches several keys. An entry, its lease (`...:LOCK:...`),
its indexes (`...:IDX:...`, `...:TAG:...`), its cache's epoch (`{prefix}:EPOCH:%`) and the
store-wide `cache-middleware:epoch` hash to different slots, so no Lua script may name them
together. Each compound operation is instead a short, fixed sequence of single-key commands
(one pipeline per step, redis-py sends each node its share), ordered so that an invalidation
racing a fill is still caught; docs/deployment.md#cluster-consistency gives the argument and the
windows left. In brief, `store_fill` is:

1. GET lease, GET epoch: not ours, or the epoch moved -> write nothing (the early refusal);
2. SET the entries;
3. add them to their indexes (SADD + EXPIRE NX/GT);
4. compare-and-delete the lease, GET the epoch again: if the lease was lost or the epoch moved
   meanwhile, UNLINK what step 2 wrote and report "not stored".

Invalidations bump the epoch before they delete, and `delete_index` pops the index in place
(SPOP) and unlinks what it popped until the set is empty, so a fill either sees the
invalidation in step 4 or wrote its entries early enough for the invalidation to delete them.

Pattern deletion, `keys_matching` and `info` visit every primary: SCAN runs node by node.

The compound operations are written once, as plans (generators that yield one step of commands
and receive its replies), run by a blocking driver and by an asyncio driver.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Generator, Sequence
from typing import Any

import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry as SyncRetry

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    Fill,
    Indexed,
    check_fill_ttl,
    is_epoch,
)
from .cluster_plans import (
    _STORE_KEYS,
    CLUSTER_SCHEMES,
    OUTAGE_SETTLE,
    Plan,
    Step,
    T,
    _cluster_kwargs,
    _epochs_to_move,
    _is_reply,
    _one_retry,
    _scan_reply,
    _single,
    _steps,
    _unlink_plan,
    acquire_plan,
    cluster_parts,
    delete_index_plan,
    delete_plan,
    peek_plan,
    set_indexed_plan,
    sizes_plan,
    stats_plan,
    store_plan,
)
from .health import CircuitBreaker
from .redis_async import AsyncRedisStore
from .redis_sync import RedisStore

__all__ = [
    "CLUSTER_SCHEMES",
    "AsyncRedisClusterStore",
    "RedisClusterStore",
    "cluster_parts",
]


class _OnCluster:
    """What both cluster stores change in their single-server store (module docstring)."""

    MERGES_LOOKUP = False  # the entry and its lease live on different slots
    LEAN_CONNECTION = False  # the lean connections speak to one server
    OUTAGE_SETTLE = OUTAGE_SETTLE  # one primary down leaves the others answering

    url: str
    timeout: float
    breaker: CircuitBreaker
    client: Any
    _kwargs: dict[str, Any]

    @functools.cached_property
    def node_breakers(self) -> dict[str, CircuitBreaker]:
        """The primaries' breakers, by node name, each made on the first read of its keys."""
        return {}

    def _breaker_for(self, key: str) -> CircuitBreaker:
        """The breaker of the primary that owns `key`'s slot, made on first use with the store's
        settings. A primary down then opens its own breaker only: reads of its keys fail fast
        while the failover runs (instead of each paying a connection attempt, `redis_timeout`
        when the host is gone), and the other primaries' keys are served all the while. Before
        the client knows the slot map (its first command), and for anything but a single-key
        read, the store's breaker."""
        try:
            name = str(self.client.get_node_from_key(key).name)
        except Exception:
            return self.breaker
        breakers = self.node_breakers
        found = breakers.get(name)
        if found is None:
            shared = self.breaker
            found = breakers.setdefault(
                name,
                CircuitBreaker(
                    f"{shared.name} primary {name}",
                    shared.failures,
                    shared.cooldown,
                    clock=shared._clock,
                ),
            )
        return found

    def _pipeline(self, step: Step) -> Any:
        """A pipeline with the step's commands queued (redis-py sends each node its share)."""
        pipe = self.client.pipeline()
        for command in step:
            pipe.execute_command(*command)
        return pipe

    def _client_options(self, retry_cls: Any) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """The seed nodes and the RedisCluster options, of the URL and the store's settings."""
        nodes, url_kwargs = cluster_parts(self.url)
        extra = {k: v for k, v in self._kwargs.items() if k not in _STORE_KEYS}
        return nodes, _cluster_kwargs(self.timeout, url_kwargs, extra, _one_retry(retry_cls))


# -- the blocking store ------------------------------------------------------------------------


class RedisClusterStore(_OnCluster, RedisStore):
    """RedisStore on a Redis Cluster (see the module docstring for the multi-key operations)."""

    def _new_client(self) -> Any:
        nodes, options = self._client_options(SyncRetry)
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in nodes
            ],
            **options,
        )

    def _step(self, step: Step) -> list[Any]:
        client = self.client
        if len(step) == 1:
            try:
                return [client.execute_command(*step[0])]
            except Exception as exc:  # handed to the plan, which raises what it must
                if _is_reply(exc):
                    return [exc]
                raise
        return list(self._pipeline(step).execute(raise_on_error=False))

    def _drive(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                step = plan.send(self._step(step))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _scan(self, pattern: str) -> Generator[bytes, None, None]:
        """SCAN every primary in turn (the slot map of this moment)."""
        client = self.client
        for node in client.get_primaries():
            cursor = 0
            while True:
                reply = client.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH, target_nodes=node
                )
                cursor, keys = _scan_reply(reply)
                yield from keys
                if cursor == 0:
                    break

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return self._run(lambda: self._drive(delete_plan(keys)))

    def delete_matching(self, pattern: str) -> int:
        def op() -> int:
            registry = self.client.smembers(EPOCH_REGISTRY)
            epochs = _epochs_to_move(pattern, registry)
            self._drive(_steps([[("INCR", epoch) for epoch in epochs]]))
            deleted = 0
            batch: list[bytes] = []
            for key in self._scan(pattern):
                if is_epoch(key.decode("utf-8", "surrogateescape")):
                    continue
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    deleted += self._drive(_unlink_plan(batch))
                    batch = []
            if batch:
                deleted += self._drive(_unlink_plan(batch))
            return deleted

        return self._run(op)

    def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        check_fill_ttl(ttl_ms)
        return self._run(lambda: self._drive(acquire_plan(lock_key, token, ttl_ms, index_key)))

    def store_fill(self, fill: Fill) -> bool:
        return self._run(lambda: self._drive(store_plan(fill)))

    def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        return self._run(lambda: self._drive(peek_plan(key, lock_key)))

    def set_indexed(self, entry: Indexed) -> None:
        self._run(lambda: self._drive(set_indexed_plan(entry)))

    def delete_index(self, index_key: str) -> int:
        return self._run(lambda: self._drive(delete_index_plan(index_key)))

    def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        self._run(lambda: self._drive(stats_plan(hash_key, deltas, ttl)))


# -- the asyncio store -------------------------------------------------------------------------


class AsyncRedisClusterStore(_OnCluster, AsyncRedisStore):
    """AsyncRedisStore on a Redis Cluster (see the module docstring)."""

    def _new_client(self) -> Any:
        nodes, options = self._client_options(AsyncRetry)
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in nodes],
            **options,
        )

    async def _step(self, step: Step) -> list[Any]:
        client: Any = self.client
        if len(step) == 1:
            try:
                return [await client.execute_command(*step[0])]
            except Exception as exc:
                if _is_reply(exc):
                    return [exc]
                raise
        return list(await self._pipeline(step).execute(raise_on_error=False))

    async def _drive(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                step = plan.send(await self._step(step))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _primaries(self) -> list[Any]:
        """The primaries, once the client knows them: redis.asyncio's RedisCluster learns the
        topology on its first command, and before that lists none (a SCAN or INFO over "every
        primary" as the first call would then see nothing at all)."""
        client: Any = self.client
        await client.initialize()
        return list(client.get_primaries())

    async def _scan_keys(self, pattern: str, limit: int | None = None) -> list[bytes]:
        client: Any = self.client
        found: list[bytes] = []
        for node in await self._primaries():
            cursor = 0
            while True:
                reply = await client.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH, target_nodes=node
                )
                cursor, keys = _scan_reply(reply)
                found.extend(keys)
                if (limit is not None and len(found) >= limit) or cursor == 0:
                    break
            if limit is not None and len(found) >= limit:
                break
        return found

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return await self._run(lambda: self._drive(delete_plan(keys)))

    async def delete_matching(self, pattern: str) -> int:
        async def op() -> int:
            client: Any = self.client
            epochs = _epochs_to_move(pattern, await client.smembers(EPOCH_REGISTRY))
            await self._drive(_steps([[("INCR", epoch) for epoch in epochs]]))
            deleted = 0
            for node in await self._primaries():  # node by node: a batch at a time, unlinked
                cursor = 0
                while True:
                    reply = await client.execute_command(
                        "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH, target_nodes=node
                    )
                    cursor, keys = _scan_reply(reply)
                    doomed = [k for k in keys if not is_epoch(k.decode("utf-8", "surrogateescape"))]
                    if doomed:
                        deleted += await self._drive(_unlink_plan(doomed))
                    if cursor == 0:
                        break
            return deleted

        return await self._run(op)

    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        check_fill_ttl(ttl_ms)
        return await self._run(
            lambda: self._drive(acquire_plan(lock_key, token, ttl_ms, index_key))
        )

    async def store_fill(self, fill: Fill) -> bool:
        return await self._run(lambda: self._drive(store_plan(fill)))

    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        return await self._run(lambda: self._drive(peek_plan(key, lock_key)))

    async def set_indexed(self, entry: Indexed) -> None:
        await self._run(lambda: self._drive(set_indexed_plan(entry)))

    async def delete_index(self, index_key: str) -> int:
        return await self._run(lambda: self._drive(delete_index_plan(index_key)))

    async def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]:
        async def op() -> list[str]:
            keys = await self._scan_keys(pattern, limit)
            found = [k.decode("utf-8", "surrogateescape") for k in keys]
            found = [k for k in found if k != EPOCH_KEY]
            return found if limit is None else found[:limit]

        return await self._run(op)

    async def sizes(self, keys: Sequence[str]) -> list[int | None]:
        return await self._run(lambda: self._drive(sizes_plan(keys)))

    async def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        await self._run(lambda: self._drive(stats_plan(hash_key, deltas, ttl)))

    async def info(self) -> dict[str, Any]:
        """Figures summed over the primaries (each primary holds its share of the keys)."""

        async def op() -> dict[str, Any]:
            client: Any = self.client
            per_node = await asyncio.gather(
                *(client.execute_command("INFO", target_nodes=n) for n in await self._primaries())
            )
            facts = [_single(reply) for reply in per_node]
            used = sum(int(f.get("used_memory") or 0) for f in facts)
            maxmemory = sum(int(f.get("maxmemory") or 0) for f in facts)
            return {
                "type": "redis-cluster",
                "redis_version": facts[0].get("redis_version") if facts else None,
                "used_memory": used,
                "used_memory_human": f"{used / (1 << 20):.2f}M",
                "maxmemory": maxmemory,
                "primaries": len(facts),
                "breaker": self.breaker.state,
            }

        return await self._run(op)
