"""Expiry reporting: entries Redis expired, published as `cache.invalidated` with reason `expired`.

`events.report_expired: true` runs an `ExpiryReporter` in the `cache-middleware events consume`
worker and in the in-process consumer (`events.consume.in_process`). It subscribes to the Redis
keyspace notification channel `__keyevent@<db>__:expired` of the cache's database, keeps only
entry keys (`{key_prefix}:GET:...`: not fill locks, indexes, tags or statistics), batches them
(one batch per `interval`, 1 s, per venue) and hands each batch to the event sink (by default
the process's sink for the `events:` section, events/process_sink.py) as one
invalidation whose selectors are the expired keys, so the sink's flood control applies: at most
`max_events_per_invalidation` events per batch, the rest in one summary event.

* Keyspace notifications are off in a stock Redis. The reporter adds `E` and `x` to
  `notify-keyspace-events` with `CONFIG SET` (keeping the flags already set). Where `CONFIG` is
  refused (managed Redis services) it logs a warning saying what to set on the server, and
  listens anyway.
* One reporter per cache reports: the reporters of every process race for a lease in Redis
  (`cache-middleware:expiry-reporter:{key_prefix}`, renewed every `lease_ttl / 3`); only the
  holder subscribes. Several workers or app processes therefore never report one expiry several
  times. When the holder dies, expiries are not reported until its lease runs out (`lease_ttl`,
  10 s) and another process takes over; a holder that stops hands the lease back at once.
* Memory is bounded: a batch lists at most `max_events_per_invalidation` keys per venue (the
  others are only counted, they can only be part of the summary anyway) and at most 64 venues
  (further venues are merged into the venue-less batch).
* Pub/sub is fire-and-forget: expiries while the reporter is disconnected are not reported. It
  reconnects by itself, with a backoff of up to `events.reconnect_max` seconds.
* Redis expires keys lazily (on access) and in a background sweep, so a report can come a
  little after the TTL ran out; an entry deleted by an invalidation is not reported as expired.
* Only the single-server URLs (`redis://`, `rediss://`, `unix://`) are supported; with
  Sentinel or Cluster URLs, and with the memory store, the reporter logs a warning and does
  nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import redis

from ..config import Settings
from .envelope import EventsSettings
from .sink import EventSink

__all__ = ["ExpiryReporter", "ensure_expired_notifications", "lease_key", "venue_of"]

logger = logging.getLogger("cache_middleware.events")

MAX_VENUES = 64
_SUPPORTED = ("redis://", "rediss://", "unix://")
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lease_key(prefix: str) -> str:
    """The reporter lease of one cache. Outside the prefix, so clearing the cache keeps it."""
    return f"cache-middleware:expiry-reporter:{prefix}"


def venue_of(entry_key: str, prefix: str) -> str | None:
    """The venue segment of an entry key (`...:venue:<id>`), unescaped; None when it has none.

    Keys are `{prefix}:GET:{path}[:{name}:{value}...]`, where the names `user`, `venue`, `host`
    and `vary` are markers only (query parameters with those names are escaped), and `vary`
    starts the variant part."""
    head = f"{prefix}:GET:"
    if not entry_key.startswith(head):
        return None
    parts = entry_key[len(head) :].split(":")
    for i in range(1, len(parts) - 1, 2):
        name = parts[i]
        if name == "vary":
            return None
        if name == "venue":
            return unquote(parts[i + 1])
    return None


def _flags_with_expired(current: str) -> str | None:
    """`notify-keyspace-events` flags that also publish expired key events; None if they do."""
    missing = ""
    if "E" not in current:
        missing += "E"
    if "x" not in current and "A" not in current:
        missing += "x"
    return current + missing if missing else None


def ensure_expired_notifications(client: redis.Redis, *, warn: bool = True) -> bool:
    """Turn on `Ex` keyspace notifications (keeping other flags). False, with a warning, when
    the server refuses CONFIG; the caller listens anyway (the server may be set up already)."""
    try:
        got: Any = client.config_get("notify-keyspace-events")
        current = got.get("notify-keyspace-events", "") if isinstance(got, dict) else ""
        if isinstance(current, bytes):
            current = current.decode()
        wanted = _flags_with_expired(str(current))
        if wanted is not None:
            client.config_set("notify-keyspace-events", wanted)
            logger.info(
                "expiry reporting: notify-keyspace-events set to %r (was %r)", wanted, current
            )
        return True
    except redis.ResponseError as exc:
        (logger.warning if warn else logger.debug)(
            "expiry reporting: Redis refused CONFIG (%s): expired entries are reported only if "
            "the server publishes expired key events; set notify-keyspace-events to include "
            "'Ex' in the server's configuration (redis.conf, or the parameter group of a "
            "managed Redis)",
            exc,
        )
        return False


class _Batch:
    __slots__ = ("count", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.count = 0


class ExpiryReporter:
    """Reports the cache's expired entries to an event sink, from a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        events: EventsSettings,
        sink: EventSink | None = None,
        *,
        interval: float = 1.0,
        lease_ttl: float = 10.0,
        client_factory: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        if sink is None:  # the process's sink for these events, shared with every other source
            from .process_sink import sink_for

            sink = sink_for(events)
        self.sink = sink
        self.interval = interval
        self.lease_ttl = lease_ttl
        self.prefix = settings.key_prefix
        self._head = f"{self.prefix}:GET:"
        self._client_factory = client_factory
        self._token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._batches: dict[str | None, _Batch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._config_warned = False
        self.leader = False
        self.subscribed = threading.Event()  # set while subscribed to the expired channel
        self.reported = 0  # expired entries handed to the sink
        self.batches = 0  # sink.emit calls

    # -- lifecycle ---------------------------------------------------------------------------------

    def supported(self) -> bool:
        if self._client_factory is not None:
            return True
        url = self.settings.redis_url or ""
        if not self.settings.uses_redis:
            logger.warning(
                "events.report_expired: the cache is the in-process memory store, which has no "
                "expiry notifications: nothing will be reported"
            )
            return False
        if not url.startswith(_SUPPORTED):
            logger.warning(
                "events.report_expired: only redis://, rediss:// and unix:// URLs are supported "
                "(not %s): nothing will be reported",
                url.split("://", 1)[0] + "://",
            )
            return False
        return True

    def start(self) -> ExpiryReporter:
        if self._thread is None and self.supported():
            self._thread = threading.Thread(
                target=self._run, name="cache-middleware-expiry", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, report what is batched and hand the lease back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- batching (any thread) -----------------------------------------------------------------

    def add(self, key: str) -> bool:
        """Count one expired key into the current batch; False when it is not an entry."""
        if not key.startswith(self._head):
            return False
        venue = venue_of(key, self.prefix)
        limit = self.events.max_events_per_invalidation
        with self._lock:
            batch = self._batches.get(venue)
            if batch is None:
                if len(self._batches) >= MAX_VENUES and venue is not None:
                    venue = None
                    batch = self._batches.get(None)
                if batch is None:
                    batch = self._batches[venue] = _Batch()
            batch.count += 1
            if len(batch.keys) < limit:
                batch.keys.append(key)
        return True

    def flush(self) -> int:
        """Hand the batched expiries to the sink (one invalidation per venue); how many."""
        with self._lock:
            batches, self._batches = self._batches, {}
        total = 0
        for venue, batch in batches.items():
            data: dict[str, Any] = {
                "reason": "expired",
                "venue": venue,
                "keys": batch.keys,
                "count": batch.count,
            }
            if batch.count > len(batch.keys):
                data["unlisted"] = {"keys": batch.count - len(batch.keys)}
            try:
                self.sink.emit("cache.invalidated", data)
            except Exception:  # a sink must not stop the reporter
                logger.exception("event sink failed on expired entries")
            total += batch.count
            self.batches += 1
        self.reported += total
        return total

    # -- the thread ------------------------------------------------------------------------------

    def _client(self) -> redis.Redis:
        if self._client_factory is not None:
            return self._client_factory()
        assert self.settings.redis_url is not None
        timeout = self.events.connect_timeout
        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_connect_timeout=timeout,
            socket_timeout=max(timeout, 5.0),
            socket_keepalive=True,
            health_check_interval=15,
        )

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            client: redis.Redis | None = None
            try:
                client = self._client()
                while not self._stop.is_set():
                    leading = self._lead(client)
                    if self._failing:
                        logger.warning("expiry reporting: Redis is reachable again")
                        self._failing = False
                    backoff = 0.1
                    if leading:
                        self._listen(client)
                    else:
                        self._stop.wait(self.lease_ttl / 3)
            except (redis.RedisError, OSError) as exc:
                self.leader = False
                if not self._failing:
                    logger.warning(
                        "expiry reporting: Redis unreachable (%s: %s): retrying",
                        type(exc).__name__,
                        exc,
                    )
                    self._failing = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.events.reconnect_max)
            finally:
                if client is not None:
                    self._release(client)
                    client.close()

    def _lead(self, client: redis.Redis) -> bool:
        """Take the lease if it is free (or already ours)."""
        key, ttl = lease_key(self.prefix), int(self.lease_ttl * 1000)
        if client.set(key, self._token, nx=True, px=ttl):
            self.leader = True
        else:
            self.leader = bool(client.eval(_RENEW, 1, key, self._token, ttl))
        return self.leader

    def _release(self, client: redis.Redis) -> None:
        if not self.leader or not self._stop.is_set():
            return
        self.leader = False
        try:
            client.eval(_RELEASE, 1, lease_key(self.prefix), self._token)
        except (redis.RedisError, OSError):
            logger.debug("expiry reporting: could not hand the lease back", exc_info=True)

    def _listen(self, client: redis.Redis) -> None:
        if not ensure_expired_notifications(client, warn=not self._config_warned):
            self._config_warned = True
        db = client.connection_pool.connection_kwargs.get("db", 0)
        channel = f"__keyevent@{db}__:expired"
        # redis-py typed pubsub() only in 8.x; Any keeps mypy quiet on every supported release.
        new_pubsub: Any = client.pubsub
        pubsub: Any = new_pubsub()
        try:
            pubsub.subscribe(channel)
            deadline = time.monotonic() + max(self.events.connect_timeout, 1.0)
            while not self._stop.is_set():  # wait for the server to confirm the subscription
                message = pubsub.get_message(timeout=0.1)
                if message is not None and message.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")
            self.subscribed.set()
            logger.info("expiry reporting: listening on %s for %s:GET:*", channel, self.prefix)
            renew_every = self.lease_ttl / 3
            next_renew = time.monotonic() + renew_every
            next_flush = time.monotonic() + self.interval
            while not self._stop.is_set():
                wait = max(0.0, min(next_flush, next_renew) - time.monotonic())
                message = pubsub.get_message(timeout=min(wait, 0.25))
                if message is not None and message.get("type") == "message":
                    raw = message.get("data")
                    if isinstance(raw, bytes):
                        self.add(raw.decode("utf-8", "surrogateescape"))
                    elif isinstance(raw, str):
                        self.add(raw)
                now = time.monotonic()
                if now >= next_flush:
                    self.flush()
                    next_flush = now + self.interval
                if now >= next_renew:
                    next_renew = now + renew_every
                    if not self._lead(client):
                        logger.info("expiry reporting: lease lost, another process reports")
                        return
        finally:
            self.subscribed.clear()
            self.flush()
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
