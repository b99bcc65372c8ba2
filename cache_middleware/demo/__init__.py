"""The packaged demo served by `cache-middleware demo`: a small ticketing API on the memory store.

`create_app()` builds it; nothing is built at import time.
"""

from __future__ import annotations

from .app import DEFAULT_CONFIG, create_app

__all__ = ["DEFAULT_CONFIG", "create_app"]
