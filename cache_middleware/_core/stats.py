"""In-process counters: plain integer increments, never a storage write per request."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Counters"]


@dataclass(slots=True)
class Counters:
    hits: int = 0  # fresh entries replayed (304s included)
    stale_hits: int = 0  # entries replayed stale (stale-while-revalidate / stale-if-error)
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    errors: int = 0  # store operations that failed (the request was still answered)
    coalesced: int = 0  # requests answered from another request's fill
    invalidations: int = 0  # unsafe-method invalidations that ran
    lost_leases: int = 0  # fills not written because an invalidation came first

    def snapshot(self) -> dict[str, int | float]:
        data: dict[str, int | float] = dict(asdict(self))
        looked_up = self.hits + self.stale_hits + self.misses
        data["hit_ratio"] = (
            round((self.hits + self.stale_hits) / looked_up, 4) if looked_up else 0.0
        )
        return data
