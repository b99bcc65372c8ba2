"""The circuit breaker: a dead or hung Redis costs a few timeouts, then nothing at all.

Unit tests drive `CircuitBreaker` with an injected clock; store tests prove an open breaker does
no I/O by counting the connections a silent server accepts (a blackhole address would prove
little here: this sandbox's network completes a TCP connect to any address at once); the last
tests kill and restart a real redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from cache_middleware.config import Settings
from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage.factory import make_async_store, make_sync_store
from cache_middleware.storage.health import CircuitBreaker
from cache_middleware.storage.pipelined_get import ReplyError
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore
from tests.conftest import FakeAsyncRedisStore, fake_sync_store
from tests.redis_process import RedisProcess
from tests.test_storage_contract import OPS, Store

BREAKER_LOGGER = "cache_middleware.storage.breaker"
STORE_LOGGER = "cache_middleware.storage"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def logged(caplog: pytest.LogCaptureFixture, level: int, name: str = BREAKER_LOGGER) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


def state(breaker: CircuitBreaker) -> str:
    return breaker.state  # read afresh: mypy would narrow the property between reads


def down() -> OSError:
    return ConnectionRefusedError("connection refused")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> CircuitBreaker:
    caplog.set_level(logging.DEBUG, logger=BREAKER_LOGGER)
    return CircuitBreaker("redis://test", failures=3, cooldown=5.0, clock=clock)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failures):
        breaker.failed(down(), breaker.admit())
    assert state(breaker) == "open"


# -- the state machine -----------------------------------------------------------------------------


def test_opens_after_consecutive_failures_only(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.failed(down(), breaker.admit())
        breaker.failed(down(), breaker.admit())
        breaker.succeeded(breaker.admit())  # a success resets the count
    assert state(breaker) == "closed"
    assert breaker.opened_count == 0
    for _ in range(3):
        breaker.failed(TimeoutError("slow"), breaker.admit())
    assert state(breaker) == "open"
    assert breaker.opened_count == 1
    with pytest.raises(StoreUnavailable, match="circuit breaker open"):
        breaker.admit()
    assert breaker.rejected == 1


def test_error_replies_prove_the_server_is_there(breaker: CircuitBreaker) -> None:
    """OOM, READONLY, WRONGTYPE...: answered at once, so nothing to gain by failing fast."""
    for _ in range(10):
        breaker.failed(redis.exceptions.OutOfMemoryError("OOM"), breaker.admit())
        breaker.failed(ReplyError("ERR whatever"), breaker.admit())
    assert state(breaker) == "closed"
    breaker.failed(down(), breaker.admit())
    breaker.failed(down(), breaker.admit())
    breaker.failed(redis.exceptions.ResponseError("ERR"), breaker.admit())  # resets the count
    breaker.failed(down(), breaker.admit())
    assert state(breaker) == "closed"


def test_cooldown_then_one_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(4.9)
    with pytest.raises(StoreUnavailable):
        breaker.admit()
    assert state(breaker) == "open"
    clock.advance(0.1)
    assert state(breaker) == "half-open"
    assert breaker.admit() is True  # the probe
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            breaker.admit()  # everyone else, while the probe is out
    assert state(breaker) == "half-open"
    breaker.succeeded(True)
    assert state(breaker) == "closed"
    assert breaker.admit() is False
    assert breaker.rejected == 4


def test_failed_probe_reopens_for_a_full_cooldown(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    trip(breaker)
    clock.advance(5)
    breaker.failed(down(), breaker.admit())
    assert state(breaker) == "open"
    clock.advance(4.9)
    with pytest.raises(StoreUnavailable):
        breaker.admit()
    clock.advance(0.1)
    assert breaker.admit() is True
    assert breaker.opened_count == 1  # the same outage
    assert len(logged(caplog, logging.WARNING)) == 1
    assert len(logged(caplog, logging.DEBUG)) == 1  # the failed probe: debug only


def test_abandoned_probe_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A cancelled probe must not leave the breaker waiting forever for its outcome."""
    trip(breaker)
    clock.advance(5)
    assert breaker.admit() is True
    breaker.abandoned(True)
    assert state(breaker) == "half-open"
    assert breaker.admit() is True  # the next caller probes, without another cooldown
    breaker.abandoned(False)  # a non-probe leaving changes nothing
    with pytest.raises(StoreUnavailable):
        breaker.admit()


