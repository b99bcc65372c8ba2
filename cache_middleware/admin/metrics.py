"""GET /metrics: the stats as Prometheus text, built with prometheus-client."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .._core.stats import Counters

__all__ = ["render_metrics"]

# One counter family per field of the stats' counters, so a new counter is exported as it is added.
_COUNTERS = tuple(counter.name for counter in fields(Counters))


def render_metrics(stats: dict[str, Any]) -> tuple[bytes, str]:
    """(body, content type). A fresh registry per call: the figures are the shared tally's."""
    from prometheus_client import CollectorRegistry, Gauge
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    registry = CollectorRegistry()

    class _Tally:
        def collect(self) -> Any:
            for name in _COUNTERS:
                family = CounterMetricFamily(
                    f"cache_middleware_{name}",
                    f"Cache {name.replace('_', ' ')} (all processes)",
                    labels=["route"],
                )
                for route, figures in stats.get("routes", {}).items():
                    family.add_metric([route], figures.get(name, 0))
                family.add_metric(["_all"], stats.get(name, 0))
                yield family

    registry.register(_Tally())
    Gauge("cache_middleware_hit_ratio", "Served from cache / looked up", registry=registry).set(
        stats.get("hit_ratio", 0.0)
    )
    Gauge("cache_middleware_entries", "Entries under the key prefix", registry=registry).set(
        stats.get("entries") or 0
    )
    Gauge("cache_middleware_bytes", "Bytes under the key prefix", registry=registry).set(
        stats.get("bytes") or 0
    )
    breaker = (stats.get("backend") or {}).get("breaker")
    Gauge(
        "cache_middleware_breaker_open",
        "1 while the store's circuit breaker is open",
        registry=registry,
    ).set(1 if breaker == "open" else 0)
    return generate_latest(registry), CONTENT_TYPE_LATEST
