"""Outage bookkeeping shared by the sync and async Redis stores.

Failing open is a named choice (DESIGN invariant 3): the first failure of an outage is logged as
a warning, the recovery once as info, and everything between is only counted, so a dead Redis
does not flood the logs at request rate.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import redis.exceptions

from ..errors import StoreUnavailable
from .pipelined_get import ReplyError

__all__ = ["FOREIGN_ERRORS", "RETRIES", "RETRY_ERRORS", "OutageMonitor", "is_wrong_type"]

# redis-py's retry policy, shared by both stores: one immediate retry, on a broken connection
# only. That replaces a pooled connection the server dropped (a restart, an idle timeout) at the
# cost of one reconnect, and never repeats a timeout: a slow Redis costs one `redis_timeout`.
RETRIES = 1
RETRY_ERRORS: tuple[type[redis.exceptions.RedisError], ...] = (redis.exceptions.ConnectionError,)

logger = logging.getLogger("cache_middleware.storage")

# What a Redis call can raise when the server is down, slow, full or refusing.
FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    ReplyError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)


def is_wrong_type(exc: BaseException) -> bool:
    """A non-string value sits under the key: foreign data, not an outage."""
    return str(exc).startswith("WRONGTYPE")


class OutageMonitor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Record a failure and return the translated error for the caller to raise."""
        with self._lock:
            self.failures += 1
            first = not self.down
            self.down = True
        if first:
            logger.warning(
                "cache store %s unavailable, serving uncached until it recovers: %s: %s",
                self.name,
                exc.__class__.__name__,
                exc,
            )
        return StoreUnavailable(f"{self.name}: {exc.__class__.__name__}: {exc}")

    def succeeded(self) -> None:
        # Called on every success: one attribute read unless we are recovering.
        if self.down:
            with self._lock:
                if not self.down:
                    return
                self.down = False
            logger.info("cache store %s reachable again", self.name)
