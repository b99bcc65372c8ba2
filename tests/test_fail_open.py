"""Fail open (DESIGN invariant 3): Redis down, stopped mid-run, paused or full costs BYPASS
responses and a bounded delay, never an error page; the outage is logged once."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pytest
import redis

from .adapters import Harness
from .conftest import _free_port
from .redis_process import RedisProcess

CONFIG: dict[str, Any] = {
    "redis_timeout": 0.1,
    "breaker_cooldown": 0.3,
    "routes": {"/api": {"ttl": 60}},
}


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def real(url: str) -> dict[str, Any]:
    return {"url": url, "async_store": None, "sync_store": None}


async def timed(h: Harness, target: str = "/api/events") -> tuple[Any, float]:
    start = time.perf_counter()
    reply = await h.request("GET", target)
    return reply, time.perf_counter() - start


async def test_unreachable_redis_bypasses_and_logs_once(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cache_middleware.storage")
    h = Harness(adapter, CONFIG, real(f"redis://127.0.0.1:{_free_port()}/0"))
    for _ in range(20):
        reply, elapsed = await timed(h)
        assert reply.status == 200
        assert reply.x_cache == "BYPASS"
        assert elapsed < 0.5
    warnings = [r for r in caplog.records if r.name == "cache_middleware.storage"]
    assert len(warnings) == 1
    assert "unavailable" in warnings[0].getMessage()
    assert h.middleware.stats.errors == 20
    assert h.state.calls == 20
    await h.aclose()


async def test_redis_stopped_mid_run_and_restarted(
    adapter: str, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cache_middleware.storage")
    h = Harness(adapter, CONFIG, real(redis_process.url))
    assert (await h.request("GET", "/api/events")).x_cache == "MISS"
    assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    redis_process.stop()
    for _ in range(10):
        reply, elapsed = await timed(h)
        assert (reply.status, reply.x_cache) == (200, "BYPASS")
        assert elapsed < 0.5
    redis_process.start()  # same port, empty (no persistence)
    time.sleep(0.35)  # the circuit breaker's cool-down: then one probe closes it
    states = [(await h.request("GET", "/api/events")).x_cache for _ in range(3)]
    assert states == ["MISS", "HIT", "HIT"]
    messages = [r.getMessage() for r in caplog.records if r.name == "cache_middleware.storage"]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    await h.aclose()


async def test_redis_stopped_on_a_route_that_mostly_misses(
    adapter: str, redis_process: RedisProcess
) -> None:
    """The lookup that also takes the lease (routes that mostly miss) fails open the same way."""
    config = {**CONFIG, "routes": {"/api": {"ttl": 60, "vary_by": ["n"]}}}
    h = Harness(adapter, config, real(redis_process.url))
    for n in range(3):
        assert (await h.request("GET", f"/api/events?n={n}")).x_cache == "MISS"
    assert h.middleware.trend.mostly_misses("/api")
    redis_process.stop()
    for n in range(3, 13):
        reply, elapsed = await timed(h, f"/api/events?n={n}")
        assert (reply.status, reply.x_cache) == (200, "BYPASS")
        assert elapsed < 0.5
    redis_process.start()
    time.sleep(0.35)  # the breaker's cool-down
    states = [(await h.request("GET", f"/api/events?n={n}")).x_cache for n in (20, 20, 21)]
    assert states == ["MISS", "HIT", "MISS"]
    await h.aclose()


async def test_paused_redis_costs_at_most_the_timeout(
    adapter: str, redis_process: RedisProcess
) -> None:
    h = Harness(adapter, CONFIG, real(redis_process.url))
    await h.request("GET", "/api/events")
    redis_process.client().execute_command("CLIENT", "PAUSE", "1500", "ALL")
    try:
        for _ in range(3):
            reply, elapsed = await timed(h)
            assert (reply.status, reply.x_cache) == (200, "BYPASS")
            # 0.1 s timeout (connect or read) plus the app; far below the 1.5 s pause.
            assert elapsed < 0.6, elapsed
    finally:
        redis_process.client().execute_command("CLIENT", "UNPAUSE")
    await h.aclose()


async def test_full_redis_serves_and_never_errors(
    adapter: str, redis_process: RedisProcess
) -> None:
    client = redis_process.client()
    client.config_set("maxmemory-policy", "noeviction")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 1024))
    # Fill it; a refusal means it is already full, which is the state we want.
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        client.set("filler", b"x" * 4096)
    h = Harness(adapter, CONFIG, real(redis_process.url))
    for i in range(5):
        reply = await h.request("GET", f"/api/events?page={i}")
        assert reply.status == 200
        # Looked up fine; the fill lease (a write) is refused with OOM: answered uncached.
        assert reply.x_cache == "BYPASS"
    assert h.middleware.stats.errors >= 1
    assert h.middleware.stats.stores == 0
    await h.aclose()