def test_late_answers_from_before_the_opening_change_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    early = [breaker.admit() for _ in range(2)]  # admitted while closed; answer later
    trip(breaker)
    breaker.succeeded(early[0])
    assert state(breaker) == "open"  # stale evidence does not close it
    clock.advance(5)
    assert breaker.admit() is True
    breaker.failed(down(), early[1])  # nor does a stale failure touch the probe
    assert state(breaker) == "half-open"
    breaker.succeeded(True)
    assert state(breaker) == "closed"


def test_each_transition_logged_once(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for outage in range(2):
        trip(breaker)
        for _ in range(50):
            with pytest.raises(StoreUnavailable):
                breaker.admit()
        clock.advance(5)
        breaker.succeeded(breaker.admit())
        for _ in range(50):
            breaker.succeeded(breaker.admit())
        warnings, infos = logged(caplog, logging.WARNING), logged(caplog, logging.INFO)
        assert len(warnings) == len(infos) == outage + 1
    assert "redis://test" in warnings[0] and "circuit breaker open" in warnings[0]
    assert "closed" in infos[0]
    assert breaker.opened_count == 2


def test_zero_failures_disables_it(clock: FakeClock) -> None:
    breaker = CircuitBreaker("x", failures=0, clock=clock)
    for _ in range(100):
        breaker.failed(down(), breaker.admit())
    assert state(breaker) == "closed"
    assert breaker.opened_count == 0


@pytest.mark.parametrize(("failures", "cooldown"), [(-1, 5.0), (5, -0.1)])
def test_rejects_bad_settings(failures: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=failures, cooldown=cooldown)


def test_one_probe_among_threads(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(5)
    start = threading.Barrier(16)
    outcomes: list[object] = []

    def contend() -> None:
        start.wait()
        try:
            outcomes.append(breaker.admit())
        except StoreUnavailable:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 1
    assert outcomes.count("refused") == 15


# -- stores: no I/O while open -----------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections, counts them, never answers: a hung Redis."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.02)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)

    def accepted(self) -> int:
        time.sleep(0.1)  # let the accept loop catch up with connections in the backlog
        return len(self.conns)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _store(url: str, mode: str, timeout: float = 0.1, **kwargs: Any) -> Store:
    raw: Any
    if mode == "async":
        raw = AsyncRedisStore(url, timeout=timeout, **kwargs)
    else:
        raw = RedisStore(url, timeout=timeout, **kwargs)
    return Store(raw, kind="redis", is_async=mode == "async")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_open_breaker_does_no_io(mode: str, silent: SilentServer, clock: FakeClock) -> None:
    store = _store(silent.url, mode, breaker_failures=2, breaker_clock=clock)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await store.get("k")  # each costs the 0.1 s timeout
        assert state(store.raw.breaker) == "open"
        connections = silent.accepted()
        assert connections >= 1  # the counter sees the store's connections
        if mode == "async":
            assert store.raw._getter is not None  # the pipelined HIT path was the one refused

        started = time.perf_counter()
        for i in range(20):
            method, *args = list(OPS.values())[i % len(OPS)]
            with pytest.raises(StoreUnavailable, match="circuit breaker open"):
                await getattr(store, method)(*args)
        assert time.perf_counter() - started < 0.05
        assert silent.accepted() == connections
        assert store.raw.monitor.failures == 2  # nothing was tried, so nothing failed
        assert store.raw.breaker.rejected == 20
    finally:
        await store.close()


async def test_half_open_lets_one_probe_through_concurrent_callers(
    silent: SilentServer, clock: FakeClock
) -> None:
    store = AsyncRedisStore(silent.url, timeout=0.1, breaker_failures=1, breaker_clock=clock)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        connections = silent.accepted()
        clock.advance(5)
        assert state(store.breaker) == "half-open"
        tasks = [asyncio.create_task(store.get("k")) for _ in range(10)]
        await asyncio.sleep(0)  # every task has run up to its first await
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 9
        assert all(isinstance(t.exception(), StoreUnavailable) for t in refused)
        [probe] = [t for t in tasks if not t.done()]
        with pytest.raises(StoreUnavailable):
            await probe  # the silent server: a timeout, so the breaker opens again
        assert state(store.breaker) == "open"
        assert store.breaker.opened_count == 1
        assert silent.accepted() == connections + 1  # the probe's connection, and no other
    finally:
        await store.aclose()


async def test_cancelled_probe_lets_the_next_caller_probe(
    silent: SilentServer, clock: FakeClock
) -> None:
    store = AsyncRedisStore(silent.url, timeout=0.1, breaker_failures=1, breaker_clock=clock)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        clock.advance(5)
        probe = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        with pytest.raises(StoreUnavailable):
            await store.get("k")  # admitted as the new probe: it times out, not refused
        assert store.breaker.rejected == 0
        assert store.monitor.failures == 2
    finally:
        await store.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_store_recovers_through_the_probe(
    mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """fakeredis' `connected = False` fails every command as a vanished Redis would."""
    caplog.set_level(logging.INFO, logger=STORE_LOGGER)
    server = fakeredis.FakeServer()
    raw: Any = FakeAsyncRedisStore(server) if mode == "async" else fake_sync_store(server)
    raw.breaker = CircuitBreaker(raw.monitor.name, failures=3, cooldown=5.0, clock=clock)
    store = Store(raw, kind="fakeredis", is_async=mode == "async")
    try:
        await store.set("k", b"v", 60)
        server.connected = False
        for _ in range(10):
            with pytest.raises(StoreUnavailable):
                await store.get("k")
        assert raw.monitor.failures == 3
        server.connected = True
        with pytest.raises(StoreUnavailable):
            await store.get("k")  # back, but the breaker does not know until it probes
        clock.advance(5)
        assert await store.get("k") == b"v"  # the probe
        assert state(raw.breaker) == "closed"
        assert await store.delete("k") == 1
        assert await store.get("k") is None
    finally:
        await store.close()
    assert len(logged(caplog, logging.WARNING)) == 1
    assert len(logged(caplog, logging.INFO)) == 1
    assert len(logged(caplog, logging.WARNING, STORE_LOGGER)) == 1
    assert len(logged(caplog, logging.INFO, STORE_LOGGER)) == 1


# -- a real redis-server, killed and restarted ------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_killed_and_restarted_redis(
    mode: str, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_process
    caplog.set_level(logging.INFO, logger=STORE_LOGGER)
    cooldown = 0.3
    # A timeout a loaded machine's first connection makes (a stopped server refuses at once).
    store = _store(server.url, mode, timeout=0.5, breaker_failures=3, breaker_cooldown=cooldown)
    try:
        await store.set("k", b"v", 60)
        assert await store.get("k") == b"v"
        server.stop()
        started = time.perf_counter()
        for _ in range(20):
            with pytest.raises(StoreUnavailable):
                await store.get("k")
        assert time.perf_counter() - started < 1.0
        assert state(store.raw.breaker) == "open"
        assert store.raw.monitor.failures == 3
        server.start()  # same port, empty (no persistence)
        await asyncio.sleep(cooldown)
        assert await store.get("k") is None  # the probe: the restarted server answers
        assert state(store.raw.breaker) == "closed"
        await store.set("k", b"again", 60)
        assert await store.get("k") == b"again"
    finally:
        await store.close()
    opened = logged(caplog, logging.WARNING)
    closed = logged(caplog, logging.INFO)
    assert len(opened) == 1 and "circuit breaker open" in opened[0], opened
    assert len(closed) == 1 and "circuit breaker closed" in closed[0], closed
    assert store.raw.breaker.opened_count == 1


# -- wiring --------------------------------------------------------------------------------------


def test_factory_passes_the_breaker_settings() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", breaker_failures=2, breaker_cooldown=1.5)
    for store in (make_async_store(settings), make_sync_store(settings)):
        assert isinstance(store, (AsyncRedisStore, RedisStore))
        assert (store.breaker.failures, store.breaker.cooldown) == (2, 1.5)
