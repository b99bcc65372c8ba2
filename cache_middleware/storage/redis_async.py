"""The Redis store for asyncio (ASGI middleware, async cache manager).

Short timeouts and no redis-py retries: a slow or dead Redis must cost a request a bounded few
milliseconds, then the caller fails open. redis.asyncio connections belong to the event loop
that opened them, so the client is rebuilt when it is used from another loop (test clients and
some servers start a loop per thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import SCAN_BATCH
from .health import FOREIGN_ERRORS, OutageMonitor

__all__ = ["AsyncRedisStore"]


class AsyncRedisStore:
    def __init__(self, url: str, *, timeout: float = 0.1, **redis_kwargs: Any) -> None:
        self.url = url
        self.timeout = timeout
        self.monitor = OutageMonitor(_safe_url(url))
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **redis_kwargs,
        }
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = self._new_client()
            self._loop = loop
        return self._client

    def _new_client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url, **self._kwargs)

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self.client.get(key)  # type: ignore[assignment]
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return value

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        try:
            await self.client.set(key, value, ex=ttl)
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        try:
            count = int(await self.client.unlink(*keys))
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return count

    async def delete_matching(self, pattern: str) -> int:
        """SCAN + UNLINK in batches, never KEYS: Redis stays responsive on a large keyspace."""
        deleted = 0
        batch: list[bytes] = []
        try:
            client = self.client
            async for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    deleted += int(await client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(await client.unlink(*batch))
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return deleted

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return True

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a client whose loop is gone can raise anything: nothing is left to release.
            with contextlib.suppress(Exception):
                await client.aclose()


def _safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
