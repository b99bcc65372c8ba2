"""Issue #18 point 4, the invalidation worker's side: a broker that stops answering while its
connections stay open (a stall), or that drops them, is found out in bounded time, said once,
and costs no event.

The real worker (`run_consumer`, what `cache-middleware events consume` runs) consumes from the
real RabbitMQ through the fault proxy (tests/faults/proxy.py) and invalidates the real Redis.
The events are published straight to RabbitMQ, not through the proxy: the queue is durable, so
an event published while the worker is cut off waits there for it. With `heartbeat: 1` a stall
is found within about two seconds; `connect_timeout: 0.5` bounds each reconnection attempt
against a broker that accepts the connection and never answers.

Each test asserts counts: one WARNING per fault (the retries that follow are DEBUG), one INFO
when the worker consumes again, every event handled.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402

from cache_middleware._core.keys import build_key  # noqa: E402
from cache_middleware.config import load_config  # noqa: E402
from cache_middleware.errors import ConfigError  # noqa: E402
from cache_middleware.events import MemorySink, process_sink  # noqa: E402
from cache_middleware.events.consumer import run_consumer  # noqa: E402
from cache_middleware.events.envelope import load_events_config  # noqa: E402
from cache_middleware.events.in_process import (  # noqa: E402
    InProcessConsumer,
    start_in_process_consumer,
)
from cache_middleware.events.publisher import KombuEventSink  # noqa: E402

from .faults.proxy import FaultProxy  # noqa: E402
from .test_events_publisher import AMQP_URL, events_config  # noqa: E402

LOGGER = "cache_middleware.events"
HEARTBEAT = 1  # seconds: a stall is found within about two of them
CONNECT_TIMEOUT = 0.5
WAIT = 15.0
# What the worker says about the broker link, and nothing else on the logger counts here (the
# `cache.invalidated` publisher has its own once-per-stall lines, tested in test_faults_broker).
LINK_WARNINGS = ("lost the connection to", "cannot reach")


@pytest.fixture
def proxy(rabbitmq: str) -> Iterator[FaultProxy]:
    parts = kombu.utils.url.parse_url(rabbitmq)
    fault_proxy = FaultProxy(parts["hostname"] or "127.0.0.1", parts["port"] or 5672).start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture(autouse=True)
def close_process_sinks() -> Iterator[None]:
    yield
    process_sink.flush_process_sinks(2)


def _until(condition: Callable[[], bool], what: str, seconds: float = WAIT) -> float:
    """Wait for `condition`; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"never happened: {what}"
        time.sleep(0.02)
    return time.monotonic() - started


