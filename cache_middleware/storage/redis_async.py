"""The Redis store for asyncio (ASGI middleware, async cache manager).

Its operations are redis_base_async.py's (shared with the blocking store, which is generated
from it); this module adds what only the event loop needs. redis.asyncio connections belong to
the event loop that opened them, so the client and the pipelined connection are rebuilt when the
store is used from another loop (test clients and some servers start a loop per thread). On
plain TCP URLs the HIT path's GET and the fill scripts go through pipelined_get.py's pipelined
connection; the rest through redis-py.

`redis+sentinel://` (and `rediss+sentinel://`) URLs get their client from redis-py's Sentinel:
`master_for(service)` finds the current master through the sentinels and finds it again after a
failover (the connections that were open fail once, as StoreUnavailable). The pipelined GET is
for plain TCP URLs only: on Sentinel every read goes through redis-py. Redis Cluster has stores
of its own (redis_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.sentinel

from .base import EPOCH_KEY, SCAN_BATCH
from .pipelined_get import PipelinedGetter
from .redis_base_async import AsyncRedisBase

# Where these were defined once; tests and older imports still find them here.
from .url_parts import pipelined_params as _pipelined_params  # noqa: F401
from .url_parts import sentinel_kwargs, sentinel_parts

__all__ = ["AsyncRedisStore", "sentinel_parts"]

_EPOCH = EPOCH_KEY.encode()


class AsyncRedisStore(AsyncRedisBase):
    @property
    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._bind(loop)
        assert self._client is not None
        return self._client  # type: ignore[no-any-return]

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fresh connections for a new event loop (the old loop's cannot be used from this one)."""
        if self._getter is not None:
            self._getter.close()
        self._client = self._new_client()
        self._getter = (
            PipelinedGetter(**self._fast_params, slow=self.slow) if self._fast_params else None
        )
        self._loop = loop

    def _new_client(self) -> redis.asyncio.Redis:
        sentinel = sentinel_parts(self.url)
        if sentinel is not None:
            nodes, service, kwargs = sentinel
            # Typed only from redis-py 8: Any keeps mypy clean on every supported release.
            sentinel_cls: Any = redis.asyncio.sentinel.Sentinel
            sentinels = sentinel_cls(nodes, sentinel_kwargs=sentinel_kwargs(self._kwargs, kwargs))
            client: redis.asyncio.Redis = sentinels.master_for(service, **self._kwargs, **kwargs)
            return client
        return redis.asyncio.Redis.from_url(self.url, **self._kwargs)

    async def _recovered(self) -> None:
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):  # housekeeping: never fails the request
                await pool.disconnect(inuse_connections=False)

    async def aclose(self) -> None:
        if self._getter is not None:
            self._getter.close()
            self._getter = None
        client, self._client = self._client, None
        self._loop = None  # the next call binds anew, the pipelined connection included
        if client is not None:
            # Closing a client whose loop is gone can raise anything: nothing is left to release.
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- housekeeping and figures for the admin sub-app (never on the request path) ------------

    async def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]:
        """Keys matching a glob (SCAN), at most `limit` of them."""

        async def op() -> list[str]:
            found: list[str] = []
            async for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
                if key != _EPOCH:
                    found.append(key.decode("utf-8", "surrogateescape"))
                    if limit is not None and len(found) >= limit:
                        break
            return found

        return await self._run(op)

    async def sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Bytes of each string value (None: absent or not a string), one pipeline per batch."""

        async def op() -> list[int | None]:
            out: list[int | None] = []
            for start in range(0, len(keys), SCAN_BATCH):
                pipe = self.client.pipeline(transaction=False)
                chunk = keys[start : start + SCAN_BATCH]
                for key in chunk:
                    pipe.type(key)
                    pipe.strlen(key)
                replies = await pipe.execute(raise_on_error=False)
                for kind, size in zip(replies[0::2], replies[1::2], strict=True):
                    out.append(int(size) if kind in (b"string", "string") else None)
            return out

        return await self._run(op)

    async def index_members(self, index_key: str) -> list[str]:
        members: set[bytes] = await self._run(lambda: self.client.smembers(index_key))  # type: ignore[arg-type,return-value]
        return sorted(m.decode("utf-8", "surrogateescape") for m in members)

    async def prune_index(self, index_key: str, members: Sequence[str]) -> int:
        if not members:
            return 0
        return int(await self._run(lambda: self.client.srem(index_key, *members)))

    async def exists(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self._run(lambda: self.client.exists(*keys)))

    async def read_stats(self, hash_key: str) -> dict[str, int]:
        raw: dict[bytes, bytes] = await self._run(lambda: self.client.hgetall(hash_key))  # type: ignore[arg-type,return-value]
        return {k.decode(): int(v) for k, v in raw.items()}

    async def info(self) -> dict[str, Any]:
        facts = await self._run(lambda: self.client.info())
        return {
            "type": "redis",
            "redis_version": facts.get("redis_version"),
            "used_memory": facts.get("used_memory"),
            "used_memory_human": facts.get("used_memory_human"),
            "maxmemory": facts.get("maxmemory"),
            "breaker": self.breaker.state,
        }
