"""The near-cache (L1): entry bytes kept in process, in front of Redis.

A HIT served from here costs no round trip at all. Coherence across processes comes from Redis
itself (tracking.py): Redis pushes the name of every key under the cache's prefix that changes,
is deleted or expires, by anyone (another process, the admin app, a Lua script, `redis-cli`), and
the copy is dropped. The rules that make that safe:

- A copy is kept only while the invalidation stream is live. Until it is confirmed, and from the
  moment it fails, the near-cache is empty and every read goes to Redis.
- A read from Redis is offered to the near-cache only if no invalidation of its key (nor a flush)
  arrived between the moment the read was sent and the moment it is offered: the push for a
  write that followed our read may overtake the read's reply, since it comes on another socket.
- Every copy is younger than `max_age` seconds, whatever the stream says: a bound that holds
  even if a push were lost.
- This process's own deletions drop matching copies at once, before the call returns (the push
  arrives a little later): a client that reads after its own write never sees the old entry.

Bounded in bytes (the oldest copies go first). Thread-safe: the listener thread and the request
path share it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from .._core.entry import HeldEntry
from .._core.globs import compile_glob

# The stores that read through a NearCache, defined beside it once; found here as before.
from .near_store_async import NearAsyncStore
from .near_store_sync import NearSyncStore

__all__ = ["NearAsyncStore", "NearCache", "NearSyncStore"]

# What one copy costs beyond its bytes (the key, the tuple, the dict slot), for the bound.
_OVERHEAD = 120


def _cost(key: str, value: bytes) -> int:
    """Memory a copy takes: the stored bytes and, once served, their decoded form (which holds
    a copy of the body), so twice the value."""
    return 2 * len(value) + len(key) + _OVERHEAD


class NearCache:
    def __init__(
        self,
        max_bytes: int,
        max_age: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (value, stored at): oldest first
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        # key -> token of the read under way: an invalidation in between withdraws it
        self._pending: dict[str, object] = {}
        self._live = False
        self.hits = 0
        self.invalidations = 0
        self.flushes = 0

    # -- the request path ------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        # Without the lock: one dict read is atomic, and a HIT must not contend with the
        # listener thread. The price: eviction goes by age of the copy, not by last use.
        item = self._data.get(key)
        if item is None:
            return None
        if self._clock() - item[1] >= self.max_age:
            with self._lock:
                if self._data.get(key) is item:
                    self._drop(key)
            return None
        self.hits += 1  # a figure, not an invariant: a lost increment under a race is fine
        return item[0]

    def begin(self, key: str) -> object | None:
        """Before a read from Redis: a token for `offer`, or None when copies are not kept."""
        if not self._live:
            return None
        token = object()
        with self._lock:
            self._pending[key] = token
        return token

    def offer(self, key: str, value: bytes | None, token: object | None) -> None:
        """After the read: keep the value if nothing invalidated the key meanwhile."""
        if token is None:
            return
        with self._lock:
            if self._pending.get(key) is not token:
                return  # invalidated (or flushed) while the read was in flight
            del self._pending[key]
            if value is None or not self._live:
                return
            size = _cost(key, value)
            if size > self.max_bytes:
                return
            self._drop(key)
            self._data[key] = (HeldEntry(value), self._clock())
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    def abandon(self, key: str, token: object | None) -> None:
        """The read failed: forget its token."""
        if token is None:
            return
        with self._lock:
            if self._pending.get(key) is token:
                del self._pending[key]

    # -- invalidation ----------------------------------------------------------------------------

    def invalidate(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
                if key in self._data:
                    self._drop(key)
                    self.invalidations += 1

    def invalidate_matching(self, pattern: str) -> None:
        """Drop the copies a Redis glob matches (exact, byte for byte)."""
        match = compile_glob(pattern).match
        with self._lock:
            for key in [k for k in self._pending if match(k)]:
                del self._pending[key]
            for key in [k for k in self._data if match(k)]:
                self._drop(key)
                self.invalidations += 1

    def flush(self) -> None:
        """Drop everything, reads in flight included."""
        with self._lock:
            self._data.clear()
            self._pending.clear()
            self._bytes = 0
            self.flushes += 1

    def after_fork(self) -> None:
        """In a forked child: nothing inherited can be trusted, and no one listens yet."""
        self._lock = threading.Lock()
        self._live = False
        self._data.clear()
        self._pending.clear()
        self._bytes = 0

    def set_live(self, live: bool) -> None:
        """The invalidation stream is (or is no longer) confirmed. Either way nothing kept
        before can be trusted: the stream may have missed changes while it was down."""
        with self._lock:
            self._live = live
            self._data.clear()
            self._pending.clear()
            self._bytes = 0

    @property
    def live(self) -> bool:
        return self._live

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {
                "live": self._live,
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_age": self.max_age,
                "hits": self.hits,
                "invalidations": self.invalidations,
                "flushes": self.flushes,
            }

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self._bytes -= _cost(key, item[0])
