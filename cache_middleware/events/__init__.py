"""Lifecycle events of the cache: the sink the admin sub-app hands them to.

The Kombu bridge (publishing to the `coder.events` exchange) plugs in as an `EventSink`.
"""

from __future__ import annotations

from .sink import EventSink, LoggingSink, MemorySink

__all__ = ["EventSink", "LoggingSink", "MemorySink"]
