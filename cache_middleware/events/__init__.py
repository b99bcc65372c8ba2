"""Lifecycle events of the cache: the sink the admin sub-app hands them to.

The Kombu bridge (publishing to the `coder.events` exchange) plugs in as an `EventSink`:
`KombuEventSink` (needs the `events` extra: kombu), and `run_consumer` runs the worker that
invalidates on `data.updated` / `user.updated`. Both are imported on first use, so this package
imports without kombu installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .envelope import EventsSettings, build_envelopes, load_events_config, load_schema
from .sink import EventSink, LoggingSink, MemorySink

if TYPE_CHECKING:
    from .consumer import InvalidationWorker, run_consumer
    from .publisher import KombuEventSink

__all__ = [
    "EventSink",
    "EventsSettings",
    "InvalidationWorker",
    "KombuEventSink",
    "LoggingSink",
    "MemorySink",
    "build_envelopes",
    "load_events_config",
    "load_schema",
    "run_consumer",
]

_LAZY = {
    "KombuEventSink": ".publisher",
    "InvalidationWorker": ".consumer",
    "run_consumer": ".consumer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
