"""The store contract, as Protocols the adapters and the manager are typed against.

Beyond get/set/delete, every store keeps:

- invalidation epochs: a counter per cache (`{prefix}:EPOCH:%`) that the deletion APIs
  (`delete`, `delete_matching`) increment for the cache they name (every cache's when a glob
  could reach any), even when nothing matched. A fill records its cache's when it takes its
  lease and may only store while it has not moved: a response computed from data read before
  an invalidation is never written after it. `delete_index` does not move it: the fill's lease
  joined the index (`acquire_fill(..., index_key)`), so deleting the index takes exactly that
  path's leases away and leaves fills on other paths alone.
- fill leases (`acquire_fill` / `store_fill` / `release_fill` / `peek_fill`): one process
  computes a missing entry while the others poll for it. A lease is a key holding the filler's
  token, with a TTL in milliseconds so a crashed filler only delays the others. What a fill
  stores, under which lease, is one `Fill` value, checked once when it is made.
- indexes: a set of entry keys under an index key (`set_indexed`, `store_fill`), deleted together
  by `delete_index`. The index lives as long as its longest-lived member.

Redis stores do each compound operation in one Lua script (storage/scripts.py): atomic, one round
trip. The memory store does the same under its lock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

__all__ = [
    "EPOCH_KEY",
    "EPOCH_REGISTRY",
    "SCAN_BATCH",
    "AsyncStore",
    "Fill",
    "Indexed",
    "SyncStore",
    "Write",
    "cache_epoch",
    "check_fill_ttl",
    "check_ttl",
    "fill_epoch",
    "get_then_acquire",
    "get_then_acquire_async",
    "is_epoch",
    "key_epochs",
    "literal_head",
    "with_refusals",
]

# Keys per SCAN page and per UNLINK call: large enough to be quick, small enough not to block Redis.
SCAN_BATCH = 500

# The invalidation epoch's key. No deletion API ever deletes it (even `delete_matching("*")`):
# a counter that fell back to an old value could let a stale fill through.
EPOCH_KEY = "cache-middleware:epoch"
# Every cache (key prefix) has an epoch of its own, `{prefix}:EPOCH:%`, which its fills check:
# an invalidation in one cache never voids another cache's fills. The registry lists them, for
# deletions that cannot tell which caches they reach (a bare `*`).
EPOCH_REGISTRY = "cache-middleware:epochs"
_EPOCH_SUFFIX = ":EPOCH:%"  # no escaped key component ends in a bare `%`
_MARKERS = (":GET:", ":LOCK:", ":IDX:", ":TAG:")
_GLOB = frozenset("*?[\\")


_MARKER = re.compile("|".join(re.escape(marker) for marker in _MARKERS))


def cache_epoch(name: str) -> str | None:
    """The epoch of the cache a key (or a glob's literal head) belongs to, if it says: what
    stands before the first marker, when a marker's first place is not the very start."""
    first = _MARKER.search(name)  # one scan: a MISS asks twice (the lease, then the fill)
    if first is None:
        return None
    if first.start() > 0:
        return name[: first.start()] + _EPOCH_SUFFIX
    found = [at for marker in _MARKERS if (at := name.find(marker)) > 0]
    return name[: min(found)] + _EPOCH_SUFFIX if found else None


def fill_epoch(lock_key: str) -> str:
    """The epoch a fill under `lock_key` checks: its cache's, else the store-wide one."""
    return cache_epoch(lock_key) or EPOCH_KEY


def literal_head(pattern: str) -> str:
    """The part of a glob before its first wildcard."""
    for i, char in enumerate(pattern):
        if char in _GLOB:
            return pattern[:i]
    return pattern


def key_epochs(keys: Sequence[str]) -> list[str]:
    """The epochs a deletion of these keys moves: the store-wide one and each cache's."""
    scoped = {epoch for key in keys if (epoch := cache_epoch(key)) is not None}
    return [EPOCH_KEY, *sorted(scoped)]


def is_epoch(key: str) -> bool:
    return key in (EPOCH_KEY, EPOCH_REGISTRY) or key.endswith(_EPOCH_SUFFIX)


Write = tuple[str, bytes, int]  # (key, value, ttl seconds)


def check_ttl(ttl: int, what: str = "ttl") -> int:
    """Reject a TTL Redis would refuse, before a script could write half its keys."""
    if type(ttl) is not int or ttl <= 0:
        raise ValueError(f"{what} must be a positive integer of seconds, got {ttl!r}")
    return ttl


def check_fill_ttl(ttl_ms: int) -> int:
    if type(ttl_ms) is not int or ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be a positive integer of milliseconds, got {ttl_ms!r}")
    return ttl_ms


class Fill:
    """What `store_fill` writes: the entries (`writes`, each (key, value, ttl seconds)), added
    to each of `index_keys` (kept `index_ttl` seconds), under the lease `lock_key` held with
    `token` since the invalidation epoch `epoch`. Checked when made, so that no store writes
    half of a fill Redis would refuse; not to be changed once made.

    A plain class with slots: one is made on every MISS that stores, and this costs what the
    tuple it replaced and the stores' own check cost together (a frozen dataclass costs five
    times that, every field set through object.__setattr__; a dataclass's __post_init__ is one
    call more)."""

    __slots__ = ("epoch", "index_keys", "index_ttl", "lock_key", "token", "writes")

    def __init__(
        self,
        lock_key: str,
        token: str,
        epoch: int,
        writes: list[Write],
        index_keys: Sequence[str] = (),
        index_ttl: int = 0,
    ) -> None:
        # check_ttl's test, inline: a call per write would cost the MISS more than the rest
        # of this; `_refuse` raises the error with its message.
        for _, value, ttl in writes:
            if type(ttl) is not int or ttl <= 0 or not isinstance(value, bytes):
                _refuse(value, ttl, "ttl")
        if index_keys and (type(index_ttl) is not int or index_ttl <= 0):
            _refuse(b"", index_ttl, "index_ttl")
        if isinstance(index_keys, str):
            raise TypeError(f"index_keys must be a sequence of keys, not the str {index_keys!r}")
        self.lock_key, self.token, self.epoch = lock_key, token, epoch
        self.writes, self.index_keys, self.index_ttl = writes, index_keys, index_ttl


def _refuse(value: object, ttl: int, what: str) -> NoReturn:
    """Raise what a `Fill` with this value or TTL is refused for."""
    check_ttl(ttl, what)
    raise TypeError(f"values must be bytes, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Indexed:
    """What `set_indexed` writes: one entry (`key`, `value`, kept `ttl` seconds), added to the
    index `index_key` (kept at least `index_ttl` seconds). Checked when made, as a `Fill` is."""

    key: str
    value: bytes
    ttl: int
    index_key: str
    index_ttl: int

    def __post_init__(self) -> None:
        check_ttl(self.ttl)
        check_ttl(self.index_ttl, "index_ttl")


class SyncStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl: int) -> None: ...
    def delete(self, *keys: str) -> int: ...
    def delete_matching(self, pattern: str) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...

    def epoch(self) -> int: ...
    def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None: ...
    def store_fill(self, fill: Fill) -> bool: ...
    def release_fill(self, lock_key: str, token: str) -> None: ...
    def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]: ...
    def set_indexed(self, entry: Indexed) -> None: ...
    def delete_index(self, index_key: str) -> int: ...
    def forget(self, key: str) -> None: ...
    def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None: ...


class AsyncStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: int) -> None: ...
    async def delete(self, *keys: str) -> int: ...
    async def delete_matching(self, pattern: str) -> int: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...

    async def epoch(self) -> int: ...
    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None: ...
    async def store_fill(self, fill: Fill) -> bool: ...
    async def release_fill(self, lock_key: str, token: str) -> None: ...
    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]: ...
    async def set_indexed(self, entry: Indexed) -> None: ...
    async def delete_index(self, index_key: str) -> int: ...
    async def forget(self, key: str) -> None: ...
    # Housekeeping and figures for the admin sub-app (never on the request path).
    async def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]: ...
    async def sizes(self, keys: Sequence[str]) -> list[int | None]: ...
    async def index_members(self, index_key: str) -> list[str]: ...
    async def prune_index(self, index_key: str, members: Sequence[str]) -> int: ...
    async def exists(self, keys: Sequence[str]) -> int: ...
    async def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None: ...
    async def read_stats(self, hash_key: str) -> dict[str, int]: ...
    async def info(self) -> dict[str, Any]: ...

    # Optional, not part of the protocol: a store may offer
    #   get_or_acquire(key, lock_key, token, ttl_ms, index_key=None)
    #     -> (value, None) | (None, epoch of the lease taken) | (None, None)
    # doing get() and, when it finds nothing, acquire_fill() in one round trip. The middlewares
    # use it on routes that mostly miss when the store has it (the Redis stores, and the
    # near-cache wrappers around them; the sync SyncStore likewise).
    #
    #   local_get(key) -> bytes | None   (a plain function, not a coroutine)
    #     the value when this process holds it (the memory store, a near-cache), else None:
    #     "not held here", which may still be in Redis, so the caller then asks get(). Both
    #     middlewares answer a plain GET's HIT through it without building the request's plan
    #     (_core/held.py); the ASGI one also reads through it before awaiting anything.


def with_refusals(deltas: dict[str, int], refusals: int) -> dict[str, int]:
    """A stats batch plus the writes a full store refused (the `store_full` counter, shared
    like the others: `_core/stats.py`'s flat `scope|name|field` keys)."""
    key = "total||store_full"
    return {**deltas, key: deltas.get(key, 0) + refusals}


class _SyncLookup(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None: ...


class _AsyncLookup(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None: ...


def get_then_acquire(
    store: _SyncLookup, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None
) -> tuple[bytes | None, int | None]:
    """`get_or_acquire` as two calls, for stores that cannot do it in one round trip."""
    value = store.get(key)
    if value is not None:
        return value, None
    return None, store.acquire_fill(lock_key, token, ttl_ms, index_key)


async def get_then_acquire_async(
    store: _AsyncLookup, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None
) -> tuple[bytes | None, int | None]:
    """`get_then_acquire` for async stores."""
    value = await store.get(key)
    if value is not None:
        return value, None
    return None, await store.acquire_fill(lock_key, token, ttl_ms, index_key)
