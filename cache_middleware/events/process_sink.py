"""The one event sink of this process for a configuration: what an `events:` section in the YAML
turns on with no code.

Every source of invalidation (the admin sub-app, the shared cache manager, the middleware's
write invalidation, the invalidation worker, the expiry reporter) asks `sink_for(config)` and
gets the same object for the same `events:` section:

* a `KombuEventSink` when the configuration has an `events:` section and kombu is installed
  (one publishing thread and one broker connection per configuration, however many apps,
  managers and consumers use it);
* the shared `LoggingSink` otherwise (INFO lines on `cache_middleware.events`), with one warning
  when `events:` is configured but kombu is missing.

`event_sink=` passed in code still wins: these functions are only asked when none was given.

Shutdown: `flush_events(config)` publishes what is buffered without closing (lifespan shutdown:
the process may serve again, a test client may start the app twice); `flush_process_sinks()`
closes every process sink within a time limit and forgets them, and runs at exit. A process
forked after a sink started (gunicorn `--preload`) restarts its publishing thread in the child
and leaves the parent's buffered events to the parent.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..config import ConfigSource, Settings
from ..errors import ConfigError
from .envelope import EventsSettings, load_events_config
from .sink import EventSink, LoggingSink

__all__ = [
    "EXIT_FLUSH_TIMEOUT",
    "events_of",
    "events_settings_of",
    "flush_events",
    "flush_process_sinks",
    "flush_sink",
    "publish_write_invalidation",
    "sink_for",
]

logger = logging.getLogger("cache_middleware.events")

# At exit, buffered events get this long to reach the broker: a process whose broker is down
# must still stop promptly.
EXIT_FLUSH_TIMEOUT = 3.0

_lock = threading.Lock()
_sinks: dict[EventsSettings, EventSink] = {}
_logging_sink = LoggingSink()
_kombu_missing_warned = False


def events_settings_of(config: ConfigSource | None) -> EventsSettings | None:
    """The `events:` settings of a config as the middleware and the admin app are given it, or
    None when it has none.

    A path is read again (the cache's `Settings` do not keep the `events:` section); a dict
    counts when it has an `events` key; a `Settings` object carries its `events` when it has
    that attribute, and none otherwise."""
    if config is None:
        return None
    if isinstance(config, Settings):
        events = getattr(config, "events", None)
        return events if isinstance(events, EventsSettings) else None
    if isinstance(config, Mapping):
        if config.get("events") is None:
            return None
        return load_events_config({"events": config["events"]})
    if isinstance(config, (str, os.PathLike)):
        from ..config import _read_yaml

        path = Path(config)
        data = _read_yaml(path)
        if not isinstance(data, Mapping) or data.get("events") is None:
            return None
        return load_events_config(path)
    raise ConfigError(f"config must be a path, a dict or Settings, got {type(config).__name__}")


def events_of(source: EventsSettings | ConfigSource | None) -> EventsSettings | None:
    """`events_settings_of`, also taking validated `EventsSettings` as they are."""
    if isinstance(source, EventsSettings):
        return source
    return events_settings_of(source)


def sink_for(source: EventsSettings | ConfigSource | None) -> EventSink:
    """THE sink of this process for a configuration (see the module docstring). Thread-safe:
    callers racing on one configuration get one sink."""
    events = events_of(source)
    if events is None:
        return _logging_sink
    with _lock:
        sink = _sinks.get(events)
        if sink is None:
            sink = _sinks[events] = _new_sink(events)
        return sink


def _new_sink(events: EventsSettings) -> EventSink:
    global _kombu_missing_warned
    try:
        importlib.import_module("kombu")
    except ImportError:
        if not _kombu_missing_warned:
            _kombu_missing_warned = True
            logger.warning(
                "%s: an events: section is configured but kombu is not installed "
                "(pip install 'cache-middleware[events]'): events are only logged, at INFO "
                "on the cache_middleware.events logger, and nothing is published",
                events.source,
            )
        return _logging_sink
    from .publisher import KombuEventSink

    return KombuEventSink(events)


def flush_sink(sink: EventSink, timeout: float = 5.0) -> int:
    """Publish what `sink` holds, for at most `timeout` seconds, leaving it open; how many events
    are still waiting (0 for a sink that holds nothing back)."""
    flush = getattr(sink, "flush", None)
    if flush is None:
        return 0
    try:
        left = flush(timeout)
    except Exception:  # a shutdown must go on whatever a sink does
        logger.exception("event sink failed to flush")
        return 0
    return left if isinstance(left, int) else 0


def flush_events(source: EventsSettings | ConfigSource | None, timeout: float = 5.0) -> int:
    """Flush the process sink of a configuration if one was made (never makes one): what a
    lifespan shutdown calls. Returns how many events are still waiting."""
    events = events_of(source)
    if events is None:
        return 0
    with _lock:
        sink = _sinks.get(events)
    return 0 if sink is None else flush_sink(sink, timeout)


def flush_process_sinks(timeout: float = EXIT_FLUSH_TIMEOUT) -> int:
    """Close every process sink, publishing what they hold within `timeout` seconds in all, and
    forget them (a later `sink_for` makes new ones). Idempotent; runs at exit. Returns how many
    events could not be published."""
    with _lock:
        sinks = list(_sinks.values())
        _sinks.clear()
    deadline = time.monotonic() + timeout
    left = 0
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is None:
            continue
        try:
            got = close(max(0.05, deadline - time.monotonic()))
        except Exception:
            logger.exception("event sink failed to close")
            continue
        left += got if isinstance(got, int) else 0
    return left


def publish_write_invalidation(
    events: EventsSettings | Settings | None, path: str, count: int, venue: str | None = None
) -> None:
    """The middleware's hook: a successful POST/PUT/PATCH/DELETE dropped `count` entries of
    `path`; publish `cache.invalidated` (reason `write`, selector `path`).

    `events` is what the adapter resolved once at startup (`events_of(config)`): None, the usual
    case, returns at once. Nothing is published when nothing was dropped (a write to a path that
    had no entry is not an invalidation). Never raises and never blocks."""
    if events is None or count <= 0:
        return
    if isinstance(events, Settings):
        events = events_settings_of(events)
        if events is None:
            return
    try:
        sink_for(events).emit(
            "cache.invalidated",
            {"reason": "write", "venue": venue, "paths": [path], "count": count},
        )
    except Exception:  # the request succeeded; its report must not turn it into an error
        logger.exception("cannot publish the write invalidation of %s", path)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for sink in list(_sinks.values()):
        restart = getattr(sink, "_after_fork_in_child", None)
        if restart is not None:
            try:
                restart()
            except Exception:
                logger.exception("event sink cannot restart after fork")


def _flush_at_exit() -> None:
    flush_process_sinks(EXIT_FLUSH_TIMEOUT)


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
