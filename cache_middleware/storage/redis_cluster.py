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
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    Write,
    cache_epoch,
    check_fill_ttl,
    check_ttl,
    check_writes,
    fill_epoch,
    index_list,
    is_epoch,
    key_epochs,
    literal_head,
)
from .health import RETRIES, RETRY_ERRORS, CircuitBreaker, OutageMonitor
from .redis_async import AsyncRedisStore
from .redis_sync import RedisStore
from .scripts import RELEASE_FILL, peek_result
from .url_parts import host_port, split_credentials

__all__ = [
    "CLUSTER_SCHEMES",
    "AsyncRedisClusterStore",
    "RedisClusterStore",
    "cluster_parts",
]

T = TypeVar("T")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

# Index pruning (scripts.py does it inside its script): past PRUNE_AT members, a sample of
# PRUNE_SAMPLE is checked and the dead ones removed, here in two extra steps of their own.
PRUNE_AT = 256
PRUNE_SAMPLE = 32

# One primary down leaves the others answering: an outage ends when no operation has failed for
# this long (health.OutageMonitor), so a partial outage is logged once, not at every success.
OUTAGE_SETTLE = 1.0

Command = tuple[Any, ...]
Step = list[Command]
# A plan yields steps (commands sent together, one pipeline) and receives their replies, in
# order; exceptions come back as values and the plan decides (see _ok).
Plan = Generator[Step, list[Any], T]


def cluster_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis+cluster://[user:password@]host:port[,host:port...][/0]` -> (seed nodes, kwargs)."""
    if not url.startswith(CLUSTER_SCHEMES):
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.split("?", 1)[0].partition("/")
    netloc, kwargs = split_credentials(netloc)
    nodes = [host_port(part, 6379) for part in netloc.split(",") if part]
    if not nodes:
        raise ValueError(f"{scheme}:// URLs read {scheme}://host:port[,host:port...]")
    if path.strip("/") not in ("", "0"):
        # A Cluster has database 0 only: a number here would be silently ignored.
        raise ValueError(f"a Redis Cluster has database 0 only, got {path.strip('/')!r}")
    if scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return nodes, kwargs


def _one_retry(retry_cls: Any) -> Any:
    """One retry, after redis-py has refreshed the slot map (a MOVED, a failover): the cluster's
    own default (3 with backoff) would multiply an outage's cost per request. The asyncio client
    gets the asyncio Retry: redis-py 7+ converts a sync one with a UserWarning per client."""
    return retry_cls(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS)


def _cluster_kwargs(
    timeout: float, url_kwargs: dict[str, Any], extra: dict[str, Any], retry: Any
) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        # A cache serves the slots it can reach: a primary down must not stop the others.
        "require_full_coverage": False,
        "health_check_interval": 0,
        **url_kwargs,
        **extra,
    }


# -- plans -------------------------------------------------------------------------------------


def _ok(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


def _b(value: str | int) -> bytes:
    return str(value).encode() if isinstance(value, int) else value.encode()


def _release(lock_key: str, token: str) -> Command:
    return ("EVAL", RELEASE_FILL.source, 1, lock_key, token)


def _index_add(index_key: str, members: Sequence[str], ttl: int) -> Step:
    # NX gives a new set its TTL; GT then only extends it (the index outlives its members).
    return [
        ("SADD", index_key, *members),
        ("EXPIRE", index_key, ttl, "NX"),
        ("EXPIRE", index_key, ttl, "GT"),
        ("SCARD", index_key),
    ]


def _prune_plan(indexes: Sequence[str], sizes: Sequence[Any]) -> Plan[None]:
    big = [ix for ix, size in zip(indexes, sizes, strict=True) if int(size) > PRUNE_AT]
    if not big:
        return
    samples = _ok((yield [("SRANDMEMBER", ix, PRUNE_SAMPLE) for ix in big]))
    checks: list[tuple[str, bytes]] = [
        (ix, m) for ix, ms in zip(big, samples, strict=True) for m in ms
    ]
    if not checks:
        return
    alive = _ok((yield [("EXISTS", m) for _, m in checks]))
    dead = [(ix, m) for (ix, m), n in zip(checks, alive, strict=True) if not n]
    if dead:
        _ok((yield [("SREM", ix, m) for ix, m in dead]))


def _unlink_plan(keys: Sequence[Any]) -> Plan[int]:
    """UNLINK keys one command each (they may sit in any slot), SCAN_BATCH per step."""
    deleted = 0
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), SCAN_BATCH):
        replies = _ok((yield [("UNLINK", key) for key in unique[start : start + SCAN_BATCH]]))
        deleted += sum(int(n) for n in replies)
    return deleted


