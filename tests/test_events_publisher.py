"""KombuEventSink: in-memory transport (fast), the real RabbitMQ, and RabbitMQ behind a proxy
that is stopped and started to play an outage.

RabbitMQ: `CACHE_TEST_AMQP_URL`, else amqp://guest:guest@127.0.0.1:5672//. When it does not
answer the tests that need it are skipped with the reason, except when `CI` is set: then they
fail.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")
jsonschema = (
    importlib.import_module("jsonschema")
    if os.environ.get("CI")
    else pytest.importorskip("jsonschema")
)

from kombu import Connection, Exchange, Queue  # noqa: E402

from cache_middleware.events import EventSink  # noqa: E402
from cache_middleware.events.publisher import KombuEventSink  # noqa: E402

from .test_events_envelope import ADMIN_DATA, ORG, validate  # noqa: E402

AMQP_URL = os.environ.get("CACHE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"


def events_config(**extra: Any) -> dict[str, Any]:
    """A fresh tenant per test, so the test's queue can tell its own events from others'."""
    return {
        "tenant_id": str(uuid.uuid4()),
        "organization_id": ORG,
        "reconnect_max": 0.2,
        "connect_timeout": 1,
        "publish_retry": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
        **extra,
    }


def amqp_available(url: str) -> str | None:
    try:
        with Connection(url, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
        return None
    except Exception as exc:
        return f"no RabbitMQ at {url}: {type(exc).__name__}: {exc}"


class Listener:
    """A queue bound to coder.events with `cache.#`; collects the envelopes of one tenant."""

    def __init__(self, url: str, tenant: str, binding: str = "cache.#") -> None:
        self.conn = Connection(url)
        self.channel = self.conn.channel()
        exchange = Exchange("coder.events", type="topic", durable=True)
        self.queue = Queue(
            f"test-events-{uuid.uuid4().hex}",
            exchange,
            routing_key=binding,
            exclusive=url.startswith("amqp"),
            auto_delete=True,
            channel=self.channel,
        )
        exchange(self.channel).declare()
        self.queue.declare()
        self.tenant = tenant
        self.messages: list[Any] = []

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            message = self.queue.get(no_ack=True)
            if message is None:
                time.sleep(0.01)
                continue
            body = json.loads(message.body)
            if body.get("tenantId") == self.tenant:
                self.messages.append(message)
        assert len(self.messages) >= count, f"got {len(self.messages)} of {count} events"
        return [json.loads(m.body) for m in self.messages]

    def close(self) -> None:
        try:
            self.queue.delete()
        finally:
            self.conn.release()


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(url: str, tenant: str) -> Listener:
        listener = Listener(url, tenant)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def check_delivery(sink: KombuEventSink, listener: Listener) -> None:
    for event_type, data in ADMIN_DATA.items():
        sink.emit(event_type, data)
    # cache.invalidated: one per selector (4), the others one each
    envelopes = listener.wait_for(7)
    assert sink.close(5) == 0
    assert sorted({e["type"] for e in envelopes}) == sorted(ADMIN_DATA)
    for message, envelope in zip(listener.messages, envelopes, strict=True):
        validate(envelope)
        assert message.delivery_info["routing_key"] == envelope["type"]
        assert message.content_type == "application/json"
        assert message.properties["delivery_mode"] == 2
    # in the order they were emitted
    assert [e["type"] for e in envelopes] == ["cache.invalidated"] * 4 + [
        "cache.warmed",
        "cache.cleared",
        "cache.optimized",
    ]


def test_sink_satisfies_the_protocol() -> None:
    sink: EventSink = KombuEventSink(events_config(broker_url="memory://"))
    assert isinstance(sink, KombuEventSink)
    assert sink.close(1) == 0


def test_memory_transport_delivers_every_type(listen: Callable[..., Listener]) -> None:
    config = events_config(broker_url="memory://")
    listener = listen("memory://", config["tenant_id"])
    check_delivery(KombuEventSink(config), listener)


def test_emit_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    sink = KombuEventSink(events_config(broker_url="memory://"))
    with caplog.at_level(logging.ERROR, logger="cache_middleware.events"):
        sink.emit("cache.exploded", {})
        sink.emit("cache.cleared", {"count": object(), "prefix": object()})
    assert "cannot build cache.exploded event" in caplog.text
    assert sink.close(2) == 0
    assert sink.published == 1
    sink.emit("cache.cleared", {})  # after close: dropped, no error
    assert sink.pending == 0


def test_overflow_drops_oldest_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    sink = KombuEventSink(events_config(broker_url=UNREACHABLE, buffer_size=5), start=False)
    with caplog.at_level(logging.WARNING, logger="cache_middleware.events"):
        for i in range(8):
            sink.emit("cache.cleared", {"prefix": f"p{i}", "count": i})
    assert sink.pending == 5
    assert sink.dropped == 3
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1
    assert "guest:**@" in full[0].getMessage() or "guest@" in full[0].getMessage()
    assert "guest:guest@" not in caplog.text  # the password is never logged
    kept = [json.loads(body)["data"]["prefix"] for _, body in sink._buffer]
    assert kept == ["p3", "p4", "p5", "p6", "p7"]


def test_emit_is_fast_with_the_broker_down_and_close_is_bounded() -> None:
    sink = KombuEventSink(events_config(broker_url=UNREACHABLE))
    try:
        slowest = 0.0
        for _ in range(20):
            start = time.perf_counter()
            sink.emit("cache.invalidated", ADMIN_DATA["cache.invalidated"])
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 0.005, f"emit took {slowest * 1000:.1f} ms"
    finally:
        start = time.monotonic()
        left = sink.close(0.3)
        assert time.monotonic() - start < 1.5
    assert left == 80


# -- the real RabbitMQ --------------------------------------------------------------------------


def test_rabbitmq_delivers_every_type(rabbitmq: str, listen: Callable[..., Listener]) -> None:
    config = events_config(broker_url=rabbitmq)
    listener = listen(rabbitmq, config["tenant_id"])
    check_delivery(KombuEventSink(config), listener)


def test_exchange_is_a_durable_topic(rabbitmq: str) -> None:
    sink = KombuEventSink(events_config(broker_url=rabbitmq))
    sink.emit("cache.cleared", ADMIN_DATA["cache.cleared"])
    assert sink.close(5) == 0
    with Connection(rabbitmq) as conn:
        # passive declare with the same attributes succeeds only if they match
        Exchange("coder.events", type="topic", durable=True)(conn.channel()).declare(passive=True)
        with pytest.raises(Exception, match=r"PRECONDITION_FAILED|inequivalent"):
            Exchange("coder.events", type="topic", durable=False)(conn.channel()).declare()


class Proxy:
    """A TCP proxy to the broker that can be stopped (every connection cut, the port refusing)
    and started again on the same port: a broker outage, without touching the broker."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                server.bind(("127.0.0.1", self.port))
                break
            except OSError:
                # a connection of the previous run may still be closing on this port
                server.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.listen(16)
        with self._lock:
            self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._sockets = self._sockets, []
        if server is not None:
            server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _keep(self, server: socket.socket, sock: socket.socket) -> bool:
        """Track a socket for stop(); False (and closed) when the proxy stopped meanwhile."""
        with self._lock:
            if self._server is server:
                self._sockets.append(sock)
                return True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        return False

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if not self._keep(server, client):
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            if not self._keep(server, upstream):
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(rabbitmq: str) -> Iterator[Proxy]:
    parts = kombu.utils.url.parse_url(rabbitmq)
    p = Proxy((parts["hostname"] or "127.0.0.1", parts["port"] or 5672))
    yield p
    p.stop()


