"""The Redis store for threads (WSGI middleware, sync cache manager).

The blocking twin of redis_async.py, method for method, with the same short timeouts, no
redis-py retries, the same outage bookkeeping and circuit breaker, and the same Lua scripts.
GET (the HIT path) goes through direct_get.py's lean sockets on plain TCP URLs, as the async
store's goes through pipelined_get.py.
Sentinel URLs get a client from redis-py's Sentinel (`master_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    Write,
    cache_epoch,
    check_fill_ttl,
    check_ttl,
    check_writes,
    get_then_acquire,
    is_epoch,
    key_epochs,
    literal_head,
    with_refusals,
)
from .direct_get import DirectGetter
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
from .redis_async import _pipelined_params, _safe_url, _sentinel_kwargs, sentinel_parts
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
    run_sync,
    store_fill_call,
)

__all__ = ["RedisStore"]

T = TypeVar("T")
_EPOCH = EPOCH_KEY.encode()


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.1,
        client: redis.Redis | None = None,
        fast_get: bool = True,
        breaker_failures: int = 5,
        breaker_cooldown: float = 5.0,
        breaker_clock: Callable[[], float] = time.monotonic,
        slow_after: float = 0.0,
        **redis_kwargs: Any,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.monitor = OutageMonitor(_safe_url(url))
        self.breaker = CircuitBreaker(
            _safe_url(url), breaker_failures, breaker_cooldown, clock=breaker_clock
        )
        # `slow_after` (seconds, 0 = off): round trips slower than this, in a streak, open the
        # breaker; measured on the lean sockets, with the clock read each call makes anyway.
        self.slow = SlowWatch(self.breaker, slow_after)
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS),
            "health_check_interval": 0,
            **redis_kwargs,
        }
        self._client: Any = client
        # Plain TCP URLs read through lean sockets (the HIT path); the rest use redis-py, and so
        # does a client given in (it may not be the server at `url`: fakeredis in tests) or
        # redis-py options the lean sockets would not honour (credentials, TLS, keepalive...).
        lean = fast_get and client is None and not redis_kwargs
        params = _pipelined_params(url, timeout) if lean else None
        self._direct = DirectGetter(**params, slow=self.slow) if params else None

    @property
    def client(self) -> Any:
        """The redis-py client, built on first use: a Cluster client reads the topology when it
        is built, which must fail (open) inside an operation, never in a constructor."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self) -> Any:
        return _new_client(self.url, self._kwargs)

    def _run(self, op: Callable[[], T], *, writes: bool = False) -> T:
        """One store operation through the breaker, with failures translated and counted.
        `writes`: the operation stores data, so its success ends a full spell."""
        probe = self.breaker.admit()
        if probe:
            started = time.monotonic()
        try:
            result = op()
        except Exception as exc:  # FOREIGN_ERRORS, and whatever building the client raised
            if is_store_full(exc):
                self.breaker.succeeded(probe)  # it answered: full is not down
                if probe:
                    self._recovered()
                raise self.monitor.refused(exc) from exc
            self.breaker.failed(exc, probe)
            raise self.monitor.failed(exc) from exc
        except BaseException:
            self.breaker.abandoned(probe)
            raise
        if probe:
            self._probe_answered(time.monotonic() - started)
        else:
            self.breaker.succeeded(probe)
        self.monitor.succeeded()
        if writes and self.monitor.full:  # one attribute read per write otherwise
            self.monitor.wrote()
        return result

    def _probe_answered(self, elapsed: float) -> None:
        """The half-open probe got its answer: too slow keeps the breaker open, otherwise it
        closes and the idle sockets from before the outage go (the server dropped them, or
        will have: one dead socket per probe kept a worker uncached for half a minute)."""
        if self.slow.too_slow(elapsed):
            self.breaker.failed(SlowStore(f"probe answered in {elapsed * 1000:.0f} ms"), True)
            return
        self.breaker.succeeded(True)
        self._recovered()

    def _recovered(self) -> None:
        if self._direct is not None:
            self._direct.discard_idle()
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            pool.disconnect(inuse_connections=False)

    def get(self, key: str) -> bytes | None:
        breaker = self._breaker_for(key)
        probe = breaker.admit()
        if probe:
            started = time.monotonic()
        try:
            direct = self._direct
            value: bytes | None = (
                direct.get(key.encode()) if direct is not None else self.client.get(key)
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
            self._probe_answered(time.monotonic() - started)
        else:
            breaker.succeeded(probe)
        self.monitor.succeeded()
        return value

    def _breaker_for(self, key: str) -> CircuitBreaker:
        """The breaker a read of `key` goes through: the store's. The cluster stores answer
        with the breaker of the primary that owns the key (redis_cluster.py)."""
        return self.breaker

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._run(lambda: self.client.set(key, value, ex=ttl), writes=True)

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        targets = [key for key in keys if not is_epoch(key)]  # a counter never goes back
        epochs = key_epochs(targets)
        return int(
            self._run(
                lambda: run_sync(self.client, DELETE_KEYS, [*epochs, *targets], [len(epochs)])
            )
        )

    def forget(self, key: str) -> None:
        """Drop one unreadable value: housekeeping, not an invalidation (the epoch stays)."""
        self._run(lambda: self.client.unlink(key))

    def delete_matching(self, pattern: str) -> int:
        """SCAN + UNLINK in batches, never KEYS: Redis stays responsive on a large keyspace."""

        def op() -> int:
            client = self.client
            # The epoch moves before the scan, not after: a fill that read its data before this
            # call and stores after the scan went past its key would otherwise survive it.
            scoped = cache_epoch(literal_head(pattern))
            if scoped is not None:
                epochs = [EPOCH_KEY, scoped]
            else:  # a glob that may reach any cache: every cache's fills are void
                members = client.smembers(EPOCH_REGISTRY)
                epochs = list(dict.fromkeys([EPOCH_KEY, *(m.decode() for m in members)]))
            pipe = client.pipeline(transaction=False)
            for epoch in epochs:
                pipe.incr(epoch)
            pipe.execute()
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
                if is_epoch(key.decode("utf-8", "surrogateescape")):
                    continue
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    deleted += int(client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(client.unlink(*batch))
            return deleted

        return self._run(op)

    def ping(self) -> bool:
        self._run(lambda: self.client.ping())
        return True

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._direct is not None:
            self._direct.close()

    def epoch(self) -> int:
        value = self._run(lambda: self.client.get(EPOCH_KEY))
        return int(value) if value is not None else 0

    def acquire_fill(
        self, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> int | None:
        check_fill_ttl(ttl_ms)
        keys, args = acquire_fill_call(lock_key, token, ttl_ms, index_key)
        epoch = self._run(lambda: self._eval(ACQUIRE_FILL, keys, args), writes=True)
        return None if epoch is None else int(epoch)

    # Whether `get_or_acquire` may run as one script: the entry, its lease and the epoch on one
    # server (a Cluster spreads them over slots).
    MERGES_LOOKUP = True

    def get_or_acquire(
        self, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> tuple[bytes | None, int | None]:
        """`get(key)` and, when it finds nothing, `acquire_fill(...)`, in one round trip (the
        script LOOKUP_OR_ACQUIRE): (value, None), (None, the lease's epoch), or (None, None)
        when another holds the lease. Asked on routes where most lookups miss."""
        if not self.MERGES_LOOKUP:
            return get_then_acquire(self, key, lock_key, token, ttl_ms, index_key)
        check_fill_ttl(ttl_ms)
        keys, args = lookup_or_acquire_call(key, lock_key, token, ttl_ms, index_key)
        return lookup_result(self._run(lambda: self._eval(LOOKUP_OR_ACQUIRE, keys, args)))

    def store_fill(
        self,
        lock_key: str,
        token: str,
        epoch: int,
        writes: list[Write],
        index_key: str | Sequence[str] | None = None,
        index_ttl: int = 0,
    ) -> bool:
        check_writes(writes, index_key, index_ttl)
        keys, args = store_fill_call(lock_key, token, epoch, writes, index_key, index_ttl)
        return bool(self._run(lambda: self._eval(STORE_FILL, keys, args), writes=True))

    def release_fill(self, lock_key: str, token: str) -> None:
        self._run(lambda: self._eval(RELEASE_FILL, [lock_key], [token]))

    def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A fill script, on the lean sockets when there are (plain TCP): the MISS path's round
        trips then cost what a GET costs. The replies have the shapes the async store's
        pipelined connection gives, which the callers' result helpers read."""
        direct = self._direct
        if direct is None:
            return run_sync(self.client, script, keys, args)
        command = evalsha_command(script, keys, args)
        try:
            return direct.call_encoded(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # The first call after a Redis restart (or SCRIPT FLUSH): load it, then run it.
        direct.call(b"SCRIPT", b"LOAD", script.source.encode())
        return direct.call_encoded(command)

    def peek_fill(self, key: str, lock_key: str) -> tuple[bytes | None, bool]:
        def op() -> tuple[bytes | None, bool]:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.exists(lock_key)
                value, exists = pipe.execute(raise_on_error=False)
            return peek_result(value, exists)

        return self._run(op)

    def set_indexed(self, key: str, value: bytes, ttl: int, index_key: str, index_ttl: int) -> None:
        check_ttl(ttl)
        check_ttl(index_ttl, "index_ttl")
        self._run(
            lambda: run_sync(self.client, SET_INDEXED, [key, index_key], [value, ttl, index_ttl]),
            writes=True,
        )

    def delete_index(self, index_key: str) -> int:
        detached = detached_index_name(index_key)

        def op() -> int:
            deleted, left = run_sync(
                self.client, DELETE_INDEX, [EPOCH_KEY, index_key, detached], [SCAN_BATCH]
            )
            while left:
                count, left = run_sync(
                    self.client, DRAIN_INDEX, [EPOCH_KEY, detached], [SCAN_BATCH]
                )
                deleted += count
            return int(deleted)

        return self._run(op)

    def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        """Add counters into a shared hash (HINCRBY), in one pipeline: a batch, not a request.
        The writes a full store refused since the last batch go with it (`store_full`)."""
        refusals = self.monitor.take_refusals()
        if refusals:
            deltas = with_refusals(deltas, refusals)

        def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for field_name, delta in deltas.items():
                pipe.hincrby(hash_key, field_name, delta)
            pipe.expire(hash_key, ttl)
            pipe.execute()

        try:
            self._run(op, writes=True)
        except BaseException:
            self.monitor.give_back_refusals(refusals)
            raise


def _new_client(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    sentinel = sentinel_parts(url)
    if sentinel is not None:
        nodes, service, url_kwargs = sentinel
        # Typed only from redis-py 8: Any keeps mypy clean on every supported release.
        sentinel_cls: Any = redis.sentinel.Sentinel
        sentinels = sentinel_cls(
            nodes, sentinel_kwargs=_sentinel_kwargs(kwargs, url_kwargs)
        )
        client: redis.Redis = sentinels.master_for(
            service, **kwargs, **url_kwargs
        )
        return client
    return redis.Redis.from_url(url, **kwargs)
