"""The package's exception hierarchy: foreign errors are translated at the boundary."""

from __future__ import annotations

__all__ = ["CacheError", "ConfigError", "StoreFull", "StoreUnavailable"]


class CacheError(Exception):
    """Base class of every error cache-middleware raises on purpose."""


class ConfigError(CacheError, ValueError):
    """A configuration problem, naming the file, the route and the field."""


class StoreUnavailable(CacheError):
    """The storage backend could not be reached in time (Redis down, slow or refusing)."""

    # The `X-Cache: BYPASS; detail=...` a request gets when its lookup or fill fails this way.
    detail = "store-unavailable"


class StoreFull(StoreUnavailable):
    """The store answered but refused a write: Redis reached `maxmemory` under `noeviction`
    (an OOM reply). Reads still work, so this is not an outage: the fill is skipped, HITs go
    on, and the breaker does not count it."""

    detail = "store-full"
