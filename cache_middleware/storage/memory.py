"""The embedded store: process memory, bounded in bytes, least-recently-used eviction.

Used when no Redis is configured. Thread-safe (WSGI servers run many threads); the async
variant calls straight through, since nothing here blocks on I/O.

The contract's compound operations (storage/base.py) hold the store's lock throughout, which makes
them as atomic as the Redis stores' Lua scripts. Fill leases are ordinary entries holding the
filler's token (as in Redis: `get(lock_key)` sees the token, deletions remove it); index sets
live beside the entries and do not count against `max_bytes`, but are pruned of members whose
entries are gone, so an index never grows past about twice its live members.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .._core.globs import compile_glob
from .base import (
    EPOCH_KEY,
    Fill,
    Indexed,
    cache_epoch,
    check_fill_ttl,
    fill_epoch,
    is_epoch,
    key_epochs,
    literal_head,
)

__all__ = ["AsyncMemoryStore", "MemoryStore"]

# Rough per-entry bookkeeping cost, so that many tiny entries still count against the budget.
_OVERHEAD = 100
# Prune an index of members whose entries are gone once it reaches this size (then twice the
# size it was pruned to); sweep expired indexes on the same doubling schedule.
_PRUNE_MIN = 1024
_SWEEP_MIN = 64


class _Index:
    __slots__ = ("expires_at", "members", "prune_at")

    def __init__(self, expires_at: float) -> None:
        self.members: set[str] = set()
        self.expires_at = expires_at
        self.prune_at = _PRUNE_MIN


class MemoryStore:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._indexes: dict[str, _Index] = {}
        self._sweep_at = _SWEEP_MIN
        self._epochs: dict[str, int] = {EPOCH_KEY: 0}  # per cache, and the store-wide one
        self._stats: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + _OVERHEAD

    # -- helpers; the caller holds the lock ---------------------------------------------------

    def _drop(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= self._size(key, item[0])
        return True

    def _live(self, key: str, now: float) -> bytes | None:
        """The value, or None when absent or expired (reaping it); no LRU touch."""
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= now:
            self._drop(key)
            return None
        return item[0]

    def _read(self, key: str, now: float) -> bytes | None:
        """A read, as GET: the entry becomes the most recently used."""
        value = self._live(key, now)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes, expires_at: float) -> None:
        size = self._size(key, value)
        self._drop(key)
        self._indexes.pop(key, None)  # as SET, which replaces a key of any type
        if size > self.max_bytes:
            return  # could never fit; storing it would only evict everything else
        self._data[key] = (value, expires_at)
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._drop(oldest)

    def _live_index(self, key: str, now: float) -> _Index | None:
        index = self._indexes.get(key)
        if index is not None and index.expires_at <= now:
            del self._indexes[key]
            return None
        return index

    def _remove(self, key: str, now: float) -> bool:
        """What UNLINK does: remove a key of any type; True if it was live."""
        if key == EPOCH_KEY:
            return False
        removed = self._live(key, now) is not None
        if removed:
            self._drop(key)
        if self._live_index(key, now) is not None:
            del self._indexes[key]
            removed = True
        return removed

    def _index_add(self, index_key: str, keys: list[str], ttl: int, now: float) -> None:
        expires_at = now + ttl
        index = self._live_index(index_key, now)
        if index is None:
            if len(self._indexes) >= self._sweep_at:
                for name in [n for n, i in self._indexes.items() if i.expires_at <= now]:
                    del self._indexes[name]
                self._sweep_at = max(_SWEEP_MIN, 2 * len(self._indexes))
            index = self._indexes[index_key] = _Index(expires_at)
        elif expires_at > index.expires_at:
            index.expires_at = expires_at  # extend, never shorten: as EXPIRE NX then GT
        index.members.update(keys)
        if len(index.members) >= index.prune_at:
            index.members = {key for key in index.members if key in self._data}
            index.prune_at = max(_PRUNE_MIN, 2 * len(index.members))

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._read(key, time.monotonic())

    def local_get(self, key: str) -> bytes | None:
        """`get`: the entries are in this process (see storage/base.py)."""
        return self.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        with self._lock:
            self._put(key, value, time.monotonic() + ttl)

    def _bump(self, epochs: list[str]) -> None:
        for epoch in epochs:
            self._epochs[epoch] = self._epochs.get(epoch, 0) + 1

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0  # nothing named, nothing invalidated (the Redis stores send nothing)
        with self._lock:
            now = time.monotonic()
            targets = [key for key in keys if not is_epoch(key)]
            self._bump(key_epochs(targets))
            return sum(self._remove(key, now) for key in targets)

    def forget(self, key: str) -> None:
        """Drop one unreadable value: housekeeping, not an invalidation (the epoch stays)."""
        with self._lock:
            self._remove(key, time.monotonic())

    def delete_matching(self, pattern: str) -> int:
        regex = compile_glob(pattern)
        with self._lock:
            now = time.monotonic()
            scoped = cache_epoch(literal_head(pattern))
            self._bump([EPOCH_KEY, scoped] if scoped is not None else list(self._epochs))
            doomed = [k for k, (_, exp) in self._data.items() if exp > now and regex.match(k)]
            doomed += [k for k, i in self._indexes.items() if i.expires_at > now and regex.match(k)]
            return sum(self._remove(key, now) for key in doomed)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None

    def epoch(self) -> int:
        with self._lock:
            return self._epochs[EPOCH_KEY]

    def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        check_fill_ttl(ttl_ms)
        with self._lock:
            now = time.monotonic()
            if self._live(lock_key, now) is not None or self._live_index(lock_key, now) is not None:
                return None
            self._put(lock_key, token.encode(), now + ttl_ms / 1000)
            if index_key is not None:
                # Deleting the index (an unsafe method on the path) takes the lease away too.
                self._index_add(index_key, [lock_key], max(1, -(-ttl_ms // 1000)), now)
            return self._epochs.setdefault(fill_epoch(lock_key), 0)

    def store_fill(self, fill: Fill) -> bool:
        lock_key, writes = fill.lock_key, fill.writes
        with self._lock:
            now = time.monotonic()
            if self._live(lock_key, now) != fill.token.encode():
                return False  # the lease expired (and may be someone else's now): not ours
            if self._epochs.get(fill_epoch(lock_key), 0) != fill.epoch:
                self._drop(lock_key)  # invalidated since acquire_fill: the value may be stale
                return False
            for key, value, ttl in writes:
                self._put(key, value, now + ttl)
            if writes:
                for index in fill.index_keys:
                    self._index_add(index, [key for key, _, _ in writes], fill.index_ttl, now)
            for index in fill.index_keys:
                live = self._live_index(index, now)
                if live is not None:
                    live.members.discard(lock_key)  # the lease leaves the index with the lock
            self._drop(lock_key)
            return True

    def release_fill(self, lock_key: str, token: str) -> None:
        with self._lock:
            if self._live(lock_key, time.monotonic()) == token.encode():
                self._drop(lock_key)

    def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        with self._lock:
            now = time.monotonic()
            return self._read(key, now), self._live(lock_key, now) is not None

    def set_indexed(self, entry: Indexed) -> None:
        with self._lock:
            now = time.monotonic()
            self._put(entry.key, entry.value, now + entry.ttl)
            self._index_add(entry.index_key, [entry.key], entry.index_ttl, now)

    def delete_index(self, index_key: str) -> int:
        with self._lock:
            now = time.monotonic()
            index = self._live_index(index_key, now)
            if index is None:
                return 0
            del self._indexes[index_key]
            return sum(self._remove(key, now) for key in index.members)

    # -- introspection (tests and stats) --------------------------------------------------------

    def ttl(self, key: str) -> float | None:
        """Seconds left for `key` (tests and stats), or None when absent."""
        with self._lock:
            item = self._data.get(key)
            return None if item is None else max(0.0, item[1] - time.monotonic())

    def index_ttl(self, index_key: str) -> float | None:
        with self._lock:
            index = self._live_index(index_key, time.monotonic())
            return None if index is None else index.expires_at - time.monotonic()

    def index_members(self, index_key: str) -> frozenset[str] | None:
        with self._lock:
            index = self._live_index(index_key, time.monotonic())
            return None if index is None else frozenset(index.members)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    # -- housekeeping and figures for the admin sub-app (never on the request path) ------------

    def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]:
        matcher = compile_glob(pattern)
        now = time.monotonic()
        with self._lock:
            names = [k for k in list(self._data) if self._live(k, now) is not None]
            names += [k for k in list(self._indexes) if self._live_index(k, now) is not None]
        found = [k for k in names if matcher.match(k)]
        return found if limit is None else found[:limit]

    def sizes(self, keys: Sequence[str]) -> list[int | None]:
        now = time.monotonic()
        with self._lock:
            values = [self._live(key, now) for key in keys]
        return [None if value is None else len(value) for value in values]

    def prune_index(self, index_key: str, members: Sequence[str]) -> int:
        with self._lock:
            index = self._live_index(index_key, time.monotonic())
            if index is None:
                return 0
            gone = index.members & set(members)
            index.members -= gone
            return len(gone)

    def exists(self, keys: Sequence[str]) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(
                self._live(k, now) is not None or self._live_index(k, now) is not None for k in keys
            )

    def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        with self._lock:
            table = self._stats.setdefault(hash_key, {})
            for field_name, delta in deltas.items():
                table[field_name] = table.get(field_name, 0) + delta

    def read_stats(self, hash_key: str) -> dict[str, int]:
        with self._lock:
            return dict(self._stats.get(hash_key, {}))

    def info(self) -> dict[str, Any]:
        return {
            "type": "memory",
            "entries": len(self._data),
            "used_memory": self._bytes,
            "max_bytes": self.max_bytes,
            "breaker": None,
        }


class AsyncMemoryStore:
    """Async face of a `MemoryStore`; two faces may share one store (ASGI app + sync manager)."""

    def __init__(self, store: MemoryStore | None = None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.sync = store if store is not None else MemoryStore(max_bytes)

    async def get(self, key: str) -> bytes | None:
        return self.sync.get(key)

    def local_get(self, key: str) -> bytes | None:
        """`get` without a coroutine: the entries are in this process."""
        return self.sync.get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self.sync.set(key, value, ttl)

    async def delete(self, *keys: str) -> int:
        return self.sync.delete(*keys)

    async def forget(self, key: str) -> None:
        self.sync.forget(key)

    async def delete_matching(self, pattern: str) -> int:
        return self.sync.delete_matching(pattern)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    async def epoch(self) -> int:
        return self.sync.epoch()

    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        return self.sync.acquire_fill(lock_key, token, ttl_ms, index_key)

    async def store_fill(self, fill: Fill) -> bool:
        return self.sync.store_fill(fill)

    async def release_fill(self, lock_key: str, token: str) -> None:
        self.sync.release_fill(lock_key, token)

    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        return self.sync.peek_fill(key, lock_key)

    async def set_indexed(self, entry: Indexed) -> None:
        self.sync.set_indexed(entry)

    async def delete_index(self, index_key: str) -> int:
        return self.sync.delete_index(index_key)

    async def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]:
        return self.sync.keys_matching(pattern, limit)

    async def sizes(self, keys: Sequence[str]) -> list[int | None]:
        return self.sync.sizes(keys)

    async def index_members(self, index_key: str) -> list[str]:
        return sorted(self.sync.index_members(index_key) or ())

    async def prune_index(self, index_key: str, members: Sequence[str]) -> int:
        return self.sync.prune_index(index_key, members)

    async def exists(self, keys: Sequence[str]) -> int:
        return self.sync.exists(keys)

    async def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        self.sync.add_stats(hash_key, deltas, ttl)

    async def read_stats(self, hash_key: str) -> dict[str, int]:
        return self.sync.read_stats(hash_key)

    async def info(self) -> dict[str, Any]:
        return self.sync.info()
