"""The Redis store for asyncio (ASGI middleware, async cache manager).

Short timeouts and no redis-py retry storms: a slow or dead Redis must cost a request a bounded few
milliseconds, then the caller fails open. redis.asyncio connections belong to the event loop
that opened them, so the client is rebuilt when it is used from another loop (test clients and
some servers start a loop per thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import SCAN_BATCH
from .health import FOREIGN_ERRORS, RETRIES, RETRY_ERRORS, OutageMonitor, is_wrong_type
from .pipelined_get import PipelinedGetter

__all__ = ["AsyncRedisStore"]


class AsyncRedisStore:
    def __init__(
        self, url: str, *, timeout: float = 0.1, fast_get: bool = True, **redis_kwargs: Any
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.monitor = OutageMonitor(_safe_url(url))
        # Plain TCP URLs read through the pipelined GET (the HIT path); the rest use redis-py.
        self._fast_params = _pipelined_params(url, timeout) if fast_get else None
        self._getter: PipelinedGetter | None = None
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS),
            "health_check_interval": 0,
            **redis_kwargs,
        }
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._bind(loop)
        assert self._client is not None
        return self._client

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fresh connections for a new event loop (the old loop's cannot be used from this one)."""
        if self._getter is not None:
            self._getter.close()
        self._client = self._new_client()
        self._getter = PipelinedGetter(**self._fast_params) if self._fast_params else None
        self._loop = loop

    def _new_client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url, **self._kwargs)

    async def get(self, key: str) -> bytes | None:
        try:
            if self._loop is not asyncio.get_running_loop():
                self._bind(asyncio.get_running_loop())
            if self._getter is not None:
                value = await self._getter.get(key.encode())
            else:
                value = await self.client.get(key)  # type: ignore[assignment]
        except FOREIGN_ERRORS as exc:
            if is_wrong_type(exc):
                return b""  # not an entry: the caller reads it as corrupt, deletes it, MISSes
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
        if self._getter is not None:
            self._getter.close()
            self._getter = None
        client, self._client = self._client, None
        if client is not None:
            # Closing a client whose loop is gone can raise anything: nothing is left to release.
            with contextlib.suppress(Exception):
                await client.aclose()


def _pipelined_params(url: str, timeout: float) -> dict[str, Any] | None:
    """Connection facts for the pipelined GET, or None when the URL needs redis-py (TLS,
    unix sockets, extra options)."""
    try:
        params = parse_url(url)
    except ValueError:
        return None
    if set(params) - {"host", "port", "db", "username", "password"}:
        return None
    return {
        "host": params.get("host", "localhost"),
        "port": int(params.get("port", 6379)),
        "db": int(params.get("db", 0)),
        "username": params.get("username"),
        "password": params.get("password"),
        "timeout": timeout,
    }


def _safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
