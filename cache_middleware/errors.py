"""The package's exception hierarchy: foreign errors are translated at the boundary."""

from __future__ import annotations

__all__ = ["CacheError", "ConfigError", "StoreUnavailable"]


class CacheError(Exception):
    """Base class of every error cache-middleware raises on purpose."""


class ConfigError(CacheError, ValueError):
    """A configuration problem, naming the file, the route and the field."""


class StoreUnavailable(CacheError):
    """The storage backend could not be reached in time (Redis down, slow or refusing)."""
