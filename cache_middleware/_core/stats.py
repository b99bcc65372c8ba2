"""In-process counters: plain integer increments, never a storage write per request."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Counters", "StatsBook", "summarize"]


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
    store_full: int = 0  # writes a full store refused (maxmemory under noeviction)

    def snapshot(self) -> dict[str, int | float]:
        data: dict[str, int | float] = dict(asdict(self))
        looked_up = self.hits + self.stale_hits + self.misses
        data["hit_ratio"] = (
            round((self.hits + self.stale_hits) / looked_up, 4) if looked_up else 0.0
        )
        return data


_FIELDS = tuple(Counters.__dataclass_fields__)
MAX_VENUES = 1000  # venues come from requests: beyond this many, they are counted as "_other"


class StatsBook:
    """Counters for the whole middleware, per route and per venue, kept in process.

    `bump()` is a few integer increments; `drain()` hands the increments since the last drain
    to a periodic flush (one batched write every few seconds, never a write per request).
    """

    def __init__(self) -> None:
        self.total = Counters()
        self.routes: dict[str, Counters] = {}
        self.venues: dict[str, Counters] = {}
        self._flushed: dict[str, int] = {}

    def bump(self, name: str, route: str | None = None, venue: str | None = None) -> None:
        total = self.total
        setattr(total, name, getattr(total, name) + 1)
        if route is not None:
            counters = self.routes.get(route)
            if counters is None:
                counters = self.routes[route] = Counters()
            setattr(counters, name, getattr(counters, name) + 1)
        if venue is not None:
            counters = self.venues.get(venue)
            if counters is None:
                if len(self.venues) >= MAX_VENUES:
                    venue = "_other"
                counters = self.venues.setdefault(venue, Counters())
            setattr(counters, name, getattr(counters, name) + 1)

    def hit(self, route: str) -> None:
        """`bump("hits", route)` spelled out for the short way to a HIT, the request this
        process serves most: attribute increments, not a getattr and setattr by name."""
        self.total.hits += 1
        counters = self.routes.get(route)
        if counters is None:
            counters = self.routes[route] = Counters()
        counters.hits += 1

    def fields(self) -> dict[str, int]:
        """Every counter as a flat `scope|name|field` map (scope: total, route or venue)."""
        flat = {f"total||{f}": getattr(self.total, f) for f in _FIELDS}
        for scope, table in (("route", self.routes), ("venue", self.venues)):
            for name, counters in list(table.items()):
                for f in _FIELDS:
                    value = getattr(counters, f)
                    if value:
                        flat[f"{scope}|{name}|{f}"] = value
        return flat

    def drain(self) -> dict[str, int]:
        """The increments since the last drain (for a shared, cross-process tally)."""
        now = self.fields()
        deltas = {k: v - self._flushed.get(k, 0) for k, v in now.items()}
        self._flushed = now
        return {k: v for k, v in deltas.items() if v}

    def undrain(self, deltas: dict[str, int]) -> None:
        """Give back increments a failed flush could not write, so they go out next time."""
        for key, value in deltas.items():
            self._flushed[key] = self._flushed.get(key, 0) - value


def summarize(flat: dict[str, int]) -> dict[str, object]:
    """A flat `scope|name|field` map (one process's or the shared tally) as the /stats shape."""
    total: dict[str, int] = dict.fromkeys(_FIELDS, 0)
    routes: dict[str, dict[str, int]] = {}
    venues: dict[str, dict[str, int]] = {}
    for key, value in flat.items():
        scope, _, rest = key.partition("|")
        name, _, field_name = rest.rpartition("|")
        if field_name not in total:
            continue
        if scope == "total":
            total[field_name] += value
        elif scope in ("route", "venue"):
            table = routes if scope == "route" else venues
            table.setdefault(name, dict.fromkeys(_FIELDS, 0))[field_name] += value
    out: dict[str, object] = {**total, "hit_ratio": _ratio(total)}
    out["routes"] = {name: {**c, "hit_ratio": _ratio(c)} for name, c in sorted(routes.items())}
    out["venues"] = {name: {**c, "hit_ratio": _ratio(c)} for name, c in sorted(venues.items())}
    return out


def _ratio(c: dict[str, int]) -> float:
    served = c["hits"] + c["stale_hits"]
    looked_up = served + c["misses"]
    return round(served / looked_up, 4) if looked_up else 0.0
