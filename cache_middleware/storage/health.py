"""Outage bookkeeping and the circuit breaker, shared by the sync and async Redis stores.

Failing open is a named choice (DESIGN invariant 3): the first failure of an outage is logged as
a warning, the recovery once as info, and everything between is only counted, so a dead Redis
does not flood the logs at request rate. The circuit breaker goes further: after a few
consecutive failures it stops trying for a while, so a dead or blackholed Redis stops costing
each request a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

import redis.exceptions

from ..errors import StoreFull, StoreUnavailable
from .resp import ReplyError

__all__ = [
    "FOREIGN_ERRORS",
    "RETRIES",
    "RETRY_ERRORS",
    "BreakerState",
    "CircuitBreaker",
    "OutageMonitor",
    "SlowStore",
    "SlowWatch",
    "is_server_reply",
    "is_store_full",
    "is_wrong_type",
]

# redis-py's retry policy, shared by both stores: one immediate retry, on a broken connection
# only. That replaces a pooled connection the server dropped (a restart, an idle timeout) at the
# cost of one reconnect, and never repeats a timeout: a slow Redis costs one `redis_timeout`.
RETRIES = 1
RETRY_ERRORS: tuple[type[redis.exceptions.RedisError], ...] = (redis.exceptions.ConnectionError,)

logger = logging.getLogger("cache_middleware.storage")
# A logger of its own, so breaker transitions can be routed or silenced apart from the outage
# messages above (which carry the cause); both fire once per outage, never per request.
breaker_logger = logging.getLogger("cache_middleware.storage.breaker")

# What a Redis call can raise when the server is down, slow, full or refusing. The stores
# translate these and any other exception alike (a client that cannot be built from its URL,
# a bug of ours) into StoreUnavailable, which callers fail open on: the app never sees a 500
# because of the cache. This list only decides which outages are logged with a traceback.
FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    # redis-py's Cluster client raises this (not a RedisError) when it cannot map the slots:
    # no seed node answers, a slot has no primary during a failover.
    redis.exceptions.RedisClusterException,
    ReplyError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    # asyncio's "Event loop is closed" / "attached to a different loop": a client bound to
    # another event loop is as unusable as a dead server, and must fail open the same way.
    RuntimeError,
)


def is_wrong_type(exc: BaseException) -> bool:
    """A non-string value sits under the key: foreign data, not an outage."""
    return str(exc).startswith("WRONGTYPE")


# Error replies that do mean the store is not serving: a cluster without a primary for the slot
# (CLUSTERDOWN), or redirections still unresolved after redis-py refreshed its slot map (MOVED,
# ASK, TRYAGAIN during a failover or a resharding). They count toward the breaker.
_TOPOLOGY_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
)


def is_server_reply(exc: BaseException) -> bool:
    """Redis answered, with an error (OOM, WRONGTYPE, NOSCRIPT...): reachable, not an outage of
    the kind a circuit breaker guards against, since the answer came back at once."""
    return isinstance(exc, (redis.exceptions.ResponseError, ReplyError)) and not isinstance(
        exc, _TOPOLOGY_ERRORS
    )


def is_store_full(exc: BaseException) -> bool:
    """Redis refused a write because it reached `maxmemory` under `noeviction` (an OOM reply,
    from a command or from inside a fill script): full, not down; reads still work."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    replied = isinstance(exc, (redis.exceptions.ResponseError, ReplyError))
    return replied and str(exc).startswith("OOM")


class SlowStore(Exception):
    """Round trips slower than `slow_store_ms`: the reason a breaker opened, never raised."""


# How many consecutive round trips over `slow_store_ms` open the breaker. One slow reply is
# noise (a GIL hand-off in a busy threaded worker, a page fault); twenty in a row is a store
# that makes every HIT slower than the app would be alone.
SLOW_STREAK = 20


