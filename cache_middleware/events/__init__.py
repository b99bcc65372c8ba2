"""Lifecycle events of the cache: the sink the admin sub-app hands them to.

`sink_for(config)` is the one sink of this process for a configuration: a `KombuEventSink`
when the YAML has an `events:` section (and kombu is installed), else a `LoggingSink`; the admin
app, the cache manager, the middleware's write invalidation, the worker and the expiry reporter
all publish through it unless given a sink in code (events/process_sink.py).

The Kombu bridge (publishing to the `coder.events` exchange) plugs in as an `EventSink`:
`KombuEventSink` (needs the `events` extra: kombu), and `run_consumer` runs the worker that
invalidates on `data.updated` / `user.updated` (or `maybe_start_in_process` runs it inside the app
process), and `ExpiryReporter` reports expired entries. They are imported on first use, so this
package imports without kombu installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .envelope import EventsSettings, build_envelopes, load_events_config, load_schema
from .sink import EventSink, LoggingSink, MemorySink

if TYPE_CHECKING:
    from .consumer import InvalidationWorker, run_consumer
    from .expiry import ExpiryReporter
    from .in_process import (
        InProcessConsumer,
        maybe_start_in_process,
        start_in_process_consumer,
    )
    from .process_sink import (
        flush_events,
        flush_process_sinks,
        publish_write_invalidation,
        sink_for,
    )
    from .publisher import KombuEventSink

__all__ = [
    "EventSink",
    "EventsSettings",
    "ExpiryReporter",
    "InProcessConsumer",
    "InvalidationWorker",
    "KombuEventSink",
    "LoggingSink",
    "MemorySink",
    "build_envelopes",
    "flush_events",
    "flush_process_sinks",
    "load_events_config",
    "load_schema",
    "maybe_start_in_process",
    "publish_write_invalidation",
    "run_consumer",
    "sink_for",
    "start_in_process_consumer",
]

_LAZY = {
    "KombuEventSink": ".publisher",
    "InvalidationWorker": ".consumer",
    "run_consumer": ".consumer",
    "ExpiryReporter": ".expiry",
    "InProcessConsumer": ".in_process",
    "maybe_start_in_process": ".in_process",
    "start_in_process_consumer": ".in_process",
    "sink_for": ".process_sink",
    "flush_events": ".process_sink",
    "flush_process_sinks": ".process_sink",
    "publish_write_invalidation": ".process_sink",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