class Scene:
    """The worker of a config of its own (queue, key prefix), run by `run_consumer` in a thread,
    consuming through `proxy`; entries in the real Redis; events published to RabbitMQ."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        prefix: str,
        proxy: FaultProxy,
        caplog: pytest.LogCaptureFixture,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.prefix = prefix
        self.proxy = proxy
        self.caplog = caplog
        self.queue = f"test-faults-worker-{uuid.uuid4().hex[:10]}"
        parts = kombu.utils.url.parse_url(AMQP_URL)
        broker = (
            f"amqp://{parts['userid'] or 'guest'}:{parts['password'] or 'guest'}"
            f"@127.0.0.1:{proxy.port}//"
        )
        config: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": prefix,
            "routes": {"/api/products/{id}": {"ttl": 60}},
            "events": events_config(
                broker_url=broker,
                heartbeat=HEARTBEAT,
                connect_timeout=connect_timeout,
                consume={
                    "queue": self.queue,
                    "dead_letter_queue": f"{self.queue}.dead",
                    "entities": {"product": {"paths": ["/api/products/{entityId}"]}},
                },
            ),
        }
        self.config = config
        self.path = tmp_path / "cache.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.in_process: InProcessConsumer | None = None
        self.redis = redis.Redis.from_url(redis_url)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_consumer, args=(self.path,), kwargs={"stop": self.stop}, daemon=True
        )
        self.publisher = Connection(AMQP_URL)
        self.producer = Producer(self.publisher.channel())
        self.exchange = Exchange("coder.events", type="topic", durable=True)

    # -- the worker and what it says --------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        self.wait_for(logging.INFO, "connected to amqp://")

    def start_in_process(self) -> None:
        """The same worker as an app process's thread (`consume.in_process`)."""
        self.in_process = start_in_process_consumer(
            load_config(self.config), load_events_config(self.config), MemorySink()
        )
        assert self.in_process.wait_consuming(WAIT), "the consumer never started consuming"

    def stopped_within(self, seconds: float) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(seconds)
        took = time.monotonic() - started
        assert not self.thread.is_alive(), f"the worker did not stop within {seconds} s"
        return took

    def records(self, level: int, text: str) -> list[str]:
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(text)
        ]

    def link_warnings(self) -> list[str]:
        return [m for text in LINK_WARNINGS for m in self.records(logging.WARNING, text)]

    def wait_for(self, level: int, text: str, count: int = 1) -> float:
        return _until(
            lambda: len(self.records(level, text)) >= count,
            f"{logging.getLevelName(level)} {text!r} x{count}",
        )

    # -- entries and events -----------------------------------------------------------------

    def entry(self, product: str) -> str:
        key = build_key(self.prefix, "GET", f"/api/products/{product}", [], None, None)
        self.redis.set(key, b"cached", ex=60)
        return key

    def cached(self, key: str) -> bool:
        return bool(self.redis.exists(key))

    def publish_update(self, product: str) -> None:
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "data.updated",
            "version": "1.0",
            "timestamp": "2026-01-23T10:00:00Z",
            "tenantId": str(uuid.uuid4()),
            "source": {"service": "catalog"},
            "data": {"entityType": "product", "entityId": product},
        }
        self.producer.publish(
            json.dumps(envelope),
            exchange=self.exchange,
            routing_key="data.updated",
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
        )

    def invalidated(self, key: str) -> float:
        return _until(lambda: not self.cached(key), f"{key} invalidated")

    def close(self) -> None:
        self.stop.set()
        self.proxy.resume()
        self.proxy.refuse = False
        if self.thread.is_alive():
            self.thread.join(WAIT)
        if self.in_process is not None:
            self.in_process.stop(WAIT)
        channel = self.publisher.channel()
        for name in (self.queue, f"{self.queue}.dead"):
            Queue(name)(channel).delete()
        self.publisher.release()
        self.redis.close()


