"""The Redis store for threads (WSGI middleware, sync cache manager).

Its operations are redis_base_sync.py's, generated from the async store's (redis_base_async.py):
the same short timeouts, no redis-py retries, the same outage bookkeeping and circuit breaker,
and the same Lua scripts. This module adds what only threads need: on plain TCP URLs the HIT
path's GET and the fill scripts go through direct_get.py's lean blocking sockets, as the async
store's go through pipelined_get.py. Sentinel URLs get a client from redis-py's Sentinel
(`master_for`).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel

from .direct_get import DirectGetter
from .redis_base_sync import RedisBase
from .url_parts import sentinel_kwargs, sentinel_parts

__all__ = ["RedisStore"]


class RedisStore(RedisBase):
    def __init__(self, url: str, *, client: redis.Redis | None = None, **kwargs: Any) -> None:
        """`client`: a redis-py client to use instead of one built from `url` (it may not be the
        server at `url`: fakeredis in tests), so the lean sockets are off."""
        if client is not None:
            kwargs["fast_get"] = False
        super().__init__(url, **kwargs)
        self._client = client
        params = self._fast_params
        self._direct = DirectGetter(**params, slow=self.slow) if params else None

    @property
    def client(self) -> Any:
        """The redis-py client, built on first use: a Cluster client reads the topology when it
        is built, which must fail (open) inside an operation, never in a constructor."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> Any:
        return _new_client(self.url, self._kwargs)

    def _recovered(self) -> None:
        if self._direct is not None:
            self._direct.discard_idle()
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            pool.disconnect(inuse_connections=False)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._direct is not None:
            self._direct.close()


def _new_client(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    sentinel = sentinel_parts(url)
    if sentinel is not None:
        nodes, service, url_kwargs = sentinel
        # Typed only from redis-py 8: Any keeps mypy clean on every supported release.
        sentinel_cls: Any = redis.sentinel.Sentinel
        sentinels = sentinel_cls(nodes, sentinel_kwargs=sentinel_kwargs(kwargs, url_kwargs))
        client: redis.Redis = sentinels.master_for(service, **kwargs, **url_kwargs)
        return client
    return redis.Redis.from_url(url, **kwargs)
