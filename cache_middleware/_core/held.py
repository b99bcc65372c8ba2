"""The short way to a HIT, for both adapters: a plain GET (`CachePolicy.plain_key`) whose fresh
entry this process holds is answered without building the request's plan.

`local_get` is the store's read of what the process holds (the near-cache, the memory store):
a plain function, never I/O. Anything else (not held, a Vary record, garbage, stale, expired)
returns None and the adapter takes the full path, which gives the same answer, slower.
"""

from __future__ import annotations

from collections.abc import Callable

from .policy import CachePolicy
from .rules import Rule
from .stats import StatsBook
from .trend import MissTrend

__all__ = ["Replay", "replay_held"]

# What to send: status, headers, body.
Replay = tuple[int, list[tuple[bytes, bytes]], bytes]


def replay_held(
    policy: CachePolicy,
    plain: tuple[Rule, str, bytes | None],
    local_get: Callable[[str], bytes | None],
    book: StatsBook,
    trend: MissTrend,
    now: float,
) -> Replay | None:
    """The HIT for `plain` (rule, key, X-Cache-Key value) at `now` (the adapter's clock),
    counted as the full path counts it."""
    rule, key, key_header = plain
    raw = local_get(key)
    if raw is None:
        return None
    entry = policy.held_entry(raw)
    if entry is None:
        return None
    if policy.freshness(entry, now) != "fresh":
        return None  # stale or expired: the full path knows what to do
    book.bump("hits", rule.route)
    trend.found(rule.route)
    return entry.status, policy.plain_hit_headers(rule, key_header, entry, now), entry.body
