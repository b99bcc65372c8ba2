"""Which routes mostly miss, judged from this process's own recent lookups.

A route whose lookups mostly find nothing (keyed on an ever-changing parameter, or cold) is
better served by a lookup that also takes the fill lease when it finds nothing: a MISS then
costs two storage round trips instead of three. A route whose lookups mostly hit keeps the
plain read, the cheapest HIT there is. The judgement is a counter per route, saturating both
ways, so a few odd lookups do not flip a route back and forth.
"""

from __future__ import annotations

__all__ = ["MissTrend"]

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
