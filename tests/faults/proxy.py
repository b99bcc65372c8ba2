"""A TCP fault proxy for tests: put it between a client and Redis (or RabbitMQ) and break the
link the ways networks and servers do.

    proxy = FaultProxy("127.0.0.1", 6379).start()   # listens on 127.0.0.1:proxy.port
    proxy.delay = 0.08     # every chunk, either way, is held this long (a slow link or server)
    proxy.stall()          # connections stay open, nothing is forwarded (a paused server)
    proxy.resume()
    proxy.cut()            # every open connection is reset; new ones still accepted
    proxy.close_idle(0.5)  # close connections quiet for 0.5 s (a load balancer's idle timeout)
    proxy.refuse = True    # new connections are closed at once (a server gone)
    proxy.stop()

One thread accepts, two threads per connection copy bytes; a stall holds the copy loops, not
the sockets, so the client sees an open connection that never answers.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time

__all__ = ["FaultProxy"]

_CHUNK = 65536
_Chunks = queue.SimpleQueue[tuple[float, bytes] | None]  # (when to send, bytes); None: end


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.last_activity = time.monotonic()
        self.closed = False

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.upstream):
            if reset:  # RST, not FIN: what a dropped route or a killed process looks like
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.delay = 0.0
        self.refuse = False
        self.accepted = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self._stopped = False

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept_loop, daemon=True, name="fault-proxy").start()
        return self

    # -- faults ------------------------------------------------------------------------------

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> int:
        """Reset every open connection; returns how many."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close(reset=True)
        return len(links)

    def close_idle(self, idle_for: float = 0.0) -> int:
        """Close (FIN) connections with no traffic for `idle_for` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            idle = [link for link in self._links if now - link.last_activity >= idle_for]
            self._links = [link for link in self._links if link not in idle]
        for link in idle:
            link.close()
        return len(idle)

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.closed)

    def stop(self) -> None:
        self._stopped = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    # -- plumbing ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._copy, args=(link, source, sink), daemon=True
                ).start()

    def _copy(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        """Read from `source`; a writer thread sends each chunk `delay` seconds after it came
        (latency, not a bandwidth limit: a pipelined client's replies are not queued behind
        each other's delays)."""
        chunks: _Chunks = queue.SimpleQueue()
        writer = threading.Thread(target=self._send, args=(link, chunks, sink), daemon=True)
        writer.start()
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                link.last_activity = time.monotonic()
                chunks.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        chunks.put(None)
        writer.join()
        # One side ended: end the other, as a real connection would (FIN).
        with self._lock:
            if link in self._links:
                self._links.remove(link)
        link.close()

    def _send(self, link: _Link, chunks: _Chunks, sink: socket.socket) -> None:
        while True:
            item = chunks.get()
            if item is None:
                return
            due, data = item
            self._flowing.wait()  # stalled: held here, the connection stays open
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if link.closed:
                return
            try:
                sink.sendall(data)
            except OSError:
                return
            link.last_activity = time.monotonic()
