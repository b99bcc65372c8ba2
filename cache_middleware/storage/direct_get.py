"""Lean blocking Redis connections for threads, for the WSGI HIT path (GET).

Why hand-written: a WSGI HIT on Redis is one GET, and redis-py's blocking command machinery
(pool checkout and return under a lock, retry wrapper, command packing, its reply parser) costs
about as much CPU as the round trip's own two system calls: measured on the 2-core bench
machine, 79 us of CPU per GET through redis-py (59 us with hiredis) against 37 us on a plain
socket. This client does one thing: on a socket no other thread is using (and that this process
opened: a forked worker opens its own), it sends a command and reads its one reply. The ASGI
twin is pipelined_get.py.

Failure contract: a reply is waited for at most `timeout` seconds, counted from the moment
its command is sent (connecting gets its own `timeout`), so a stalled or blackholed Redis costs
one timeout. A timeout or any protocol surprise closes the socket and raises (the store fails
open); a later call opens a new one. A socket the server closed (an idle timeout in redis.conf,
a restart, CLIENT KILL, a load balancer) is not a failure: the call is made again, at once and
once, on a new connection. Time the calling thread spends waiting for the GIL is not Redis's:
the clock starts at the send, and a reply already in the socket when the deadline has passed
is still taken (in a worker with many threads, the wait for the GIL after a send can outlast
the timeout while Redis answered in microseconds).
An error reply (`ReplyError`) leaves the connection usable: the reply was read whole. A GET
that answers anything but a string or nil is a ConnectionError too (WRONGTYPE comes as an
error reply).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from .health import SlowWatch
from .resp import GET_COMMAND, ReplyError, encode_command, handshake_commands, parse_reply

__all__ = ["DirectGetter", "Dropped", "LeanClient"]

_RECV = 65536


class Dropped(ConnectionError):
    """The server closed the connection (end of stream, reset, broken pipe): an idle socket
    Redis let go, retried on a new one rather than counted as a store failure."""


class _Connection:
    """One socket and its read buffer; used by one thread at a time."""

    def __init__(self, host: str, port: int, timeout: float, handshake: list[bytes]) -> None:
        self.pid = os.getpid()
        self.buffer = bytearray()
        self.sent = 0.0  # when the last command left (time.monotonic)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for command in handshake:
                self.call(command, timeout)
        except BaseException:
            self.sock.close()
            raise

    def call(self, command: bytes, timeout: float) -> Any:
        """Send `command`, read its reply: `timeout` seconds from the moment it is sent. The
        clock starts there, not when the caller asked: a thread of a busy worker can wait for
        the GIL for longer than the timeout before it gets to send (measured: 32 threads per
        gunicorn worker on a busy 2-core machine failed open 96% of their HITs)."""
        sock = self.sock
        self.sent = sent = time.monotonic()
        deadline = sent + timeout
        sock.settimeout(timeout)
        try:
            sock.sendall(command)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Dropped(f"connection to Redis closed: {exc}") from exc
        buffer = self.buffer
        while True:
            parsed = parse_reply(buffer) if buffer else None
            if parsed is not None:
                value, end = parsed
                if end != len(buffer):
                    # One command, one reply: bytes beyond it mean the stream is out of step.
                    raise ConnectionError("unexpected bytes after a reply from Redis")
                buffer.clear()
                if isinstance(value, ReplyError):
                    raise value
                return value
            chunk = _receive(sock, deadline)
            if not chunk:
                raise Dropped("connection to Redis closed")
            buffer += chunk

    def close(self) -> None:
        self.sock.close()


def _receive(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    try:
        if left > 0:
            sock.settimeout(left)
            return sock.recv(_RECV)
        # Late: this thread may have waited for the GIL since it sent, not for Redis. Take a
        # reply that is already here; wait for nothing more (a dead Redis still costs no more).
        sock.setblocking(False)
        return sock.recv(_RECV)
    except BlockingIOError:
        raise TimeoutError("Redis did not answer in time") from None
    except ConnectionResetError as exc:
        raise Dropped(f"connection to Redis reset: {exc}") from exc


class LeanClient:
    """What both lean clients (this one and pipelined_get.py's) keep: where Redis is, what a
    new connection sends first (AUTH, SELECT), how long a reply may take, and the slow-store
    watch their round trips are reported to."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.1,
        slow: SlowWatch | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.dropped = 0  # calls sent again because the server had closed the connection
        # Round trips slower than its bound are reported to it; never when it is None.
        self.slow = slow
        self.slow_after = slow.bound if slow is not None else float("inf")
        self._handshake = handshake_commands(db, username, password)


class DirectGetter(LeanClient):
    """GET (and any one-reply command) over blocking sockets: each call takes an idle one (or
    opens one), and gives it back afterwards. A list's pop and append are atomic, so threads
    share the idle sockets without a lock; a server that starts a thread per request reuses
    them as well as a thread pool does. At most `max_idle` idle sockets are kept."""

    def __init__(self, host: str, port: int, *, max_idle: int = 16, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self.max_idle = max_idle
        self._idle: list[_Connection] = []

    def _connection(self) -> _Connection:
        pid = os.getpid()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return _Connection(self.host, self.port, self.timeout, self._handshake)
            if conn.pid == pid:
                return conn
            # Inherited through a fork: its socket is shared with the parent, and replies would
            # go to whichever process reads first. Closing our copy leaves the parent's open.
            conn.close()

    def call(self, *parts: bytes) -> Any:
        """One command: its reply; an error reply raised as `ReplyError`."""
        return self.call_encoded(encode_command(*parts))

    def call_encoded(self, command: bytes) -> Any:
        """`call` of a command already in RESP (the fill scripts encode theirs in one go)."""
        conn = self._connection()
        try:
            value = conn.call(command, self.timeout)
        except ReplyError:
            self._release(conn)  # the error reply was read whole: the socket is in step
            raise
        except Dropped:
            conn.close()
            return self._call_anew(command)
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        # The round trip, for the slow-store watch: one clock read more than the call makes.
        elapsed = time.monotonic() - conn.sent
        if elapsed > self.slow_after:
            self.slow.seen(elapsed, threaded=True)  # type: ignore[union-attr]  # finite: a watch
        elif self.slow is not None and self.slow.streak:
            self.slow.streak = 0  # a streak is consecutive slow round trips
        return value

    def _call_anew(self, command: bytes) -> Any:
        """The retry of a call whose socket the server had closed: once, at once, on a new
        connection (the other idle ones may be as dead). Finding the socket closed took no
        time, so the bound on the call stays one `timeout` for the wait it does."""
        self.dropped += 1
        conn = _Connection(self.host, self.port, self.timeout, self._handshake)
        try:
            value = conn.call(command, self.timeout)
        except ReplyError:
            self._release(conn)
            raise
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return value

    def get(self, key: bytes) -> bytes | None:
        value = self.call_encoded(GET_COMMAND % (len(key), key))
        if value is None or type(value) is bytes:
            return value
        raise ConnectionError(f"unexpected reply to GET: {type(value).__name__}")

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()  # bounded: a burst of threads leaves at most max_idle sockets open

    def discard_idle(self) -> None:
        """Close the idle sockets: after an outage they are from before it, likely dead."""
        self.close()

    def close(self) -> None:
        """Close the idle sockets (at shutdown); one in use goes back to the pool after its call."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
