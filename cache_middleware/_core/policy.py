"""Cache decisions as values; the adapters do the I/O.

The request side: `CachePolicy.plan()` turns a request into `None` (no route: pass through
untouched), `Bypass` (a cached route, but this request must not be looked up), `Invalidate`
(an unsafe method: on success, drop the path's entries) or `Lookup` (the key to read).
`first_key()` / `on_read()` walk a Vary record to the right variant; `freshness()` says whether
an entry is fresh, usable stale, or expired.

The response side: `respond_hit()` turns an entry into the replayed status and headers (a 304
when the request's validators match); `start_miss()` decides, when the app's headers arrive,
whether the response may be stored and for how long; `miss_writes()` builds the records to
write once the body is complete. Every rule lives here once, for ASGI and WSGI, and the line
that implements an RFC rule cites it.
"""

from __future__ import annotations

from .planning import Planner
from .policy_base import (
    REFRESH_DROPPED,
    Bypass,
    Follow,
    Found,
    Invalidate,
    Lookup,
    MissStart,
    NotFound,
    RequestSource,
    RequestView,
    Resolver,
)
from .reading import Reader
from .replay import Replayer
from .storing import Storer, body_etag, declares_no_body, miss_etag

__all__ = [
    "REFRESH_DROPPED",
    "Bypass",
    "CachePolicy",
    "Follow",
    "Found",
    "Invalidate",
    "Lookup",
    "MissStart",
    "NotFound",
    "RequestSource",
    "RequestView",
    "Resolver",
    "body_etag",
    "declares_no_body",
    "miss_etag",
]


class CachePolicy(Planner, Reader, Storer, Replayer):
    """Every decision of the cache, for both adapters: the parts, one concern each, share one
    `PolicyState` (the route table, the settings, the bounded memos)."""
