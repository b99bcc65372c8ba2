"""The middlewares of this process, so the admin sub-app shares their store and counters.

A middleware registers itself when built; `create_admin_app` finds the ones with its key
prefix (the same cache) and reads their counters and warms through them. Weak references: an
app that is torn down leaves no trace here.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["middlewares_for", "register"]

_lock = threading.Lock()
_registered: list[weakref.ref[Any]] = []


def register(middleware: Any) -> None:
    with _lock:
        _registered[:] = [ref for ref in _registered if ref() is not None]
        _registered.append(weakref.ref(middleware))


def middlewares_for(key_prefix: str) -> list[Any]:
    """Live middlewares (ASGI and WSGI) caching under `key_prefix`, oldest first."""
    with _lock:
        live = [ref() for ref in _registered]
    return [mw for mw in live if mw is not None and mw.settings.key_prefix == key_prefix]
