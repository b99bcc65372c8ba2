"""The Redis store for threads (WSGI middleware, sync cache manager).

The blocking twin of redis_async.py, method for method, with the same short timeouts, no
redis-py retries and the same outage bookkeeping.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import SCAN_BATCH
from .health import FOREIGN_ERRORS, RETRIES, RETRY_ERRORS, OutageMonitor, is_wrong_type
from .redis_async import _safe_url

__all__ = ["RedisStore"]


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.1,
        client: redis.Redis | None = None,
        **redis_kwargs: Any,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.monitor = OutageMonitor(_safe_url(url))
        self.client = client or redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS),
            health_check_interval=0,
            **redis_kwargs,
        )

    def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = self.client.get(key)  # type: ignore[assignment]
        except FOREIGN_ERRORS as exc:
            if is_wrong_type(exc):
                return b""  # not an entry: the caller reads it as corrupt, deletes it, MISSes
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return value

    def set(self, key: str, value: bytes, ttl: int) -> None:
        try:
            self.client.set(key, value, ex=ttl)
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        try:
            count = int(self.client.unlink(*keys))
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return count

    def delete_matching(self, pattern: str) -> int:
        """SCAN + UNLINK in batches, never KEYS: Redis stays responsive on a large keyspace."""
        deleted = 0
        batch: list[bytes] = []
        try:
            for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    deleted += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(self.client.unlink(*batch))
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return deleted

    def ping(self) -> bool:
        try:
            self.client.ping()
        except FOREIGN_ERRORS as exc:
            raise self.monitor.failed(exc) from exc
        self.monitor.succeeded()
        return True

    def close(self) -> None:
        self.client.close()
