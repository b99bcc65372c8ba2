"""The validated configuration: the frozen `Settings` and its parts, and the defaults and
value sets config.py checks against. No parsing here (config.py reads and checks)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALL_CACHE_HEADERS",
    "CACHEABLE_STATUSES",
    "AdminSettings",
    "ConfigSource",
    "NearCacheSettings",
    "RouteSettings",
    "Settings",
]

DEFAULT_PREFIX = "gateway:response"
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_TIMEOUT = 0.1
# A store slower than this per round trip makes a HIT cost more than most apps take alone.
DEFAULT_SLOW_STORE_MS = 50.0
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_COALESCE_WAIT = 5.0
DEFAULT_NEAR_BYTES = 32 * 1024 * 1024
DEFAULT_NEAR_MAX_AGE = 60.0
# `cache_headers:` names as settings and messages spell them (a file may write any case), in the
# order responses carry them: the default, every one of `rules.CACHE_HEADERS`.
ALL_CACHE_HEADERS = ("X-Cache", "X-Cache-Key", "X-Cache-TTL", "Cache-Status")
_CACHE_HEADER_NAMES = {name.lower(): name for name in ALL_CACHE_HEADERS}
# RFC 9110 §15.1 heuristically cacheable statuses a route may opt into; 206 and 5xx (but 501,
# which says the method is not implemented at all) never.
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# `mode:` values. gateway: the route TTL decides how long a response is stored (unless the
# response says shorter). standard: an RFC 9111 shared cache, the response decides (explicit
# freshness, else heuristic), the route's `ttl` at most bounds it.
MODES = ("gateway", "standard")
DEFAULT_MODE = "gateway"
# Standard mode: how long (s) an entry with the app's validator is kept past its freshness, to be
# revalidated with a conditional request instead of refetched (RFC 9111 §4.3).
DEFAULT_REVALIDATE_WINDOW = 3600
# `targeted_fields:` values: what a standard route does with CDN-Cache-Control and
# Surrogate-Control once it has read them as its own directives (RFC 9213 §2.1: MAY forward).
TARGETED_FIELD_MODES = ("pass", "strip")


@dataclass(frozen=True)
class RouteSettings:
    path: str
    # Gateway mode: how long a response is stored. Standard mode: an upper bound on the time it
    # spends in this cache, None for none.
    ttl: int | None
    vary_by: tuple[str, ...] | None = None
    private: bool = False
    condition: str | None = None
    condition_func: Callable[[Any], bool] | None = field(default=None, compare=False, repr=False)
    statuses: tuple[int, ...] = (200,)
    negative_ttl: int | None = None
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    ignore_params: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # The cache headers its responses get: the route's `cache_headers`, else the global one,
    # else all of them (less X-Cache-Key with expose_key_header: false).
    cache_headers: tuple[str, ...] = ALL_CACHE_HEADERS
    # `gateway` or `standard` (MODES): the route's own, else the global `mode`.
    mode: str = DEFAULT_MODE
    # Standard mode: seconds an entry with a validator is kept past its freshness to be
    # revalidated (the route's own, else the global one, else DEFAULT_REVALIDATE_WINDOW); 0 in
    # gateway mode.
    revalidate_window: int = 0


@dataclass(frozen=True)
class AdminSettings:
    token: str | None = None
    # venue -> token: a token that sees and touches only that venue's entries
    venue_tokens: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NearCacheSettings:
    """`near_cache: {max_bytes: ..., max_age: ...}`: decoded entries kept in process, dropped
    when Redis reports their key changed (client-side caching), and never older than `max_age`."""

    max_bytes: int = DEFAULT_NEAR_BYTES
    max_age: float = DEFAULT_NEAR_MAX_AGE


@dataclass(frozen=True)
class Settings:
    routes: tuple[RouteSettings, ...] = ()
    # The global `mode`: what a route without its own gets.
    mode: str = DEFAULT_MODE
    # Standard routes: CDN-Cache-Control and Surrogate-Control passed on downstream or stripped.
    targeted_fields: str = "pass"
    # The global `revalidate_window`: what a standard route without its own gets.
    revalidate_window: int = DEFAULT_REVALIDATE_WINDOW
    redis_url: str | None = None
    key_prefix: str = DEFAULT_PREFIX
    venue_header: str | None = None
    user_header: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    redis_timeout: float = DEFAULT_TIMEOUT
    memory_max_bytes: int = DEFAULT_MEMORY_BYTES
    expose_key_header: bool = True
    # The global `cache_headers`: what a route without its own gets.
    cache_headers: tuple[str, ...] = ALL_CACHE_HEADERS
    trusted_headers: tuple[str, ...] = ()
    honor_request_no_cache: bool = False
    key_host: bool = True
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    coalesce_wait: float = DEFAULT_COALESCE_WAIT
    breaker_failures: int = 5
    breaker_cooldown: float = 5.0
    # Round trips slower than this (ms), twenty in a row, open the breaker; 0 = never.
    slow_store_ms: float = DEFAULT_SLOW_STORE_MS
    admin: AdminSettings = AdminSettings()
    # The in-process near-cache (L1) in front of Redis; None = off (storage/near.py).
    near_cache: NearCacheSettings | None = None
    # Key namespaces of the shared cache manager (`events` for `events:42`): with the key
    # prefix, the only keys the admin API and the command line may delete (admin/operations.py).
    manager_namespaces: tuple[str, ...] = ()
    # Where the settings came from, for messages; not part of their identity.
    source: str = field(default="<dict>", compare=False)

    @property
    def uses_redis(self) -> bool:
        return bool(self.redis_url) and not str(self.redis_url).startswith("memory://")


ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | Settings
