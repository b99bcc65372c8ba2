"""The Redis store for asyncio (ASGI middleware, async cache manager).

Short timeouts and no redis-py retry storms: a slow or dead Redis must cost a request a bounded few
milliseconds, then the caller fails open. redis.asyncio connections belong to the event loop
that opened them, so the client is rebuilt when it is used from another loop (test clients and
some servers start a loop per thread). Every operation, the pipelined GET included, goes through
the circuit breaker (health.py): a dead Redis costs nothing while it is open.

`redis+sentinel://` (and `rediss+sentinel://`) URLs get their client from redis-py's Sentinel:
`master_for(service)` finds the current master through the sentinels and finds it again after a
failover (the connections that were open fail once, as StoreUnavailable). The pipelined GET is
for plain TCP URLs only: on Sentinel every read goes through redis-py. Redis Cluster has stores
of its own (redis_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio
import redis.asyncio.sentinel
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import (
    EPOCH_KEY,
    EPOCH_REGISTRY,
    SCAN_BATCH,
    Write,
    cache_epoch,
    check_fill_ttl,
    check_ttl,
    check_writes,
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
from .pipelined_get import PipelinedGetter, ReplyError
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
    store_fill_call,
)

__all__ = ["AsyncRedisStore"]

T = TypeVar("T")
_EPOCH = EPOCH_KEY.encode()


class AsyncRedisStore:
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
        self.monitor = OutageMonitor(_safe_url(url))
        self.breaker = CircuitBreaker(
            _safe_url(url), breaker_failures, breaker_cooldown, clock=breaker_clock
        )
        # `slow_after` (seconds, 0 = off): round trips slower than this, in a streak, open the
        # breaker; sampled by the pipelined connection once per batch of replies.
        self.slow = SlowWatch(self.breaker, slow_after)
        # Plain TCP URLs read through the pipelined GET (the HIT path); the rest use redis-py,
        # as do stores given redis-py options the pipelined connection would not honour.
        self._fast_params = (
            _pipelined_params(url, timeout) if fast_get and not redis_kwargs else None
        )
        self._getter: PipelinedGetter | None = None
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), RETRIES, supported_errors=RETRY_ERRORS),
            "health_check_interval": 0,
            **redis_kwargs,
        }
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._bind(loop)
        assert self._client is not None
        return self._client

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fresh connections for a new event loop (the old loop's cannot be used from this one)."""
        if self._getter is not None:
            self._getter.close()
        self._client = self._new_client()
        self._getter = (
            PipelinedGetter(**self._fast_params, slow=self.slow) if self._fast_params else None
        )
        self._loop = loop

    def _new_client(self) -> redis.asyncio.Redis:
        sentinel = sentinel_parts(self.url)
        if sentinel is not None:
            nodes, service, kwargs = sentinel
            # Typed only from redis-py 8: Any keeps mypy clean on every supported release.
            sentinel_cls: Any = redis.asyncio.sentinel.Sentinel
            sentinels = sentinel_cls(
                nodes, sentinel_kwargs=_sentinel_kwargs(self._kwargs, kwargs)
            )
            client: redis.asyncio.Redis = sentinels.master_for(service, **self._kwargs, **kwargs)
            return client
        return redis.asyncio.Redis.from_url(self.url, **self._kwargs)

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
        closes and the idle pooled connections from before the outage go."""
        if self.slow.too_slow(elapsed):
            self.breaker.failed(SlowStore(f"probe answered in {elapsed * 1000:.0f} ms"), True)
            return
        self.breaker.succeeded(True)
        await self._recovered()

    async def _recovered(self) -> None:
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):  # housekeeping: never fails the request
                await pool.disconnect(inuse_connections=False)

    async def get(self, key: str) -> bytes | None:
        # The HIT path: inline rather than through _run, to spare it a closure per call.
        breaker = self._breaker_for(key)
        probe = breaker.admit()
        if probe:
            started = time.monotonic()
        try:
            if self._loop is not asyncio.get_running_loop():
                self._bind(asyncio.get_running_loop())
            if self._getter is not None:
                value = await self._getter.get(key.encode())
            else:
                value = await self.client.get(key)  # type: ignore[assignment]
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
        """`get(key)` and, when it finds nothing, `acquire_fill(...)`, in one round trip (a
        script on the pipelined connection): (value, None), or (None, the lease's epoch), or
        (None, None) when another holds the lease. The middleware asks this on routes where
        most lookups miss; elsewhere a HIT stays a plain GET. Without the pipelined connection
        (Sentinel, Cluster, TLS...) it is the two calls."""
        if self._fast_params is None:
            return await get_then_acquire_async(self, key, lock_key, token, ttl_ms, index_key)
        check_fill_ttl(ttl_ms)
        keys, args = lookup_or_acquire_call(key, lock_key, token, ttl_ms, index_key)
        return lookup_result(await self._run(lambda: self._eval(LOOKUP_OR_ACQUIRE, keys, args)))

    async def store_fill(
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
        return bool(await self._run(lambda: self._eval(STORE_FILL, keys, args), writes=True))

    async def release_fill(self, lock_key: str, token: str) -> None:
        await self._run(lambda: self._eval(RELEASE_FILL, [lock_key], [token]))

    async def _eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A fill script, on the pipelined connection when there is one: the MISS path's
        round trips then cost what a GET costs, and never wait for a pooled connection."""
        client = self.client  # (re)binds the connections to this event loop
        getter = self._getter
        if getter is None:
            return await run_async(client, script, keys, args)
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

    async def set_indexed(
        self, key: str, value: bytes, ttl: int, index_key: str, index_ttl: int
    ) -> None:
        check_ttl(ttl)
        check_ttl(index_ttl, "index_ttl")
        await self._run(
            lambda: run_async(self.client, SET_INDEXED, [key, index_key], [value, ttl, index_ttl]),
            writes=True,
        )

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

    async def aclose(self) -> None:
        if self._getter is not None:
            self._getter.close()
            self._getter = None
        client, self._client = self._client, None
        if client is not None:
            # Closing a client whose loop is gone can raise anything: nothing is left to release.
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- housekeeping and figures for the admin sub-app (never on the request path) ------------

    async def keys_matching(self, pattern: str, limit: int | None = None) -> list[str]:
        """Keys matching a glob (SCAN), at most `limit` of them."""

        async def op() -> list[str]:
            found: list[str] = []
            async for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
                if key != _EPOCH:
                    found.append(key.decode("utf-8", "surrogateescape"))
                    if limit is not None and len(found) >= limit:
                        break
            return found

        return await self._run(op)

    async def sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Bytes of each string value (None: absent or not a string), one pipeline per batch."""

        async def op() -> list[int | None]:
            out: list[int | None] = []
            for start in range(0, len(keys), SCAN_BATCH):
                pipe = self.client.pipeline(transaction=False)
                chunk = keys[start : start + SCAN_BATCH]
                for key in chunk:
                    pipe.type(key)
                    pipe.strlen(key)
                replies = await pipe.execute(raise_on_error=False)
                for kind, size in zip(replies[0::2], replies[1::2], strict=True):
                    out.append(int(size) if kind in (b"string", "string") else None)
            return out

        return await self._run(op)

    async def index_members(self, index_key: str) -> list[str]:
        members: set[bytes] = await self._run(lambda: self.client.smembers(index_key))  # type: ignore[arg-type,return-value]
        return sorted(m.decode("utf-8", "surrogateescape") for m in members)

    async def prune_index(self, index_key: str, members: Sequence[str]) -> int:
        if not members:
            return 0
        return int(await self._run(lambda: self.client.srem(index_key, *members)))

    async def exists(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self._run(lambda: self.client.exists(*keys)))

    async def add_stats(self, hash_key: str, deltas: dict[str, int], ttl: int) -> None:
        """Add counters into a shared hash (HINCRBY), in one pipeline: a batch, not a request."""

        refusals = self.monitor.take_refusals()  # refused writes ride with the batch
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

    async def read_stats(self, hash_key: str) -> dict[str, int]:
        raw: dict[bytes, bytes] = await self._run(lambda: self.client.hgetall(hash_key))  # type: ignore[arg-type,return-value]
        return {k.decode(): int(v) for k, v in raw.items()}

    async def info(self) -> dict[str, Any]:
        facts = await self._run(lambda: self.client.info())
        return {
            "type": "redis",
            "redis_version": facts.get("redis_version"),
            "used_memory": facts.get("used_memory"),
            "used_memory_human": facts.get("used_memory_human"),
            "maxmemory": facts.get("maxmemory"),
            "breaker": self.breaker.state,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]] | None:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` ->
    (sentinel addresses, service name, master connection kwargs); None for other schemes.

    The credentials and the db are the master's (and its replicas'); the sentinels are asked
    without a password. `rediss+sentinel://` speaks TLS to the sentinels and the master."""
    if not url.startswith(SENTINEL_SCHEMES):
        return None
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    netloc, kwargs = split_credentials(netloc)
    nodes = [_host_port(part, 26379) for part in netloc.split(",") if part]
    parts = [p for p in path.split("/") if p]
    if not nodes or not parts or len(parts) > 2:
        raise ValueError(
            f"{scheme}:// URLs read {scheme}://host:port[,host:port...]/service_name[/db]"
        )
    service = unquote(parts[0])
    if len(parts) == 2:
        kwargs["db"] = database_number(parts[1])
    if scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return nodes, service, kwargs


def split_credentials(netloc: str) -> tuple[str, dict[str, Any]]:
    """`user:password@hosts` -> (hosts, {"username": ..., "password": ...}), percent-decoded;
    a bare `secret@hosts` is a password, as in `redis://secret@host`."""
    kwargs: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
            if user:
                kwargs["username"] = unquote(user)
        elif user:
            kwargs["password"] = unquote(user)
    return netloc, kwargs


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    return unquote(host) or "localhost", port_number(port) if port else default_port


def port_number(text: str) -> int:
    """A TCP port from a URL, or a ValueError that says which part of the URL is wrong."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"the port {text!r} is not a number from 1 to 65535")
    return int(text)


def database_number(text: str) -> int:
    """A Redis database number from a URL's path: redis-py would silently use database 0 for
    `/notadb`, and a cache on the wrong database serves and invalidates the wrong entries."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"the database {text!r} is not a number (0, 1, 2...)")
    return int(text)


def _sentinel_kwargs(store_kwargs: dict[str, Any], url_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection options for the sentinels themselves: our timeouts, TLS if the URL says so."""
    out = {k: v for k, v in store_kwargs.items() if k.startswith("socket_")}
    if url_kwargs.get("ssl"):
        out["ssl"] = True
    return out


def _pipelined_params(url: str, timeout: float) -> dict[str, Any] | None:
    """Connection facts for the pipelined GET, or None when the URL needs redis-py (TLS,
    unix sockets, Sentinel, Cluster, extra options)."""
    if not url.startswith("redis://"):
        return None
    try:
        params = parse_url(url)
    except ValueError:
        return None
    if set(params) - {"host", "port", "db", "username", "password"}:
        return None
    return {
        "host": params.get("host", "localhost"),
        "port": int(params.get("port", 6379)),
        "db": int(params.get("db", 0)),
        "username": params.get("username"),
        "password": params.get("password"),
        "timeout": timeout,
    }


def _safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
