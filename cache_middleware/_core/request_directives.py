"""The request's own Cache-Control (RFC 9111 §5.2.1): what a client accepts from the cache.

`max-age`, `min-fresh` and `max-stale` say which stored responses this client accepts;
`only-if-cached` asks for a stored response or a 504, never the origin. (`no-cache`,
`max-age=0` and `no-store` are read by `planning.plan`: they change the plan itself.)

A gateway cache exists to shield its app, so a directive that would send the request to the
app where the cache would not (`max-age=N`, `min-fresh`) is honoured only where the
configuration honours request `no-cache` (`honor_request_no_cache`): otherwise any client could
turn every HIT into a call to the app. `max-stale` and `only-if-cached` never cost the app
anything and are always honoured.
"""

from __future__ import annotations

from dataclasses import dataclass

from .entry import CachedResponse
from .headers import delta_seconds, get_header, parse_cache_control, targeted_directives

__all__ = ["ANY_STALENESS", "RequestDirectives", "request_directives", "serves_stale"]

# `max-stale` without a value: any staleness.
ANY_STALENESS = 2**31


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: int | None = None
    only_if_cached: bool = False

    def accepts(self, entry: CachedResponse, now: float, honour_refetch: bool) -> bool:
        """Whether this client accepts `entry` as fresh enough (max-age, min-fresh), read
        only when `honour_refetch` (see the module's docstring)."""
        if not honour_refetch:
            return True
        age = now - entry.stored_at
        if self.max_age is not None and age > self.max_age:
            return False
        return self.min_fresh is None or entry.ttl - age >= self.min_fresh

    def tolerates(self, entry: CachedResponse, now: float) -> bool:
        """Whether this client accepts `entry` stale (max-stale), and the response allows a
        stale use at all (RFC 9111 §4.2.4: not must-revalidate, proxy-revalidate or s-maxage,
        which forbid it to a shared cache)."""
        if self.max_stale is None:
            return False
        if now - entry.stored_at - entry.ttl > self.max_stale:
            return False
        return serves_stale(entry)


# Directives that forbid a shared cache to serve a stored response without revalidating it
# (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.4, §5.2.2.8, §5.2.2.10).
_NEVER_STALE = ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")


def serves_stale(entry: CachedResponse) -> bool:
    """Whether the stored response may be served stale by a shared cache: not when its
    Cache-Control, or the targeted field a standard route read in its place (CDN-Cache-Control,
    Surrogate-Control: RFC 9213), says must-revalidate, proxy-revalidate, s-maxage or no-cache
    (a no-cache entry is stored only to be revalidated on every use). Both are read, so a
    targeted field can never loosen what Cache-Control forbids."""
    stored = parse_cache_control(get_header(entry.headers, b"cache-control"))
    if any(name in stored for name in _NEVER_STALE):
        return False
    targeted = targeted_directives(
        [value for name, value in entry.headers if name == b"cdn-cache-control"],
        [value for name, value in entry.headers if name == b"surrogate-control"],
    )
    return targeted is None or not any(name in targeted for name in _NEVER_STALE)


def request_directives(cache_control: str | None) -> RequestDirectives | None:
    """The directives of a request's Cache-Control value that choose among stored responses,
    or None when it has none of them (the common case: no further cost)."""
    if not cache_control:
        return None
    parsed = parse_cache_control(cache_control.encode("latin-1"))
    max_age = _seconds(parsed, "max-age")
    min_fresh = _seconds(parsed, "min-fresh")
    max_stale: int | None = None
    if "max-stale" in parsed:
        value = parsed["max-stale"]
        max_stale = ANY_STALENESS if value is None else _delta(value)
    only_if_cached = "only-if-cached" in parsed
    if max_age is None and min_fresh is None and max_stale is None and not only_if_cached:
        return None
    return RequestDirectives(max_age, min_fresh, max_stale, only_if_cached)


def _seconds(parsed: dict[str, str | None], name: str) -> int | None:
    if name not in parsed:
        return None
    value = parsed[name]
    # RFC 9111 §1.2.2: an invalid delta-seconds is ignored; here it is the strictest reading
    # for max-age/min-fresh (0: nothing stored is young enough), never a wider acceptance.
    return 0 if value is None else _delta(value)


def _delta(value: str) -> int:
    seconds = delta_seconds(value)
    return 0 if seconds is None else seconds
