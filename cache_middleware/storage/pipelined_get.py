"""A lean, pipelined Redis connection for the HIT path (GET) and the MISS path (fill scripts).

Why hand-written: a HIT is one GET, and redis-py's asyncio command machinery (retry wrapper,
pool checkout, timeout wrapper, per-command socket write) costs about four times the round trip
itself under load (measured in bench/). This client does one thing: on one connection per event
loop, it writes GETs without waiting for earlier replies (writes queued in the same loop tick
go out in one send) and matches the replies in order. A command is never held back for an
earlier batch's replies: that would save little here (under load, strace counts ~0.06 Redis
syscalls per request either way) and cost up to a round trip of latency against a remote Redis.
Everything else (SET, UNLINK, SCAN, TLS, unix sockets, Sentinel) stays on redis-py.

Failure contract: every call ends within `timeout` seconds. A timeout or any protocol surprise
closes the connection and fails every request waiting on it (the caller fails open); the next
call reconnects. One timer per connection watches the oldest request waiting (replies come in
order, so it has the earliest deadline), instead of a timer armed and cancelled per call: that
cost more than a microsecond per round trip. Replies are length-checked and bounded, so a
confused server cannot make it allocate without limit.

A connection the server closed (an idle timeout, a restart, CLIENT KILL) is not a failure:
every request that was waiting on it is sent again, once, on a new connection. The round trip
is sampled once per batch of replies (one clock read per `data_received`, not per GET) for the
slow-store watch (health.SlowWatch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from .direct_get import Dropped, LeanClient
from .resp import GET_COMMAND, ReplyError, encode_command, parse_reply

__all__ = ["PipelinedGetter", "ReplyError"]


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedGetter, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop
        self.timeout = owner.timeout
        self.transport: asyncio.Transport | None = None
        # Requests sent and not yet answered, oldest first, with their deadlines (loop time).
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        # The server closed it (or the network reset it): requests on it are sent again.
        self.fail(Dropped(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: BaseException) -> None:
        """Close the connection and fail everything waiting on it."""
        self.closed = True
        if self.owner.protocol is self:
            self.owner.protocol = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        pending, self.pending = self.pending, deque()
        first = True
        for future, _ in pending:
            if not future.done():
                if first:
                    future.set_exception(exc)
                    first = False
                else:
                    # The others share this one failure: marked so the circuit breaker counts
                    # the event once (see CircuitBreaker.failed).
                    kind = Dropped if isinstance(exc, Dropped) else ConnectionError
                    collateral = kind(f"{exc} (connection shared with a failure)")
                    collateral.collateral = True  # type: ignore[attr-defined]
                    future.set_exception(collateral)
        if self.transport is not None:
            # The transport's loop may be closed already (the middleware moved to a new loop):
            # nothing left to abort then.
            with contextlib.suppress(RuntimeError):
                self.transport.abort()
            self.transport = None

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        deadline = self.loop.time() + self.timeout
        self.pending.append((future, deadline))
        self.outgoing.append(command)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(deadline, self.watch)

    def watch(self) -> None:
        """The oldest request's deadline came: fail the connection if it is still unanswered,
        else watch the one that is the oldest now."""
        self.watchdog = None
        if not self.pending:
            return
        deadline = self.pending[0][1]
        if deadline <= self.loop.time():
            # The connection's state is unknown now (a paused or stuck server): drop it and
            # fail everything queued on it, rather than let a backlog build up behind a slow
            # reply. (A request its caller gave up on still holds its place: no reply to it
            # in time is a stuck connection all the same.)
            self.fail(TimeoutError("Redis did not answer in time"))
            return
        self.watchdog = self.loop.call_at(deadline, self.watch)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and self.outgoing:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        if self.pending:
            # One sample per batch: the oldest request's round trip, from its deadline.
            elapsed = self.loop.time() - self.pending[0][1] + self.timeout
            owner = self.owner
            if elapsed > owner.slow_after:
                owner.slow.seen(elapsed)  # type: ignore[union-attr]  # finite only with a watch
            elif owner.slow is not None and owner.slow.streak:
                owner.slow.streak = 0
        while pos < len(buf):
            try:
                parsed = parse_reply(buf, pos)
            except ConnectionError as exc:
                self.fail(exc)
                return
            if parsed is None:
                break  # incomplete: wait for more bytes
            value, pos = parsed
            if not self.pending:
                self.fail(ConnectionError("reply from Redis with no request waiting"))
                return
            future = self.pending.popleft()[0]
            if not future.done():
                if isinstance(value, ReplyError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        if pos:
            del buf[:pos]


class PipelinedGetter(LeanClient):
    """GET over one pipelined connection; bound to the event loop that first uses it."""

    def __init__(self, host: str, port: int, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self.protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self, loop), self.host, self.port),
            self.timeout,
        )
        # AUTH and SELECT ride ahead of the first GET; their replies are checked all the same.
        checks = []
        for command in self._handshake:
            future: asyncio.Future[Any] = loop.create_future()
            protocol.send(command, future)
            checks.append(future)
        if checks:
            try:
                await asyncio.wait_for(asyncio.gather(*checks), self.timeout)
            except BaseException:
                protocol.fail(ConnectionError("Redis handshake failed"))
                raise
        return protocol

    async def _protocol(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            # Retrieve a failure even when every waiter was cancelled: no "never retrieved".
            self._connecting.add_done_callback(_consume)
        try:
            protocol = await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None
        if protocol.closed:
            raise ConnectionError("connection to Redis closed while connecting")
        self.protocol = protocol
        return protocol

    async def get(self, key: bytes) -> bytes | None:
        value = await self.call_encoded(GET_COMMAND % (len(key), key))
        if value is None or type(value) is bytes:
            return value
        # GET answers a string or nil: anything else means the replies no longer line up.
        if self.protocol is not None:
            self.protocol.fail(ConnectionError("unexpected reply type to GET"))
        raise ConnectionError(f"unexpected reply to GET: {type(value).__name__}")

    async def call(self, *parts: bytes) -> Any:
        """One command on the pipelined connection: its reply, an error reply raised as
        `ReplyError`. Used for GET and for the fill scripts (EVALSHA) of the MISS path."""
        return await self.call_encoded(encode_command(*parts))

    async def call_encoded(self, command: bytes) -> Any:
        """`call` of a command already in RESP (the fill scripts encode theirs in one go)."""
        protocol = self.protocol
        if protocol is None or protocol.closed:
            protocol = await self._protocol()
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.send(command, future)
        try:
            return await future
        except Dropped:
            pass
        # The server closed the connection under it: once more, on a new one. A connection
        # that cannot be made (Redis down) or a reply that does not come fails as usual.
        self.dropped += 1
        protocol = self.protocol  # another request's retry may have reconnected already
        if protocol is None or protocol.closed:
            protocol = await self._protocol()
        future = protocol.loop.create_future()
        protocol.send(command, future)
        return await future

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.fail(ConnectionError("closed"))
            self.protocol = None


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