def proxied(rabbitmq: str, port: int) -> str:
    parts = kombu.utils.url.parse_url(rabbitmq)
    vhost = parts.get("virtual_host") or "/"
    return (
        f"amqp://{parts['userid'] or 'guest'}:{parts['password'] or 'guest'}@127.0.0.1:{port}/"
        f"{'' if vhost == '/' else vhost}"
    )


def test_events_wait_for_the_broker_and_flush_when_it_returns(
    rabbitmq: str, proxy: Proxy, listen: Callable[..., Listener]
) -> None:
    config = events_config(broker_url=proxied(rabbitmq, proxy.port))
    listener = listen(rabbitmq, config["tenant_id"])
    sink = KombuEventSink(config)  # the proxy is not started: connection refused
    slowest = 0.0
    for i in range(3):
        start = time.perf_counter()
        sink.emit("cache.cleared", {"prefix": f"p{i}", "count": i})
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.005
    time.sleep(0.3)  # a few failed attempts
    assert sink.pending == 3
    proxy.start()
    envelopes = listener.wait_for(3)
    assert [e["data"]["prefix"] for e in envelopes] == ["p0", "p1", "p2"]
    # an outage after the connection was made: cut, emit, restore
    proxy.stop()
    sink.emit("cache.cleared", {"prefix": "after", "count": 0})
    time.sleep(0.2)
    proxy.start()
    envelopes = listener.wait_for(4)
    assert envelopes[-1]["data"]["prefix"] == "after"
    assert sink.close(5) == 0