def delete_plan(keys: Sequence[str]) -> Plan[int]:
    targets = [key for key in keys if not is_epoch(key)]  # a counter never goes back
    # The epochs move first, the keys go after: a fill that checks its epoch after our INCR is
    # refused; one that checked before wrote its entries before we unlink them.
    _ok((yield [("INCR", epoch) for epoch in key_epochs(targets)]))
    if not targets:
        return 0
    return (yield from _unlink_plan(targets))


def acquire_plan(lock_key: str, token: str, ttl_ms: int, index_key: str | None) -> Plan[int | None]:
    (taken,) = _ok((yield [("SET", lock_key, token, "NX", "PX", ttl_ms)]))
    if not taken:
        return None
    epoch_key = fill_epoch(lock_key)
    # The lease joins its path's index (so delete_index takes it away) and the epoch is read,
    # both before this returns: an invalidation during these steps precedes the fill's reading
    # of its data, so missing it is harmless.
    step: Step = [("SADD", EPOCH_REGISTRY, epoch_key)]
    if index_key is not None:
        step += _index_add(index_key, [lock_key], max(1, -(-ttl_ms // 1000)))[:3]
    step.append(("GET", epoch_key))
    replies = _ok((yield step))
    return int(replies[-1] or 0)


def store_plan(
    lock_key: str,
    token: str,
    epoch: int,
    writes: Sequence[Write],
    index_key: str | Sequence[str] | None,
    index_ttl: int,
) -> Plan[bool]:
    epoch_key = fill_epoch(lock_key)
    expected = _b(epoch)
    held, current = _ok((yield [("GET", lock_key), ("GET", epoch_key)]))
    if held != token.encode():
        return False  # not ours (expired, taken over, deleted by an invalidation)
    if (current or b"0") != expected:
        _ok((yield [_release(lock_key, token)]))
        return False
    indexes = index_list(index_key)
    keys = [key for key, _, _ in writes]
    if writes:
        _ok((yield [("SET", key, value, "EX", ttl) for key, value, ttl in writes]))
        if indexes:
            step = [cmd for ix in indexes for cmd in _index_add(ix, keys, index_ttl)]
            replies = _ok((yield step))
            yield from _prune_plan(indexes, replies[3::4])
    step = [_release(lock_key, token), ("GET", epoch_key)]
    step += [("SREM", ix, lock_key) for ix in indexes]  # the lease leaves the path index
    released, current = _ok((yield step))[:2]
    if int(released) and (current or b"0") == expected:
        return True
    # Overtaken between steps 1 and 4 (an invalidation, or the lease lost): what we wrote may be
    # older than that invalidation, so it goes.
    if keys:
        yield from _unlink_plan(keys)
    return False


def set_indexed_plan(
    key: str, value: bytes, ttl: int, index_key: str, index_ttl: int
) -> Plan[None]:
    # The entry first, then its index entry: an index deletion that pops the member finds the
    # entry already there to unlink.
    _ok((yield [("SET", key, value, "EX", ttl)]))
    replies = _ok((yield _index_add(index_key, [key], index_ttl)))
    yield from _prune_plan([index_key], [replies[3]])


def delete_index_plan(index_key: str) -> Plan[int]:
    """Pop the index in place and unlink what it held, a batch per round trip.

    Single Redis renames the index away first; a cluster cannot (the new name would hash
    elsewhere), so members added while it is drained are taken too: over-invalidation, never
    under. Rounds are bounded by the size found at the start, so a busy index cannot keep it
    going for ever."""
    kind, size = _ok((yield [("TYPE", index_key), ("SCARD", index_key)]))
    if kind not in (b"set", "set"):
        return 0
    deleted = 0
    for _ in range(int(size) // SCAN_BATCH + 2):
        (members,) = _ok((yield [("SPOP", index_key, SCAN_BATCH)]))
        targets = [m for m in members if not is_epoch(m.decode("utf-8", "surrogateescape"))]
        if targets:
            deleted += yield from _unlink_plan(targets)
        if len(members) < SCAN_BATCH:
            break
    return deleted


def peek_plan(key: str, lock_key: str) -> Plan[tuple[bytes | None, bool]]:
    value, exists = yield [("GET", key), ("EXISTS", lock_key)]
    return peek_result(value, exists)


def sizes_plan(keys: Sequence[str]) -> Plan[list[int | None]]:
    out: list[int | None] = []
    for start in range(0, len(keys), SCAN_BATCH):
        chunk = keys[start : start + SCAN_BATCH]
        replies = yield [cmd for key in chunk for cmd in (("TYPE", key), ("STRLEN", key))]
        for kind, size in zip(replies[0::2], replies[1::2], strict=True):
            out.append(int(size) if kind in (b"string", "string") else None)
    return out


def stats_plan(hash_key: str, deltas: dict[str, int], ttl: int) -> Plan[None]:
    step: Step = [("HINCRBY", hash_key, name, delta) for name, delta in deltas.items()]
    _ok((yield [*step, ("EXPIRE", hash_key, ttl)]))


def _epochs_to_move(pattern: str, registry: Any) -> list[str]:
    scoped = cache_epoch(literal_head(pattern))
    if scoped is not None:
        return [EPOCH_KEY, scoped]
    members = [m.decode() if isinstance(m, bytes) else m for m in registry]
    return list(dict.fromkeys([EPOCH_KEY, *members]))


def _scan_reply(reply: Any) -> tuple[int, list[bytes]]:
    """A SCAN reply sent to one node: (cursor, keys), whatever shape redis-py gave it."""
    if isinstance(reply, dict):  # {node name: (cursor, keys)} or {node name: cursor}
        reply = next(iter(reply.values()))
    cursor, keys = reply
    if isinstance(cursor, dict):
        cursor = next(iter(cursor.values()))
    return int(cursor), list(keys)


def _node_breaker(store: Any, key: str) -> CircuitBreaker:
    """The breaker of the primary that owns `key`'s slot, made on first use with the store's
    settings. A primary down then opens its own breaker only: reads of its keys fail fast while
    the failover runs (instead of each paying a connection attempt, `redis_timeout` when the host
    is gone), and the other primaries' keys are served all the while. Before the client knows the
    slot map (its first command), and for anything but a single-key read, the store's breaker."""
    try:
        name = str(store.client.get_node_from_key(key).name)
    except Exception:
        return store.breaker  # type: ignore[no-any-return]
    breakers: dict[str, CircuitBreaker] = store.node_breakers
    found = breakers.get(name)
    if found is None:
        shared: CircuitBreaker = store.breaker
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


# -- the blocking store ------------------------------------------------------------------------


class RedisClusterStore(RedisStore):
    """RedisStore on a Redis Cluster (see the module docstring for the multi-key operations)."""

    MERGES_LOOKUP = False  # the entry and its lease live on different slots

    def __init__(self, url: str, *, timeout: float = 0.1, **kwargs: Any) -> None:
        kwargs.pop("fast_get", None)  # the lean GET speaks to one server: off
        super().__init__(url, timeout=timeout, fast_get=False, **kwargs)
        self.monitor = OutageMonitor(self.monitor.name, settle=OUTAGE_SETTLE)
        self.node_breakers: dict[str, CircuitBreaker] = {}

    def _breaker_for(self, key: str) -> CircuitBreaker:
        return _node_breaker(self, key)

    def _new_client(self) -> Any:
        nodes, url_kwargs = cluster_parts(self.url)
        extra = {k: v for k, v in self._kwargs.items() if k not in _STORE_KEYS}
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in nodes
            ],
            **_cluster_kwargs(self.timeout, url_kwargs, extra, _one_retry(SyncRetry)),
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
        pipe = client.pipeline()
        for command in step:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

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

    def store_fill(
        self,
        lock_key: str,
        token: str,
        epoch: int,
        writes: list[Write],
        index_key: str | Sequence[str] | None = None,
        index_ttl: int = 0,
    ) -> bool:
        check_writes(writes, index_key, index_ttl)
        plan = store_plan(lock_key, token, epoch, writes, index_key, index_ttl)
        return self._run(lambda: self._drive(plan))

    def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        return self._run(lambda: self._drive(peek_plan(key, lock_key)))

    def set_indexed(self, key: str, value: bytes, ttl: int, index_key: str, index_ttl: int) -> None:
        check_ttl(ttl)
        check_ttl(index_ttl, "index_ttl")
        self._run(lambda: self._drive(set_indexed_plan(key, value, ttl, index_key, index_ttl)))

    def delete_index(self, index_key: str) -> int:
        return self._run(lambda: self._drive(delete_index_plan(index_key)))

    def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        self._run(lambda: self._drive(stats_plan(hash_key, deltas, ttl)))


# -- the asyncio store -------------------------------------------------------------------------


class AsyncRedisClusterStore(AsyncRedisStore):
    """AsyncRedisStore on a Redis Cluster (see the module docstring)."""

    MERGES_LOOKUP = False  # the entry and its lease live on different slots

    def __init__(self, url: str, *, timeout: float = 0.1, **kwargs: Any) -> None:
        kwargs.pop("fast_get", None)  # the pipelined GET speaks to one server: off
        super().__init__(url, timeout=timeout, fast_get=False, **kwargs)
        self.monitor = OutageMonitor(self.monitor.name, settle=OUTAGE_SETTLE)
        self.node_breakers: dict[str, CircuitBreaker] = {}

    def _breaker_for(self, key: str) -> CircuitBreaker:
        return _node_breaker(self, key)

    def _new_client(self) -> Any:
        nodes, url_kwargs = cluster_parts(self.url)
        extra = {k: v for k, v in self._kwargs.items() if k not in _STORE_KEYS}
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in nodes],
            **_cluster_kwargs(self.timeout, url_kwargs, extra, _one_retry(AsyncRetry)),
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
        pipe = client.pipeline()
        for command in step:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

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

    async def store_fill(
        self,
        lock_key: str,
        token: str,
        epoch: int,
        writes: list[Write],
        index_key: str | Sequence[str] | None = None,
        index_ttl: int = 0,
    ) -> bool:
        check_writes(writes, index_key, index_ttl)
        plan = store_plan(lock_key, token, epoch, writes, index_key, index_ttl)
        return await self._run(lambda: self._drive(plan))

    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        return await self._run(lambda: self._drive(peek_plan(key, lock_key)))

    async def set_indexed(
        self, key: str, value: bytes, ttl: int, index_key: str, index_ttl: int
    ) -> None:
        check_ttl(ttl)
        check_ttl(index_ttl, "index_ttl")
        await self._run(
            lambda: self._drive(set_indexed_plan(key, value, ttl, index_key, index_ttl))
        )

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


# Options of the single-server clients that RedisCluster takes in its own form (or not at all).
_STORE_KEYS = frozenset(
    {"socket_timeout", "socket_connect_timeout", "retry", "health_check_interval"}
)


def _steps(steps: list[Step]) -> Plan[None]:
    for step in steps:
        _ok((yield step))


def _single(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        return dict(next(iter(reply.values())))
    return dict(reply)


def _is_reply(exc: BaseException) -> bool:
    """An error reply from Redis (WRONGTYPE...), handed to the plan like a pipeline's would be."""
    return isinstance(exc, redis.exceptions.ResponseError) and not isinstance(
        exc,
        (redis.exceptions.ClusterError, redis.exceptions.AskError, redis.exceptions.TryAgainError),
    )