class SlowWatch:
    """Counts consecutive slow round trips and opens the breaker on a streak.

    The lean connections measure their round trip with the clock read they already make and
    call `seen()` only when it is over the bound; a fast one resets `streak` (one attribute
    read per call). `bound` is in seconds; 0 disables the watch."""

    def __init__(self, breaker: CircuitBreaker, bound: float, streak: int = SLOW_STREAK) -> None:
        self.breaker = breaker
        self.bound = bound if bound > 0 else float("inf")
        self.needed = streak
        self.streak = 0
        self.trips = 0

    def seen(self, elapsed: float, threaded: bool = False) -> None:
        """A round trip over the bound. `threaded`: measured by a thread, whose time includes
        its waits for the GIL; a moment's wait for the GIL now tells a busy process (many
        threads on few cores: measured 80 ms per round trip with 64 threads per gunicorn
        worker on 2 cores, Redis answering in microseconds) from a slow store, and the
        former is not counted. Paid only on slow round trips."""
        if threaded:
            before = time.monotonic()
            time.sleep(0)  # gives up the GIL and takes it back: as long as the queue for it
            if time.monotonic() - before > self.bound / 4:
                return
        self.streak += 1  # racy between threads: a count off by one is harmless here
        if self.streak >= self.needed:
            self.streak = 0
            if self.breaker.trip(
                SlowStore(
                    f"{self.needed} consecutive round trips over {self.bound * 1000:.0f} ms"
                    f" (last {elapsed * 1000:.0f} ms)"
                )
            ):
                self.trips += 1

    def too_slow(self, elapsed: float) -> bool:
        return elapsed > self.bound


