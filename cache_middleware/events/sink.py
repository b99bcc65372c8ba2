"""Where lifecycle events go: `cache.invalidated`, `cache.warmed`, `cache.cleared`,
`cache.optimized`.

Contract: `emit()` is called after the action succeeded, from the request that performed it, so
it must return at once and never raise into the caller (a sink that talks to a broker buffers
and publishes in the background). `data` holds JSON-serializable values only.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

__all__ = ["EventSink", "LoggingSink", "MemorySink"]

logger = logging.getLogger("cache_middleware.events")


class EventSink(Protocol):
    def emit(self, event_type: str, data: dict[str, Any]) -> None: ...


class LoggingSink:
    """The default: one INFO line per event, so actions leave an audit trail without a broker."""

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        logger.info("%s %s", event_type, json.dumps(data, sort_keys=True, default=str))


class MemorySink:
    """Keeps events in a list (tests, and apps that want to inspect them in process)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((event_type, data))
