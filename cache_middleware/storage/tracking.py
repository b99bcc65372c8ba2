"""Keeps a near-cache coherent: Redis reports every key under the cache's prefix that changes.

One connection per process and cache, in a daemon thread, speaking RESP2:

    CLIENT ID                                         -> n
    CLIENT TRACKING ON REDIRECT n BCAST PREFIX {prefix}:
    SUBSCRIBE __redis__:invalidate

Broadcasting mode (BCAST) reports every write, deletion, expiry and eviction of a key under the
prefix, whoever did it (another process, a Lua script, an admin, `redis-cli`), without Redis
remembering which keys we read; a FLUSHDB/FLUSHALL arrives as a null message and empties the
near-cache. Redirecting the tracking to the very connection that subscribes means tracking and
stream live and die together: when the connection breaks, nothing more can be reported, so the
near-cache is emptied and bypassed (`NearCache.set_live(False)`) until a new connection has
subscribed again.

A quiet stream is checked with a PING every `HEALTH_INTERVAL` seconds; a PING not answered within
`timeout` counts as a broken connection. So a copy outlives its invalidation by at most the time a
push takes to arrive (well under a millisecond on loopback), or, if the connection hangs silently,
`HEALTH_INTERVAL + timeout` seconds; and never `max_age`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis

from ..config import Settings
from ..errors import ConfigError
from .base import AsyncStore, SyncStore
from .near import NearAsyncStore, NearCache, NearSyncStore

__all__ = [
    "HEALTH_INTERVAL",
    "InvalidationListener",
    "near_cache_for",
    "with_near_cache_async",
    "with_near_cache_sync",
]

logger = logging.getLogger("cache_middleware")

CHANNEL = b"__redis__:invalidate"
HEALTH_INTERVAL = 1.0
# The schemes tracking runs on: one server, one connection.
_SINGLE_SERVER = ("redis://", "rediss://", "unix://")


class InvalidationListener:
    """The daemon thread feeding one `NearCache` with Redis' invalidation pushes."""

    def __init__(
        self,
        url: str,
        prefix: str,
        near: NearCache,
        *,
        timeout: float = 1.0,
        retry_max: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = f"{prefix}:"
        self.near = near
        self.timeout = timeout
        self.retry_max = retry_max
        self.connects = 0
        self.client_id: int | None = None  # the current connection's, as CLIENT ID said
        self.messages = 0
        self._stopping = threading.Event()
        self._live = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cache-middleware-near-cache", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)
        self.near.set_live(False)

    def wait_live(self, timeout: float) -> bool:
        """True once the stream is confirmed (tests, and apps that want L1 from the start)."""
        return self._live.wait(timeout)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        pause = 0.1
        failing = False
        while not self._stopping.is_set():
            client = redis.Redis.from_url(
                self.url,
                protocol=2,  # pushes as pub/sub messages on the subscribed connection
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            try:
                conn: Any = client.connection_pool.get_connection()
                try:
                    self._subscribe(conn)
                    if failing:
                        logger.warning("near-cache: invalidation stream back; copies kept again")
                    failing, pause = False, 0.1
                    self._listen(conn)
                finally:
                    conn.disconnect()
            except Exception as exc:  # a failure of any kind must only turn the L1 off
                self._live.clear()
                self.near.set_live(False)
                if not failing:
                    logger.warning(
                        "near-cache: invalidation stream unavailable (%s): reads go to Redis",
                        exc,
                    )
                failing = True
            finally:
                client.close()
            self._stopping.wait(pause)
            pause = min(pause * 2, self.retry_max)
        self._live.clear()
        self.near.set_live(False)

    def _subscribe(self, conn: Any) -> None:
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self.prefix
        )
        reply = conn.read_response()
        if reply not in (b"OK", "OK"):
            raise redis.RedisError(f"CLIENT TRACKING refused: {reply!r}")
        conn.send_command("SUBSCRIBE", CHANNEL)
        reply = conn.read_response()
        if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
            raise redis.RedisError(f"unexpected SUBSCRIBE reply {reply!r}")
        self.connects += 1
        self.client_id = int(client_id)
        # Only now can nothing be missed: copies may be kept from here on.
        self.near.set_live(True)
        self._live.set()

    def _listen(self, conn: Any) -> None:
        ping_sent: float | None = None
        while not self._stopping.is_set():
            if conn.can_read(timeout=HEALTH_INTERVAL):
                reply = conn.read_response()
                ping_sent = None  # the connection answers
                self._apply(reply)
                continue
            now = time.monotonic()
            if ping_sent is None:
                conn.send_command("PING")
                ping_sent = now
            elif now - ping_sent > self.timeout:
                raise redis.ConnectionError("invalidation stream: PING not answered")

    def _apply(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3 or reply[0] != b"message":
            return  # a PONG, or a subscription confirmation
        self.messages += 1
        keys = reply[2]
        if keys is None:  # FLUSHDB / FLUSHALL, or Redis dropping its tracking table
            self.near.flush()
            return
        self.near.invalidate(
            key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)
            for key in keys
        )


# -- one near-cache per process and cache -------------------------------------------------------

_lock = threading.Lock()
_shared: dict[tuple[int, str, str], tuple[NearCache, InvalidationListener]] = {}


def near_cache_for(settings: Settings) -> tuple[NearCache, InvalidationListener]:
    """This process's near-cache for a cache (Redis URL + key prefix), its listener started.

    Shared by every middleware of the process that caches under the same prefix; the first
    config sets the bounds. Keyed by pid too: a forked worker starts its own thread."""
    assert settings.near_cache is not None and settings.redis_url is not None
    url = settings.redis_url
    if not url.startswith(_SINGLE_SERVER):
        raise ConfigError(
            f"{settings.source}: near_cache: needs a redis://, rediss:// or unix:// URL "
            f"(Sentinel and Cluster are not supported by the near-cache yet), got {url!r}"
        )
    ident = (os.getpid(), url, settings.key_prefix)
    with _lock:
        found = _shared.get(ident)
        if found is None:
            near = NearCache(settings.near_cache.max_bytes, settings.near_cache.max_age)
            listener = InvalidationListener(
                url, settings.key_prefix, near, timeout=max(settings.redis_timeout, 0.5)
            )
            listener.start()
            found = _shared[ident] = (near, listener)
        return found


def with_near_cache_async(store: AsyncStore, settings: Settings) -> AsyncStore:
    """`store` behind this process's near-cache when the config asks for one (on Redis)."""
    if settings.near_cache is None or not settings.uses_redis:
        return store  # the memory store is in process already
    near, _ = near_cache_for(settings)
    return NearAsyncStore(store, near)


def with_near_cache_sync(store: SyncStore, settings: Settings) -> SyncStore:
    if settings.near_cache is None or not settings.uses_redis:
        return store
    near, _ = near_cache_for(settings)
    return NearSyncStore(store, near)
