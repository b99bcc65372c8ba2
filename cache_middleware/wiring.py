"""Settings -> the compiled pieces an adapter runs on (policy, counters), built once at startup."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from ._core.entry import STORABLE_STATUSES
from ._core.policy import CachePolicy, Resolver
from ._core.rules import UNBOUNDED_TTL, Rule
from .config import RouteSettings, Settings

__all__ = ["FLUSH_INTERVAL", "STATS_TTL", "build_policy", "stats_key"]

# Counters go to the shared tally at most this often per process: never a write per request.
FLUSH_INTERVAL = 5.0
STATS_TTL = 7 * 24 * 3600  # an idle cache's figures fade out after a week


def stats_key(prefix: str) -> str:
    """The shared tally of every process's counters (a Redis hash)."""
    return f"{prefix}:STATS"


def _compile_globs(globs: tuple[str, ...]) -> Callable[[str], object] | None:
    """`utm_*`-style globs -> one compiled matcher, built once at startup."""
    if not globs:
        return None
    return re.compile("|".join(fnmatch.translate(glob) for glob in globs)).match


def _rule(route: RouteSettings, targeted_fields: str = "pass") -> Rule:
    standard = route.mode == "standard"
    return Rule(
        route=route.path,
        ttl=route.ttl if route.ttl is not None else UNBOUNDED_TTL,
        vary_by=route.vary_by,
        private=route.private,
        condition=route.condition_func,
        # Standard mode: every status the cache may store; the response's freshness decides.
        statuses=STORABLE_STATUSES if standard else frozenset(route.statuses),
        negative_ttl=route.negative_ttl,
        stale_while_revalidate=route.stale_while_revalidate,
        stale_if_error=route.stale_if_error,
        ignored=_compile_globs(route.ignore_params),
        tags=route.tags,
        cache_headers=route.cache_headers,
        standard=standard,
        revalidate_window=route.revalidate_window if standard else 0,
        # Only a standard route reads them as its own; a gateway route passes them on untouched.
        strip_targeted=standard and targeted_fields == "strip",
    )


def build_policy(
    settings: Settings,
    *,
    user_resolver: Resolver | None = None,
    venue_resolver: Resolver | None = None,
) -> CachePolicy:
    rules = tuple(_rule(route, settings.targeted_fields) for route in settings.routes)
    return CachePolicy(
        rules,
        key_prefix=settings.key_prefix,
        venue_header=settings.venue_header,
        user_header=settings.user_header,
        max_body_bytes=settings.max_body_bytes,
        expose_key=settings.expose_key_header,
        cache_headers=settings.cache_headers,
        trusted_headers=settings.trusted_headers,
        honor_request_no_cache=settings.honor_request_no_cache,
        key_host=settings.key_host,
        user_resolver=user_resolver,
        venue_resolver=venue_resolver,
    )
