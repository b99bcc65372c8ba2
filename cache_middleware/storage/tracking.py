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

import contextlib
import logging
import os
import select
import socket
import threading
import time
from typing import Any

import redis

from ..config import Settings
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
# How often the listener asks Sentinel / the Cluster which servers are the primaries now: a
# failover that leaves our connections open (a demoted master stays up) is noticed this late.
TOPOLOGY_INTERVAL = 2.0
_SENTINEL = ("redis+sentinel://", "rediss+sentinel://")
_CLUSTER = ("redis+cluster://", "rediss+cluster://")


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
        self.client_id: int | None = None  # the last connection's, as CLIENT ID said
        self.client_ids: list[int] = []  # every connection's so far (tests kill them)
        self.messages = 0
        self._stopping = threading.Event()
        self._live = threading.Event()
        # Written by stop(): wakes the thread out of select() at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, name="cache-middleware-near-cache", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
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
            conns: list[Any] = []
            # Held until the end: a client collected early closes its pool, our sockets with it.
            clients: list[redis.Redis] = []
            try:
                clients = _primaries(self.url, self.timeout)
                for client in clients:
                    conn: Any = client.connection_pool.get_connection()
                    conns.append(conn)
                    self._subscribe(conn)
                # Only now can nothing be missed: copies may be kept from here on.
                self.near.set_live(True)
                self._live.set()
                self.connects += 1  # last: whoever sees it sees the stream live
                if failing:
                    logger.warning("near-cache: invalidation stream back; copies kept again")
                failing, pause = False, 0.1
                self._listen(conns)
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
                for conn in conns:
                    with contextlib.suppress(Exception):
                        conn.disconnect()
                for client in clients:
                    with contextlib.suppress(Exception):
                        client.close()
            if self._stopping.is_set():
                break
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
        self.client_ids.append(int(client_id))
        self.client_id = int(client_id)

    def _listen(self, conns: list[Any]) -> None:
        """Apply the pushes of every connection; PING the quiet ones; return (to reconnect
        everything) when the set of primaries changed under us."""
        pinged: dict[int, float] = {}
        heard = {id(conn): time.monotonic() for conn in conns}
        sockets = {conn._sock: conn for conn in conns}
        next_topology = time.monotonic() + TOPOLOGY_INTERVAL
        dynamic = self.url.startswith(_SENTINEL + _CLUSTER)
        while not self._stopping.is_set():
            ready = [conn for conn in conns if conn.can_read(timeout=0)]
            if not ready:
                readable, _, _ = select.select([*sockets, self._wake_r], [], [], HEALTH_INTERVAL)
                ready = [sockets[sock] for sock in readable if sock in sockets]
            now = time.monotonic()
            for conn in ready:
                while conn.can_read(timeout=0):
                    self._apply(conn.read_response())
                heard[id(conn)] = now  # the connection answers
                pinged.pop(id(conn), None)
            for conn in conns:
                if now - heard[id(conn)] < HEALTH_INTERVAL:
                    continue  # heard from lately: alive
                sent = pinged.get(id(conn))
                if sent is None:
                    conn.send_command("PING")
                    pinged[id(conn)] = now
                elif now - sent > self.timeout:
                    raise redis.ConnectionError("invalidation stream: PING not answered")
            if dynamic and now >= next_topology:
                next_topology = now + TOPOLOGY_INTERVAL
                current = sorted(_addresses(_primaries(self.url, self.timeout)))
                if current != sorted(_addresses_of(conns)):
                    raise redis.ConnectionError("the primaries changed: listening anew")

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


def _primaries(url: str, timeout: float) -> list[redis.Redis]:
    """Clients for the servers whose writes must be heard: the server itself, Sentinel's
    current master, or every primary of a Cluster (each reports the keys of its own slots)."""
    options: dict[str, Any] = {
        "protocol": 2,  # pushes as pub/sub messages on the subscribed connection
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if url.startswith(_SENTINEL):
        from redis.sentinel import Sentinel as _Sentinel

        from .redis_async import sentinel_parts

        parts = sentinel_parts(url)
        assert parts is not None
        nodes, service, kwargs = parts
        make: Any = _Sentinel
        sentinel: Any = make(nodes, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            host, port = sentinel.discover_master(service)
        finally:
            for each in sentinel.sentinels:
                each.close()
        return [redis.Redis(host=host, port=port, **kwargs, **options)]
    if url.startswith(_CLUSTER):
        from .redis_cluster import cluster_parts

        seeds, kwargs = cluster_parts(url)
        found = _cluster_primaries(seeds, kwargs, timeout)
        return [redis.Redis(host=host, port=port, **kwargs, **options) for host, port in found]
    return [redis.Redis.from_url(url, **options)]


def _cluster_primaries(
    seeds: list[tuple[str, int]], kwargs: dict[str, Any], timeout: float
) -> list[tuple[str, int]]:
    """The primaries, from the first seed node that answers CLUSTER SLOTS: one short command,
    cheap enough to ask every TOPOLOGY_INTERVAL (a full cluster client costs ~30 ms of CPU)."""
    failure: Exception | None = None
    for host, port in seeds:
        node: Any = redis.Redis(
            host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout, **kwargs
        )
        try:
            slots = node.execute_command("CLUSTER", "SLOTS")
        except (redis.RedisError, OSError) as exc:
            failure = exc
            continue
        finally:
            node.close()
        primaries = set()
        for entry in slots:
            address = entry[2]  # [start, end, [host, port, id, ...], replicas...]
            name = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
            primaries.add((name or host, int(address[1])))
        if primaries:
            return sorted(primaries)
    raise redis.ConnectionError(f"no cluster seed node answered CLUSTER SLOTS: {failure}")


def _addresses(clients: list[redis.Redis]) -> list[tuple[str, int]]:
    found = []
    for client in clients:
        kwargs = client.connection_pool.connection_kwargs
        found.append((str(kwargs.get("host")), int(kwargs.get("port") or 0)))
        client.close()
    return found


def _addresses_of(conns: list[Any]) -> list[tuple[str, int]]:
    return [(str(conn.host), int(conn.port)) for conn in conns]


# -- one near-cache per process and cache -------------------------------------------------------

_lock = threading.Lock()
_shared: dict[tuple[int, str, str], tuple[NearCache, InvalidationListener]] = {}


def _after_fork_in_child() -> None:
    """A forked worker (gunicorn --preload) inherits the parent's near-caches, copies and all,
    but not the threads that kept them coherent: empty each, and give it a listener of its own.
    Until that one has subscribed, the copy stays off (reads go to Redis)."""
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread at fork time
    inherited = list(_shared.items())
    _shared.clear()
    for (_, url, prefix), (near, old) in inherited:
        near.after_fork()
        listener = InvalidationListener(url, prefix, near, timeout=old.timeout)
        listener.start()
        _shared[(os.getpid(), url, prefix)] = (near, listener)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def near_cache_for(settings: Settings) -> tuple[NearCache, InvalidationListener]:
    """This process's near-cache for a cache (Redis URL + key prefix), its listener started.

    Shared by every middleware of the process that caches under the same prefix; the first
    config sets the bounds. Keyed by pid too: a forked worker starts its own thread."""
    assert settings.near_cache is not None and settings.redis_url is not None
    url = settings.redis_url
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
