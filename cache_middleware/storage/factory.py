"""Settings -> store.

Memory stores are shared per process and URL (`memory://` or `memory://NAME`), so the ASGI
middleware, the WSGI middleware and the cache manager built from one config see the same
entries. The first config to name a memory store sets its `memory_max_bytes`.

Redis URLs: `redis://`, `rediss://` and `unix://` give the single-server stores;
`redis+sentinel://` (`rediss+sentinel://`) the same stores on the master that Sentinel names
(redis_async.py); `redis+cluster://` (`rediss+cluster://`) the Cluster stores
(redis_cluster.py). docs/deployment.md describes each."""

from __future__ import annotations

import threading
from typing import Any

from ..config import Settings
from .base import AsyncStore, SyncStore
from .memory import AsyncMemoryStore, MemoryStore

__all__ = ["make_async_store", "make_sync_store", "shared_memory_store"]

_memory_stores: dict[str, MemoryStore] = {}
_lock = threading.Lock()


def shared_memory_store(settings: Settings) -> MemoryStore:
    name = settings.redis_url or "memory://"
    with _lock:
        store = _memory_stores.get(name)
        if store is None:
            store = _memory_stores[name] = MemoryStore(settings.memory_max_bytes)
        return store


def _is_cluster(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def _redis_options(settings: Settings) -> dict[str, Any]:
    """What every Redis store, sync or async, single-server or Cluster, takes from the config."""
    return {
        "timeout": settings.redis_timeout,
        "breaker_failures": settings.breaker_failures,
        "breaker_cooldown": settings.breaker_cooldown,
        "slow_after": settings.slow_store_ms / 1000,
    }


def make_async_store(settings: Settings) -> AsyncStore:
    if not settings.uses_redis:
        return AsyncMemoryStore(shared_memory_store(settings))
    assert settings.redis_url is not None
    # Imported here: a memory-only process never loads redis-py, nor a single Redis its Cluster.
    from .redis_async import AsyncRedisStore

    store_cls: type[AsyncRedisStore] = AsyncRedisStore
    if _is_cluster(settings.redis_url):
        from .redis_cluster import AsyncRedisClusterStore

        store_cls = AsyncRedisClusterStore
    return store_cls(settings.redis_url, **_redis_options(settings))


def make_sync_store(settings: Settings) -> SyncStore:
    if not settings.uses_redis:
        return shared_memory_store(settings)
    assert settings.redis_url is not None
    from .redis_sync import RedisStore

    store_cls: type[RedisStore] = RedisStore
    if _is_cluster(settings.redis_url):
        from .redis_cluster import RedisClusterStore

        store_cls = RedisClusterStore
    return store_cls(settings.redis_url, **_redis_options(settings))
