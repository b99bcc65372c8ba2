"""Which routes mostly miss, judged from this process's own recent lookups.

A route whose lookups mostly find nothing (keyed on an ever-changing parameter, or cold) is
better served by a lookup that also takes the fill lease when it finds nothing: a MISS then
costs two storage round trips instead of three. A route whose lookups mostly hit keeps the
plain read, the cheapest HIT there is. The judgement is a counter per route, saturating both
ways, so a few odd lookups do not flip a route back and forth.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from .policy import CachePolicy, Lookup

__all__ = ["Lease", "MissTrend", "lookup_takes_lease"]

# How far the counter goes either way: a route needs this many more misses than hits in a row
# to switch after it settled on hits (and the reverse).
SATURATION = 8


class MissTrend:
    """Per route: more misses than hits lately? Routes come from the config (bounded)."""

    __slots__ = ("_score",)

    def __init__(self) -> None:
        self._score: dict[str, int] = {}

    def mostly_misses(self, route: str) -> bool:
        return self._score.get(route, 0) > 0

    def missed(self, route: str) -> None:
        score = self._score.get(route, 0)
        if score < SATURATION:
            self._score[route] = score + 1

    def found(self, route: str) -> None:
        score = self._score.get(route, 0)
        if score > -SATURATION:
            self._score[route] = score - 1


@dataclass(slots=True)
class Lease:
    """What a lookup that also asked for the fill lease got: the token it asked with, and the
    epoch if it got the lease (None: another holds it)."""

    token: str
    epoch: int | None


def lookup_takes_lease(trend: MissTrend, plan: Lookup, filling: Container[str]) -> bool:
    """Whether this lookup should also take the fill lease if it finds nothing: its route has
    mostly missed lately, and the request would lead a fill. Requests that cannot fill (HEAD,
    `no-store`), that lead alone (credentialed), or whose key this process is already filling
    (`filling`) just read."""
    return (
        trend.mostly_misses(plan.rule.route)
        and CachePolicy.can_fill(plan)
        and not CachePolicy.leads_alone(plan)
        and plan.key not in filling
    )