# A full store is over when a write succeeds this long after the last refusal.
FULL_SETTLE = 1.0

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Fail fast while the store is down, instead of paying a timeout per request.

    After `failures` consecutive failed operations the breaker opens: `admit()` raises
    `StoreUnavailable` at once, with no I/O, for `cooldown` seconds. Then it is half-open: the
    next operation is admitted as the single probe (others are still refused while it runs);
    its success closes the breaker, its failure opens it for another cooldown.

    Only failures that cost time or reach nothing count (timeouts, refused or dropped
    connections); an error reply proves the server is there and counts as a success.
    `failures=0` disables the breaker. Thread-safe; the closed-state fast path takes no lock.

    Usage, around one store operation:
        probe = breaker.admit()          # may raise StoreUnavailable
        try: ... except FOREIGN_ERRORS as exc: breaker.failed(exc, probe)
        except BaseException: breaker.abandoned(probe)   # cancelled: frees the probe slot
        else: breaker.succeeded(probe)
    """

    def __init__(
        self,
        name: str,
        failures: int = 5,
        cooldown: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 0:
            raise ValueError(f"breaker failures must be >= 0 (0 disables it), got {failures!r}")
        if cooldown < 0:
            raise ValueError(f"breaker cooldown must be >= 0 seconds, got {cooldown!r}")
        self.name = name
        self.failures = failures
        self.cooldown = cooldown
        self.opened_count = 0  # times it opened from closed (outages), not re-opens after probes
        self.rejected = 0  # operations refused without I/O
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = True  # the fast-path flag: read without the lock
        self._consecutive = 0
        self._retry_at = 0.0  # while open: when the next probe may go
        self._probing = False  # half-open: a probe is in flight
        self._refusal = f"{name}: circuit breaker open, failing fast"

    @property
    def state(self) -> BreakerState:
        if self._closed:
            return "closed"
        with self._lock:
            if self._probing or self._clock() >= self._retry_at:
                return "half-open"
            return "open"

    def admit(self) -> bool:
        """Let one operation through, or raise `StoreUnavailable` without I/O.

        Returns True when the operation is the half-open probe: pass that to the outcome."""
        if self._closed:
            return False
        with self._lock:
            if self._closed:  # closed by a probe while we waited for the lock
                return False
            if self._probing or self._clock() < self._retry_at:
                self.rejected += 1
                raise StoreUnavailable(self._refusal)
            self._probing = True
            return True

    def succeeded(self, probe: bool) -> None:
        if self._closed:
            if self._consecutive:  # one attribute read per success on the hot path
                with self._lock:
                    self._consecutive = 0
            return
        if not probe:
            # Admitted before the breaker opened and answered late: too old to prove recovery,
            # and closing here would let a burst through while the probe is still out.
            return
        with self._lock:
            self._closed = True
            self._probing = False
            self._consecutive = 0
        breaker_logger.info("cache store %s: circuit breaker closed, store answering", self.name)

    def failed(self, exc: BaseException, probe: bool) -> None:
        if is_server_reply(exc):
            self.succeeded(probe)
            return
        if self.failures == 0:
            return
        if probe:
            with self._lock:
                self._probing = False
                self._retry_at = self._clock() + self.cooldown
            # Still the same outage: the warning went out when it opened.
            breaker_logger.debug("cache store %s: probe failed, staying open", self.name)
            return
        with self._lock:
            if not self._closed:
                return  # a straggler admitted before it opened: already counted as an outage
            if getattr(exc, "collateral", False):
                # Failed because another request's failure dropped the shared connection:
                # one stall is one event, however many requests were queued behind it.
                return
            self._consecutive += 1
            if self._consecutive < self.failures:
                return
            self._closed = False
            self._consecutive = 0
            self._retry_at = self._clock() + self.cooldown
            self.opened_count += 1
        breaker_logger.warning(
            "cache store %s: circuit breaker open after %d consecutive failures (last: %s: %s);"
            " failing fast, probing every %.1fs",
            self.name,
            self.failures,
            exc.__class__.__name__,
            exc,
            self.cooldown,
        )

    def trip(self, exc: BaseException) -> bool:
        """Open now, for a reason that is not a failed operation (a store too slow to be worth
        asking). True when it opened; False when it was open already or is disabled."""
        if self.failures == 0:
            return False
        with self._lock:
            if not self._closed:
                return False
            self._closed = False
            self._consecutive = 0
            self._retry_at = self._clock() + self.cooldown
            self.opened_count += 1
        breaker_logger.warning(
            "cache store %s: circuit breaker open: %s: %s; failing fast, probing every %.1fs",
            self.name,
            exc.__class__.__name__,
            exc,
            self.cooldown,
        )
        return True

    def abandoned(self, probe: bool) -> None:
        """The operation ended without an answer either way (cancelled, or a bug of ours)."""
        if probe:
            with self._lock:
                self._probing = False  # the next caller probes; no new cooldown


class OutageMonitor:
    """Logs an outage once and its end once.

    `settle` (seconds): a success ends the outage only when the last failure is at least that
    old. A Redis Cluster with one primary down answers for the other primaries' slots all the
    while, so without it every success between two failures would log a recovery and the next
    failure a new outage."""

    def __init__(
        self, name: str, *, settle: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.down = False
        self.failures = 0
        self.full = False  # writes refused (maxmemory under noeviction); reads still served
        self.full_refusals = 0  # refused writes, all time
        self._unreported_refusals = 0  # refused writes not yet added to the shared stats
        self._last_refusal = 0.0
        self.settle = settle
        self._clock = clock
        self._last_failure = 0.0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Record a failure and return the translated error for the caller to raise."""
        with self._lock:
            self.failures += 1
            first = not self.down
            self.down = True
            if self.settle:
                self._last_failure = self._clock()
        if first:
            logger.warning(
                "cache store %s unavailable, serving uncached until it recovers: %s: %s",
                self.name,
                exc.__class__.__name__,
                exc,
                # Not a network failure (a client that cannot be built, a bug): the traceback,
                # once per outage, is what finding it takes.
                exc_info=None if isinstance(exc, FOREIGN_ERRORS) else exc,
            )
        return StoreUnavailable(f"{self.name}: {exc.__class__.__name__}: {exc}")

    def refused(self, exc: BaseException) -> StoreFull:
        """Record a write Redis refused for lack of memory; return the error to raise. One
        warning when the store becomes full, none per refusal: a full store refuses every fill."""
        with self._lock:
            self.full_refusals += 1
            self._unreported_refusals += 1
            self._last_refusal = self._clock()
            first = not self.full
            self.full = True
        if first:
            logger.warning(
                "cache store %s full (maxmemory reached): skipping fills, still serving HITs,"
                " until it accepts writes again: %s: %s",
                self.name,
                exc.__class__.__name__,
                exc,
            )
        return StoreFull(f"{self.name}: full: {exc}")

    def wrote(self) -> None:
        """A write succeeded: the end of a full spell, once no refusal came for FULL_SETTLE s
        (a store at its limit accepts a small write now and then between refusals)."""
        if not self.full:
            return
        with self._lock:
            if not self.full or self._clock() - self._last_refusal < FULL_SETTLE:
                return
            self.full = False
        logger.info("cache store %s accepting writes again", self.name)

    def take_refusals(self) -> int:
        """Refusals since the last call, for the shared stats (`store_full`)."""
        with self._lock:
            count, self._unreported_refusals = self._unreported_refusals, 0
        return count

    def give_back_refusals(self, count: int) -> None:
        with self._lock:
            self._unreported_refusals += count

    def succeeded(self) -> None:
        # Called on every success: one attribute read unless we are recovering.
        if self.down:
            with self._lock:
                if not self.down:
                    return
                if self.settle and self._clock() - self._last_failure < self.settle:
                    return  # other parts of the store still failing: the outage goes on
                self.down = False
            logger.info("cache store %s reachable again", self.name)
