"""Storage backends: bytes in, bytes out.

Every backend honours the same contract (tests/test_storage_contract.py runs one suite over all):
`get(key) -> bytes | None`, `set(key, value, ttl)`, `delete(*keys) -> int`,
`delete_matching(pattern) -> int` (Redis glob; SCAN + UNLINK in batches, never KEYS),
`ping()`, plus the invalidation epoch, fill leases and indexes described in base.py.
Failures to reach the backend raise `StoreUnavailable`, and so does any other exception
raised while building or using a Redis client; callers decide whether to fail open.
The Redis stores fail fast through a circuit breaker while Redis is down (health.py). Async
backends mirror the sync ones method for method. Sentinel URLs use the Redis stores on the
master Sentinel names; Cluster URLs use redis_cluster.py (docs/deployment.md).
"""

from __future__ import annotations

from .base import AsyncStore, SyncStore
from .factory import make_async_store, make_sync_store
from .memory import AsyncMemoryStore, MemoryStore

__all__ = [
    "AsyncMemoryStore",
    "AsyncStore",
    "MemoryStore",
    "SyncStore",
    "make_async_store",
    "make_sync_store",
]
