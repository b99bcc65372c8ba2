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


def make_async_store(settings: Settings) -> AsyncStore:
    if settings.uses_redis:
        assert settings.redis_url is not None
        if _is_cluster(settings.redis_url):
            from .redis_cluster import AsyncRedisClusterStore

            return AsyncRedisClusterStore(
                settings.redis_url,
                timeout=settings.redis_timeout,
                breaker_failures=settings.breaker_failures,
                breaker_cooldown=settings.breaker_cooldown,
                slow_after=settings.slow_store_ms / 1000,
            )
        from .redis_async import AsyncRedisStore

        return AsyncRedisStore(
            settings.redis_url,
            timeout=settings.redis_timeout,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown=settings.breaker_cooldown,
            slow_after=settings.slow_store_ms / 1000,
        )
    return AsyncMemoryStore(shared_memory_store(settings))


def make_sync_store(settings: Settings) -> SyncStore:
    if settings.uses_redis:
        assert settings.redis_url is not None
        if _is_cluster(settings.redis_url):
            from .redis_cluster import RedisClusterStore

            return RedisClusterStore(
                settings.redis_url,
                timeout=settings.redis_timeout,
                breaker_failures=settings.breaker_failures,
                breaker_cooldown=settings.breaker_cooldown,
                slow_after=settings.slow_store_ms / 1000,
            )
        from .redis_sync import RedisStore

        return RedisStore(
            settings.redis_url,
            timeout=settings.redis_timeout,
            breaker_failures=settings.breaker_failures,
            breaker_cooldown=settings.breaker_cooldown,
            slow_after=settings.slow_store_ms / 1000,
        )
    return shared_memory_store(settings)
