"""The seed's shared cache manager: get / set / get_or_set / invalidate over a store.

`get_cache_manager(config=None)` returns the process-wide async manager for a config (the same
forms as the middleware; None means `CACHE_REDIS_URL`, else the memory store);
`get_sync_cache_manager` is its twin for threads and WSGI code. Keys are used as given.

Events: with an `events:` section in the config, `invalidate` and `delete` publish
`cache.invalidated` (reason `manual`, the seed's "cache entry is manually invalidated") through
the process's event sink (events/process_sink.py), the one the admin app uses too; a manager
built with `event_sink=` publishes there instead. Without one, they publish nothing.

Failure policy: reads and writes fail open (a `get` returns the default, a `set` returns False,
`get_or_set` calls the factory) because a cache must never take the caller down; `invalidate`
and `delete` raise `StoreUnavailable`, because reporting a deletion that did not happen would
leave stale data in place silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._core.values import CorruptValue, decode_value, encode_value
from .config import ConfigSource, Settings, load_config
from .errors import StoreUnavailable
from .events.envelope import EventsSettings
from .events.sink import EventSink
from .storage import AsyncStore, SyncStore, make_async_store, make_sync_store

__all__ = [
    "CacheManager",
    "SyncCacheManager",
    "get_cache_manager",
    "get_sync_cache_manager",
]

T = TypeVar("T")
logger = logging.getLogger("cache_middleware.manager")
_MISSING: Any = object()
DEFAULT_TTL = 300


def _report(sink: EventSink | None, selector: str, values: list[str], count: int) -> None:
    """Publish one manual invalidation; a sink never turns a done deletion into an error."""
    if sink is None or not values:
        return
    try:
        sink.emit(
            "cache.invalidated",
            {"reason": "manual", "venue": None, selector: values, "count": count},
        )
    except Exception:
        logger.exception("event sink failed on cache.invalidated")


def _check_ttl(ttl: int | None, default: int) -> int:
    ttl = default if ttl is None else ttl
    if type(ttl) is not int or ttl <= 0:
        raise ValueError(f"ttl must be a positive integer of seconds, got {ttl!r}")
    return ttl


class _LeaderCancelled(Exception):
    """The task computing a key was cancelled; its waiters were not and must carry on."""


# The operations both managers share are written once, for asyncio, between the two markers
# below; scripts/unasync.py writes their blocking twin after them (tests/test_unasync.py checks
# it is current). What differs, `get_or_set`'s way of sharing one computation, is written twice.


# unasync: source begin
class _AsyncManagerBase:
    """What the two managers share: everything but `get_or_set`."""

    _inflight: dict[str, Any]  # the keys `get_or_set` is computing, each with its waiters' handle

    def __init__(
        self,
        store: AsyncStore,
        *,
        default_ttl: int = DEFAULT_TTL,
        event_sink: EventSink | None = None,
    ) -> None:
        self.store = store
        self.default_ttl = _check_ttl(default_ttl, DEFAULT_TTL)
        self.event_sink = event_sink  # where invalidate / delete are reported; None: nowhere
        self._inflight = {}

    async def _load(self, key: str) -> Any:
        try:
            raw = await self.store.get(key)
        except StoreUnavailable:
            return _MISSING
        if raw is None:
            return _MISSING
        try:
            return decode_value(raw)
        except CorruptValue as exc:
            logger.warning("dropping unreadable value under %r: %s", key, exc)
            with contextlib.suppress(StoreUnavailable):
                await self.store.forget(key)
            return _MISSING

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self._load(key)
        return default if value is _MISSING else value

    async def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        data = encode_value(value)
        try:
            await self.store.set(key, data, _check_ttl(ttl, self.default_ttl))
        except StoreUnavailable:
            return False
        return True

    async def delete(self, *keys: str) -> int:
        """Delete these exact keys; returns how many existed (reported as one invalidation)."""
        count = await self.store.delete(*keys)
        _report(self.event_sink, "keys", list(keys), count)
        return count

    async def invalidate(self, pattern: str) -> int:
        """Delete every key matching a Redis glob (SCAN + UNLINK in batches); returns the count."""
        count = await self.store.delete_matching(pattern)
        _report(self.event_sink, "patterns", [pattern], count)
        return count

    async def aclose(self) -> None:
        await self.store.aclose()


# unasync: source end

# unasync: generated begin: the sync twin of the source region above, written by
# scripts/unasync.py: do not edit; edit the source, then run scripts/unasync.py.


class _ManagerBase:
    """What the two managers share: everything but `get_or_set`."""

    _inflight: dict[str, Any]  # the keys `get_or_set` is computing, each with its waiters' handle

    def __init__(
        self,
        store: SyncStore,
        *,
        default_ttl: int = DEFAULT_TTL,
        event_sink: EventSink | None = None,
    ) -> None:
        self.store = store
        self.default_ttl = _check_ttl(default_ttl, DEFAULT_TTL)
        self.event_sink = event_sink  # where invalidate / delete are reported; None: nowhere
        self._inflight = {}

    def _load(self, key: str) -> Any:
        try:
            raw = self.store.get(key)
        except StoreUnavailable:
            return _MISSING
        if raw is None:
            return _MISSING
        try:
            return decode_value(raw)
        except CorruptValue as exc:
            logger.warning("dropping unreadable value under %r: %s", key, exc)
            with contextlib.suppress(StoreUnavailable):
                self.store.forget(key)
            return _MISSING

    def get(self, key: str, default: Any = None) -> Any:
        value = self._load(key)
        return default if value is _MISSING else value

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        data = encode_value(value)
        try:
            self.store.set(key, data, _check_ttl(ttl, self.default_ttl))
        except StoreUnavailable:
            return False
        return True

    def delete(self, *keys: str) -> int:
        """Delete these exact keys; returns how many existed (reported as one invalidation)."""
        count = self.store.delete(*keys)
        _report(self.event_sink, "keys", list(keys), count)
        return count

    def invalidate(self, pattern: str) -> int:
        """Delete every key matching a Redis glob (SCAN + UNLINK in batches); returns the count."""
        count = self.store.delete_matching(pattern)
        _report(self.event_sink, "patterns", [pattern], count)
        return count

    def close(self) -> None:
        self.store.close()


# unasync: generated end


class CacheManager(_AsyncManagerBase):
    """Async cache manager. `get_or_set` calls the factory once per key per process at a time."""

    _inflight: dict[str, asyncio.Future[Any]]

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[T]] | Callable[[], T],
        ttl: int | None = None,
    ) -> T:
        ttl = _check_ttl(ttl, self.default_ttl)
        value = await self._load(key)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        while True:
            pending = self._inflight.get(key)
            if pending is None or pending.get_loop() is not loop:
                break
            try:
                # Another task is computing this key: share its result (or its exception).
                return await asyncio.shield(pending)
            except _LeaderCancelled:
                continue  # that task was cancelled, not us: one of the waiters takes over
        future: asyncio.Future[Any] = loop.create_future()
        self._inflight[key] = future
        try:
            result = factory()
            if inspect.isawaitable(result):
                result = await result
            await self.set(key, result, ttl)
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.set_exception(_LeaderCancelled())
            future.exception()  # mark retrieved: no "never retrieved" warning without waiters
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SyncCacheManager(_ManagerBase):
    """The blocking twin of `CacheManager`, safe to share between threads."""

    _inflight: dict[str, _Call]

    def get_or_set(self, key: str, factory: Callable[[], T], ttl: int | None = None) -> T:
        ttl = _check_ttl(ttl, self.default_ttl)
        value = self._load(key)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        mine = _Call()
        call = self._inflight.setdefault(key, mine)  # atomic: one thread's call wins the key
        if call is not mine:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[no-any-return]
        try:
            call.result = factory()
            self.set(key, call.result, ttl)
            return call.result  # type: ignore[no-any-return]
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            self._inflight.pop(key, None)
            call.done.set()


# One manager per (cache settings, events settings): the cache's `Settings` do not hold the
# `events:` section, and two configs that differ only there report to different places.
_ManagerKey = tuple[Settings, "EventsSettings | None"]
_async_managers: dict[_ManagerKey, CacheManager] = {}
_sync_managers: dict[_ManagerKey, SyncCacheManager] = {}
_managers_lock = threading.Lock()


def _settings_and_sink(
    config: ConfigSource | None,
) -> tuple[_ManagerKey, EventSink | None]:
    from .events.process_sink import events_settings_of, sink_for

    settings = load_config(config)
    events = events_settings_of(config)
    return (settings, events), (None if events is None else sink_for(events))


def get_cache_manager(config: ConfigSource | None = None) -> CacheManager:
    """The shared async manager for `config` (one per distinct configuration per process)."""
    key, sink = _settings_and_sink(config)
    with _managers_lock:
        manager = _async_managers.get(key)
        if manager is None:
            manager = _async_managers[key] = CacheManager(make_async_store(key[0]), event_sink=sink)
        return manager


def get_sync_cache_manager(config: ConfigSource | None = None) -> SyncCacheManager:
    """The shared blocking manager for `config` (one per distinct configuration per process)."""
    key, sink = _settings_and_sink(config)
    with _managers_lock:
        manager = _sync_managers.get(key)
        if manager is None:
            manager = _sync_managers[key] = SyncCacheManager(
                make_sync_store(key[0]), event_sink=sink
            )
        return manager
