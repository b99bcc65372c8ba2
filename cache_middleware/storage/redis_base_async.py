"""What the single-server Redis stores share: every operation, through the circuit breaker.

redis_base_sync.py is generated from redis_base_async.py by scripts/unasync.py: edit the async
one, then run `python scripts/unasync.py`. The concrete stores (redis_async.py, redis_sync.py) add
what differs: how the redis-py client is built and closed, the connection the HIT path reads
through (pipelined_get.py's pipelined connection on the event loop, direct_get.py's lean
blocking sockets for threads), and what they do once an outage ends.

Short timeouts and no redis-py retry storms: a slow or dead Redis must cost a request a bounded
few milliseconds, then the caller fails open. Every operation, the HIT path's GET included, goes
through the circuit breaker (health.py): a dead Redis costs nothing while it is open.
"""

from __future__ import annotations

import abc
import asyncio  # unasync: async only
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    Fill,
    Indexed,
    cache_epoch,
    check_fill_ttl,
    get_then_acquire_async,
    is_epoch,
    key_epochs,
    literal_head,
    with_refusals,
)
from .health import (
    RETRIES,
    RETRY_ERRORS,
    CircuitBreaker,
    OutageMonitor,
    SlowStore,
    SlowWatch,
    is_store_full,
    is_wrong_type,
)
from .pipelined_get import PipelinedGetter
from .resp import ReplyError
from .scripts import (
    ACQUIRE_FILL,
    DELETE_INDEX,
    DELETE_KEYS,
    DRAIN_INDEX,
    LOOKUP_OR_ACQUIRE,
    RELEASE_FILL,
    SET_INDEXED,
    STORE_FILL,
    Script,
    acquire_fill_call,
    detached_index_name,
    evalsha_command,
    lookup_or_acquire_call,
    lookup_result,
    peek_result,
    run_async,
    set_indexed_call,
    store_fill_call,
)
from .url_parts import pipelined_params, safe_url

__all__ = ["AsyncRedisBase"]

T = TypeVar("T")


