"""Settings -> the compiled pieces an adapter runs on (policy, counters), built once at startup."""

from __future__ import annotations

from ._core.policy import CachePolicy, Resolver
from ._core.rules import Rule
from .config import Settings

__all__ = ["build_policy"]


def build_policy(
    settings: Settings,
    *,
    user_resolver: Resolver | None = None,
    venue_resolver: Resolver | None = None,
) -> CachePolicy:
    rules = tuple(
        Rule(
            route=route.path,
            ttl=route.ttl,
            vary_by=route.vary_by,
            private=route.private,
            condition=route.condition_func,
        )
        for route in settings.routes
    )
    return CachePolicy(
        rules,
        key_prefix=settings.key_prefix,
        venue_header=settings.venue_header,
        user_header=settings.user_header,
        max_body_bytes=settings.max_body_bytes,
        expose_key=settings.expose_key_header,
        user_resolver=user_resolver,
        venue_resolver=venue_resolver,
    )