@pytest.fixture
def scene(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Scene]:
    """A Scene; `@pytest.mark.parametrize("scene", [seconds], indirect=True)` sets its
    connect_timeout."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    connect_timeout = getattr(request, "param", CONNECT_TIMEOUT)
    s = Scene(tmp_path, redis_url, prefix, proxy, caplog, connect_timeout)
    try:
        yield s
    finally:
        s.close()


# The default connect_timeout: a connection that failed must not wait for the broker's goodbye
# (a channel close and a connection close, each up to connect_timeout on a stalled broker)
# before the worker says so and reconnects.
@pytest.mark.parametrize("scene", [2.0], indirect=True)
def test_a_stall_is_found_said_once_and_costs_no_event(scene: Scene) -> None:
    scene.start()
    first = scene.entry("1")
    scene.publish_update("1")
    scene.invalidated(first)  # consuming through the proxy

    during = scene.entry("2")
    scene.proxy.stall()
    scene.publish_update("2")  # the queue is durable: it waits for the worker
    found = scene.wait_for(logging.WARNING, "lost the connection to amqp://")
    assert found < 2 * HEARTBEAT + 1.5, f"a stall found after {found:.1f} s"
    # the reconnection attempts go on, each bounded by connect_timeout, quietly: waited for as
    # logged (a proxy's accept comes a connect_timeout before the attempt's DEBUG line, and on
    # a loaded machine the line of the last accepted one may not be written yet)
    accepted = scene.proxy.accepted
    _until(lambda: scene.proxy.accepted >= accepted + 3, "three reconnection attempts")
    scene.wait_for(logging.DEBUG, "cannot reach amqp://", count=2)
    assert scene.cached(during)
    scene.proxy.resume()
    scene.wait_for(logging.INFO, "reconnected to amqp://")
    scene.invalidated(during)  # the event of the stall was not lost

    after = scene.entry("3")
    scene.publish_update("3")
    scene.invalidated(after)

    (warning,) = scene.link_warnings()
    assert "heartbeats missed" in warning  # found by the heartbeats, not by an event
    assert len(scene.records(logging.DEBUG, "cannot reach amqp://")) >= 2
    assert len(scene.records(logging.INFO, "reconnected to amqp://")) == 1
    assert "guest:guest@" not in scene.caplog.text


def test_a_dropped_connection_is_said_once_and_costs_no_event(scene: Scene) -> None:
    scene.start()
    during = scene.entry("1")
    scene.proxy.refuse = True  # the broker closes every connection, new ones at once
    assert scene.proxy.cut() >= 1
    scene.wait_for(logging.WARNING, "lost the connection to amqp://")
    scene.publish_update("1")
    accepted_attempts = len(scene.records(logging.DEBUG, "cannot reach amqp://"))
    scene.wait_for(logging.DEBUG, "cannot reach amqp://", count=accepted_attempts + 3)
    assert scene.cached(during)
    scene.proxy.refuse = False
    scene.wait_for(logging.INFO, "reconnected to amqp://")
    scene.invalidated(during)

    # a second fault, the idle-timeout kind (FIN, not RST): said once more, and work resumes
    scene.proxy.close_idle(0)
    scene.wait_for(logging.INFO, "reconnected to amqp://", count=2)
    after = scene.entry("2")
    scene.publish_update("2")
    scene.invalidated(after)

    assert len(scene.link_warnings()) == 2, scene.link_warnings()
    assert len(scene.records(logging.INFO, "reconnected to amqp://")) == 2


def test_the_worker_stops_while_the_broker_is_stalled(scene: Scene) -> None:
    scene.start()
    scene.proxy.stall()
    # at once: the goodbye to a broker that does not answer is bounded too
    assert scene.stopped_within(3 * CONNECT_TIMEOUT + 2) < 3 * CONNECT_TIMEOUT + 2


def test_the_worker_stops_while_reconnecting_to_a_stalled_broker(scene: Scene) -> None:
    scene.start()
    scene.proxy.stall()
    scene.wait_for(logging.WARNING, "lost the connection to amqp://")
    accepted = scene.proxy.accepted
    _until(lambda: scene.proxy.accepted > accepted, "a reconnection attempt")
    assert scene.stopped_within(CONNECT_TIMEOUT + 2) < CONNECT_TIMEOUT + 2
    assert len(scene.link_warnings()) == 1


def test_in_process_a_second_fault_is_said_again(scene: Scene) -> None:
    """The in-process consumer (events/in_process.py: its own connection attempts, its own
    hooks) ends a fault when it consumes again too: a second loss after a recovery is a
    second warning, not a DEBUG line of the first."""
    scene.start_in_process()
    for fault in (1, 2):
        scene.proxy.refuse = True
        assert scene.proxy.cut() >= 1
        scene.wait_for(logging.WARNING, "lost the connection to amqp://", count=fault)
        entry = scene.entry(str(fault))
        scene.publish_update(str(fault))
        scene.proxy.refuse = False
        scene.invalidated(entry)
    assert len(scene.link_warnings()) == 2, scene.link_warnings()


def test_heartbeat_is_whole_seconds_and_defaults_to_ten() -> None:
    base = events_config()
    assert load_events_config(base).heartbeat == 10
    assert load_events_config({**base, "heartbeat": 1}).heartbeat == 1
    for bad in (0, 1.5, "10", True, 601):
        with pytest.raises(ConfigError, match=r"events\.heartbeat"):
            load_events_config({**base, "heartbeat": bad})


# -- events.heartbeat drives the in-process consumer and the publisher too ---------------------


def test_in_process_a_stall_is_found_within_two_heartbeats(scene: Scene) -> None:
    """The in-process consumer's connection takes `events.heartbeat` (it used 30 s whatever
    the setting said: a stall went unsaid for a minute)."""
    scene.start_in_process()
    during = scene.entry("1")
    scene.proxy.stall()
    scene.publish_update("1")  # the shared queue is durable: it waits for the consumer
    found = scene.wait_for(logging.WARNING, "lost the connection to amqp://")
    assert found < 2 * HEARTBEAT + 1.5, f"a stall found after {found:.1f} s"
    scene.proxy.resume()
    scene.wait_for(logging.INFO, "reconnected to amqp://")
    scene.invalidated(during)
    (warning,) = scene.link_warnings()
    assert "heartbeats missed" in warning


def _idle_publisher(proxy: FaultProxy, connect_timeout: float = CONNECT_TIMEOUT) -> KombuEventSink:
    """A publisher through `proxy` with `heartbeat: 1` that published one event and is idle."""
    parts = kombu.utils.url.parse_url(AMQP_URL)
    sink = KombuEventSink(
        events_config(heartbeat=HEARTBEAT, connect_timeout=connect_timeout),
        broker_url=f"amqp://{parts['userid'] or 'guest'}:{parts['password'] or 'guest'}"
        f"@127.0.0.1:{proxy.port}//",
    )
    sink.emit("cache.warmed", {"keys": 1, "routes": ["/api/products/{id}"]})
    _until(lambda: sink.published == 1, "the first event published")
    return sink


def _lost_while_idle(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and "lost while idle" in r.getMessage()
    ]


def test_an_idle_publisher_keeps_a_healthy_connection(
    proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle, the publisher reads the broker's heartbeats before it checks them: unread, they
    counted as missed, and a healthy connection was dropped every two heartbeats."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sink = _idle_publisher(proxy)
    try:
        connection = sink._connection
        time.sleep(3 * HEARTBEAT + 0.5)
        assert sink._connection is connection, _lost_while_idle(caplog)
        assert proxy.accepted == 1
    finally:
        sink.close(2)


def test_an_idle_publisher_finds_a_stall_and_is_not_held_by_it(
    proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The publisher's heartbeats are `events.heartbeat` (a constant 10 s before): a stall while
    idle ends the connection within two of them, said at INFO (no event waits: nothing is lost
    yet), and without waiting for the stalled broker's goodbye (the wait held the publishing
    thread, with the lock every `emit()` takes, until the broker answered again). Events
    emitted during the stall: one WARNING, quiet retries, published when it answers."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    # The default connect_timeout: a goodbye awaited that long would push the finding past
    # the bound below.
    sink = _idle_publisher(proxy, connect_timeout=2.0)
    try:
        proxy.stall()
        found = _until(lambda: bool(_lost_while_idle(caplog)), "the stall said")
        assert found < 2 * HEARTBEAT + 1.5, f"a stall found after {found:.1f} s"
        (lost,) = _lost_while_idle(caplog)
        assert "heartbeats missed" in lost and "guest:guest@" not in lost
        started = time.monotonic()
        sink.emit("cache.warmed", {"keys": 2, "routes": ["/api/products/{id}"]})
        assert time.monotonic() - started < 0.1  # emit() never waits for the broker
        _until(lambda: sink.failures >= 2, "two attempts on the stalled broker")
        proxy.resume()
        _until(lambda: sink.published == 2, "the event published once it answers")
        _until(lambda: proxy.open_connections() == 1, "the stalled ones dropped", seconds=1.0)
    finally:
        sink.close(2)
    said = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]
    assert [r.levelno for r in said if r.getMessage().startswith("cannot publish")] == [
        logging.WARNING
    ]
    assert sum(r.getMessage().startswith("publishing to") for r in said) == 1  # it ended