class AsyncRedisBase(abc.ABC):
    """A Redis store but for its client, its lean connection and its recovery (see above)."""

    # Whether `get_or_acquire` may run as one script: the entry, its lease and the epoch on one
    # server (a Cluster spreads them over slots).
    MERGES_LOOKUP = True
    # Whether plain TCP URLs may read through the lean connection, which speaks to one server.
    LEAN_CONNECTION = True
    # How long an outage must have been quiet before a success ends it (health.OutageMonitor).
    OUTAGE_SETTLE = 0.0

    _loop: asyncio.AbstractEventLoop | None = None  # unasync: async only

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.1,
        fast_get: bool = True,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        breaker_clock: Callable[[], float] = time.monotonic,
        slow_after: float = 0.0,
        **redis_kwargs: Any,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.monitor = OutageMonitor(safe_url(url), settle=self.OUTAGE_SETTLE)
        self.breaker = CircuitBreaker(
            safe_url(url), breaker_failures, breaker_cooldown, clock=breaker_clock
        )
        # `slow_after` (seconds, 0 = off): round trips slower than this, in a streak, open the
        # breaker; measured by the lean connection, with the clock reads its calls make anyway.
        self.slow = SlowWatch(self.breaker, slow_after)
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS),
            "health_check_interval": 0,
            **redis_kwargs,
        }
        # Plain TCP URLs read through the lean connection (the HIT path); the rest use redis-py,
        # as do stores given redis-py options it would not honour (credentials, TLS...).
        lean = fast_get and self.LEAN_CONNECTION and not redis_kwargs
        self._fast_params = pipelined_params(url, timeout) if lean else None
        self._getter: PipelinedGetter | None = None
        self._client: Any = None

    @property
    @abc.abstractmethod
    def client(self) -> Any:
        """The redis-py client, built on first use."""

    @abc.abstractmethod
    def _new_client(self) -> Any:
        """A new redis-py client for `url`."""

    @abc.abstractmethod
    async def _recovered(self) -> None:
        """The breaker closed after an outage: the idle connections from before it go."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connections; the store may be used again afterwards (it reconnects)."""

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:  # unasync: async only
        """Fresh connections for a new event loop (the old loop's cannot be used from this one)."""
        raise NotImplementedError

    async def _run(self, op: Callable[[], Awaitable[T]], *, writes: bool = False) -> T:
        """One store operation through the breaker, with failures translated and counted.
        `writes`: the operation stores data, so its success ends a full spell."""
        probe = self.breaker.admit()
        if probe:
            started = time.monotonic()
        try:
            result = await op()
        except Exception as exc:  # FOREIGN_ERRORS, and whatever building the client raised
            if is_store_full(exc):
                self.breaker.succeeded(probe)  # it answered: full is not down
                if probe:
                    await self._recovered()
                raise self.monitor.refused(exc) from exc
            self.breaker.failed(exc, probe)
            raise self.monitor.failed(exc) from exc
        except BaseException:
            self.breaker.abandoned(probe)  # cancelled: a probe must not hold its slot forever
            raise
        if probe:
            await self._probe_answered(time.monotonic() - started)
        else:
            self.breaker.succeeded(probe)
        self.monitor.succeeded()
        if writes and self.monitor.full:  # one attribute read per write otherwise
            self.monitor.wrote()
        return result

    async def _probe_answered(self, elapsed: float) -> None:
        """The half-open probe got its answer: too slow keeps the breaker open, otherwise it
        closes and the idle connections from before the outage go (the server dropped them, or
        will have: one dead socket per probe kept a worker uncached for half a minute)."""
        if self.slow.too_slow(elapsed):
            self.breaker.failed(SlowStore(f"probe answered in {elapsed * 1000:.0f} ms"), True)
            return
        self.breaker.succeeded(True)
        await self._recovered()

    async def get(self, key: str) -> bytes | None:
        # The HIT path: inline rather than through _run, to spare it a closure per call.
        breaker = self._breaker_for(key)
        probe = breaker.admit()
        if probe:
            started = time.monotonic()
        try:
            if self._loop is not asyncio.get_running_loop():  # unasync: async only
                self._bind(asyncio.get_running_loop())
            getter = self._getter
            value = (
                await getter.get(key.encode()) if getter is not None else await self.client.get(key)
            )
        except Exception as exc:  # see _run: never an error of ours reaching the app
            if is_wrong_type(exc):
                breaker.succeeded(probe)  # Redis answered: reachable
                return b""  # not an entry: the caller reads it as corrupt, deletes it, MISSes
            breaker.failed(exc, probe)
            raise self.monitor.failed(exc) from exc
        except BaseException:
            breaker.abandoned(probe)
            raise
        if probe and breaker is self.breaker:
            await self._probe_answered(time.monotonic() - started)
        else:
            breaker.succeeded(probe)
        self.monitor.succeeded()
        return value

    def _breaker_for(self, key: str) -> CircuitBreaker:
        """The breaker a read of `key` goes through: the store's. The cluster stores answer
        with the breaker of the primary that owns the key (redis_cluster.py)."""
        return self.breaker

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self._run(lambda: self.client.set(key, value, ex=ttl), writes=True)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        targets = [key for key in keys if not is_epoch(key)]  # a counter never goes back
        epochs = key_epochs(targets)
        count = await self._run(
            lambda: run_async(self.client, DELETE_KEYS, [*epochs, *targets], [len(epochs)])
        )
        return int(count)

    async def forget(self, key: str) -> None:
        """Drop one unreadable value: housekeeping, not an invalidation (the epoch stays)."""
        await self._run(lambda: self.client.unlink(key))

    async def delete_matching(self, pattern: str) -> int:
        """SCAN + UNLINK in batches, never KEYS: Redis stays responsive on a large keyspace."""

        async def op() -> int:
            client = self.client
            # The epoch moves before the scan, not after: a fill that read its data before this
            # call and stores after the scan went past its key would otherwise survive it.
            scoped = cache_epoch(literal_head(pattern))
            if scoped is not None:
                epochs = [EPOCH_KEY, scoped]
            else:  # a glob that may reach any cache: every cache's fills are void
                members = await client.smembers(EPOCH_REGISTRY)
                epochs = list(dict.fromkeys([EPOCH_KEY, *(_text(m) for m in members)]))
            pipe = client.pipeline(transaction=False)
            for epoch in epochs:
                pipe.incr(epoch)
            await pipe.execute()
            deleted = 0
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
                if is_epoch(key.decode("utf-8", "surrogateescape")):
                    continue
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    deleted += int(await client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(await client.unlink(*batch))
            return deleted

        return await self._run(op)

    async def ping(self) -> bool:
        await self._run(lambda: self.client.ping())
        return True

    async def epoch(self) -> int:
        value = await self._run(lambda: self.client.get(EPOCH_KEY))
        return int(value) if value is not None else 0

    async def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        check_fill_ttl(ttl_ms)
        keys, args = acquire_fill_call(lock_key, token, ttl_ms, index_key)
        epoch = await self._run(lambda: self._eval(ACQUIRE_FILL, keys, args), writes=True)
        return None if epoch is None else int(epoch)

    async def get_or_acquire(
        self, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> tuple[bytes | None, int | None]:
        """`get(key)` and, when it finds nothing, `acquire_fill(...)`, in one round trip (the
        script LOOKUP_OR_ACQUIRE): (value, None), (None, the lease's epoch), or (None, None)
        when another holds the lease. The middlewares ask this on routes where most lookups
        miss; elsewhere a HIT stays a plain GET. A Cluster store makes it the two calls."""
        if not self.MERGES_LOOKUP:
            return await get_then_acquire_async(self, key, lock_key, token, ttl_ms, index_key)
        check_fill_ttl(ttl_ms)
        keys, args = lookup_or_acquire_call(key, lock_key, token, ttl_ms, index_key)
        return lookup_result(await self._run(lambda: self._eval(LOOKUP_OR_ACQUIRE, keys, args)))

    async def store_fill(self, fill: Fill) -> bool:
        keys, args = store_fill_call(fill)
        return bool(await self._run(lambda: self._eval(STORE_FILL, keys, args), writes=True))

    async def release_fill(self, lock_key: str, token: str) -> None:
        await self._run(lambda: self._eval(RELEASE_FILL, [lock_key], [token]))

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A fill script, on the lean connection when there is one: the MISS path's round trips
        then cost what a GET costs, and never wait for a pooled connection. Its replies have the
        shapes the callers' result helpers read, whichever connection gave them."""
        if self._loop is not asyncio.get_running_loop():  # unasync: async only
            self._bind(asyncio.get_running_loop())
        getter = self._getter
        if getter is None:
            return await run_async(self.client, script, keys, args)
        command = evalsha_command(script, keys, args)
        try:
            return await getter.call_encoded(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # The first call after a Redis restart (or SCRIPT FLUSH): load it, then run it.
        await getter.call(b"SCRIPT", b"LOAD", script.source.encode())
        return await getter.call_encoded(command)

    async def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        async def op() -> tuple[bytes | None, bool]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(lock_key)
                value, exists = await pipe.execute(raise_on_error=False)
            return peek_result(value, exists)

        return await self._run(op)

    async def set_indexed(self, entry: Indexed) -> None:
        keys, args = set_indexed_call(entry)
        await self._run(lambda: run_async(self.client, SET_INDEXED, keys, args), writes=True)

    async def delete_index(self, index_key: str) -> int:
        detached = detached_index_name(index_key)

        async def op() -> int:
            client = self.client
            deleted, left = await run_async(
                client, DELETE_INDEX, [EPOCH_KEY, index_key, detached], [SCAN_BATCH]
            )
            while left:
                count, left = await run_async(
                    client, DRAIN_INDEX, [EPOCH_KEY, detached], [SCAN_BATCH]
                )
                deleted += count
            return int(deleted)

        return await self._run(op)

    async def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        """Add counters into a shared hash (HINCRBY), in one pipeline: a batch, not a request.
        The writes a full store refused since the last batch go with it (`store_full`)."""
        refusals = self.monitor.take_refusals()
        if refusals:
            deltas = with_refusals(deltas, refusals)

        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for field_name, delta in deltas.items():
                pipe.hincrby(hash_key, field_name, delta)
            pipe.expire(hash_key, ttl)
            await pipe.execute()

        try:
            await self._run(op, writes=True)
        except BaseException:
            self.monitor.give_back_refusals(refusals)
            raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
