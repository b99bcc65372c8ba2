"""In-process counters: plain integer increments, never a storage write per request."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    errors: int = 0

    def snapshot(self) -> dict[str, int | float]:
        data: dict[str, int | float] = dict(asdict(self))
        looked_up = self.hits + self.misses
        data["hit_ratio"] = round(self.hits / looked_up, 4) if looked_up else 0.0
        return data
