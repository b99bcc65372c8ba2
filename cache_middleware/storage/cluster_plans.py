"""The Redis Cluster stores' compound operations as plans, and the URL and client options.

A plan is a generator that yields one step of single-key commands (one pipeline per step:
redis-py sends each node its share) and receives its replies; redis_cluster.py runs each plan
with a blocking and with an asyncio driver. Why each operation is the sequence it is (an entry,
its lease, indexes and epochs hash to different slots): redis_cluster.py's docstring and
docs/deployment.md#cluster-consistency.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    cache_epoch,
    fill_epoch,
    is_epoch,
    key_epochs,
    literal_head,
)
from .health import RETRIES, RETRY_ERRORS
from .scripts import RELEASE_FILL, peek_result
from .url_parts import host_port, split_credentials

if TYPE_CHECKING:
    from .base import Fill, Indexed

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


def store_plan(fill: Fill) -> Plan[bool]:
    lock_key, token, writes, indexes = fill.lock_key, fill.token, fill.writes, fill.index_keys
    epoch_key = fill_epoch(lock_key)
    expected = _b(fill.epoch)
    held, current = _ok((yield [("GET", lock_key), ("GET", epoch_key)]))
    if held != token.encode():
        return False  # not ours (expired, taken over, deleted by an invalidation)
    if (current or b"0") != expected:
        _ok((yield [_release(lock_key, token)]))
        return False
    keys = [key for key, _, _ in writes]
    if writes:
        _ok((yield [("SET", key, value, "EX", ttl) for key, value, ttl in writes]))
        if indexes:
            step = [cmd for ix in indexes for cmd in _index_add(ix, keys, fill.index_ttl)]
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


def set_indexed_plan(entry: Indexed) -> Plan[None]:
    # The entry first, then its index entry: an index deletion that pops the member finds the
    # entry already there to unlink.
    _ok((yield [("SET", entry.key, entry.value, "EX", entry.ttl)]))
    replies = _ok((yield _index_add(entry.index_key, [entry.key], entry.index_ttl)))
    yield from _prune_plan([entry.index_key], [replies[3]])


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
