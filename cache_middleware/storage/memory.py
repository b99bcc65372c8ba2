"""The embedded store: process memory, bounded in bytes, least-recently-used eviction.

Used when no Redis is configured. Thread-safe (WSGI servers run many threads); the async
variant calls straight through, since nothing here blocks on I/O.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from .._core.globs import compile_glob

__all__ = ["AsyncMemoryStore", "MemoryStore"]

# Rough per-entry bookkeeping cost, so that many tiny entries still count against the budget.
_OVERHEAD = 100


class MemoryStore:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + _OVERHEAD

    def _drop(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= self._size(key, item[0])
        return True

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[1] <= time.monotonic():
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return item[0]

    def set(self, key: str, value: bytes, ttl: int) -> None:
        size = self._size(key, value)
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:
                return  # could never fit; storing it would only evict everything else
            self._data[key] = (value, time.monotonic() + ttl)
            self._bytes += size
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._data))
                self._drop(oldest)

    def delete(self, *keys: str) -> int:
        with self._lock:
            return sum(self._drop(key) for key in keys)

    def delete_matching(self, pattern: str) -> int:
        regex = compile_glob(pattern)
        now = time.monotonic()
        with self._lock:
            doomed = [k for k, (_, exp) in self._data.items() if exp > now and regex.match(k)]
            for key in doomed:
                self._drop(key)
            return len(doomed)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None

    def ttl(self, key: str) -> float | None:
        """Seconds left for `key` (tests and stats), or None when absent."""
        with self._lock:
            item = self._data.get(key)
            return None if item is None else max(0.0, item[1] - time.monotonic())

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


class AsyncMemoryStore:
    """Async face of a `MemoryStore`; two faces may share one store (ASGI app + sync manager)."""

    def __init__(self, store: MemoryStore | None = None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.sync = store if store is not None else MemoryStore(max_bytes)

    async def get(self, key: str) -> bytes | None:
        return self.sync.get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self.sync.set(key, value, ttl)

    async def delete(self, *keys: str) -> int:
        return self.sync.delete(*keys)

    async def delete_matching(self, pattern: str) -> int:
        return self.sync.delete_matching(pattern)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
