"""The short way to a HIT, for both adapters: a plain GET (`CachePolicy.plain_key`) whose fresh
entry is read under its key is answered without building the request's plan.

`replay_held` reads through the store's `local_get` (what the process holds: the near-cache,
the memory store), a plain function, never I/O. `replay_read` takes what the adapter read from
the store itself (one GET to Redis), when `reads_plain` says to read. Anything but a fresh
entry (nothing, a Vary record, garbage, stale, expired) returns None and the adapter takes the
full path, which gives the same answer, slower (handing it what it read, so nothing is read
twice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .entry import STORABLE_STATUSES, CachedResponse, CorruptEntry, HeldEntry
from .policy import CachePolicy
from .rules import Rule
from .stats import StatsBook
from .trend import MissTrend

__all__ = ["PlainRead", "Replay", "reads_plain", "replay_held", "replay_read"]

# What to send: status, headers, body.
Replay = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass(slots=True)
class PlainRead:
    """What the short way read under a plain key, or how the store failed: handed to the full
    path when it is not a fresh HIT, whose first read it then is."""

    key: str
    raw: bytes | None
    error: Exception | None = None


def replay_held(
    policy: CachePolicy,
    plain: tuple[Rule, str, bytes | None],
    local_get: Callable[[str], bytes | None] | None,
    book: StatsBook,
    trend: MissTrend,
    now: float,
) -> Replay | None:
    """The HIT for `plain` (rule, key, X-Cache-Key value) at `now` (the adapter's clock) from
    what the process holds (None: a store that holds nothing in process), counted as the full
    path counts it."""
    if local_get is None:
        return None
    return _replay(policy, plain, local_get(plain[1]), book, trend, now)


def reads_plain(trend: MissTrend, plain: tuple[Rule, str, bytes | None]) -> bool:
    """Whether the short way reads the store when the process does not hold the entry: not on
    a route that mostly misses, where the full path's first read takes the fill lease with it
    (a MISS there would otherwise cost a third round trip)."""
    return not trend.mostly_misses(plain[0].route)


def replay_read(
    policy: CachePolicy,
    plain: tuple[Rule, str, bytes | None],
    read: PlainRead,
    book: StatsBook,
    trend: MissTrend,
    now: float,
) -> Replay | None:
    """`replay_held` for what the adapter read from the store under the plain key."""
    return None if read.error is not None else _replay(policy, plain, read.raw, book, trend, now)


def _replay(
    policy: CachePolicy,
    plain: tuple[Rule, str, bytes | None],
    raw: bytes | None,
    book: StatsBook,
    trend: MissTrend,
    now: float,
) -> Replay | None:
    if raw is None:
        return None
    rule, key, key_header = plain
    # What the near-cache holds remembers its decoding: taken here without a call.
    entry = raw.decoded if type(raw) is HeldEntry else None
    if entry is None:
        try:
            entry = policy.decoded(key, raw)
        except CorruptEntry:
            return None  # the full path logs and drops it
    if not isinstance(entry, CachedResponse):
        return None  # a Vary record: the full path follows it
    if entry.status not in STORABLE_STATUSES and not rule.standard:
        # A status only a standard route stores, under a gateway route's key (forged, or a
        # route whose mode changed): the full path drops it (`Reader.on_read`).
        return None
    if policy.freshness(entry, now) != "fresh":
        return None  # stale or expired: the full path knows what to do
    book.hit(rule.route)
    trend.found(rule.route)
    return entry.status, policy.plain_hit_headers(rule, key_header, entry, now), entry.body
