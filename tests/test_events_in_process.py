"""In-process invalidation (`events.consume.in_process`): the worker in a daemon thread of the app.

On the memory store every process consumes from a queue of its own (each sees every event); on
Redis the processes share the durable queue (each event handled once). Two consumers in this one
process stand in for two app processes. RabbitMQ and Redis are the real ones (see
test_events_publisher / conftest); kombu's memory:// transport gives a fast variant.

Other tests publish to the same `coder.events` exchange at the same time, so every test maps an
entity type of its own and asserts on its own entries and events, never on message counts.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402

from cache_middleware.config import load_config  # noqa: E402
from cache_middleware.errors import ConfigError  # noqa: E402
from cache_middleware.events import MemorySink  # noqa: E402
from cache_middleware.events import in_process as in_process_module  # noqa: E402
from cache_middleware.events.envelope import load_events_config  # noqa: E402
from cache_middleware.events.in_process import (  # noqa: E402
    InProcessConsumer,
    events_settings_of,
    maybe_start_in_process,
    start_in_process_consumer,
)
from cache_middleware.storage.factory import make_sync_store, shared_memory_store  # noqa: E402

from .adapters import Harness  # noqa: E402
from .test_events_envelope import ORG, TENANT  # noqa: E402
from .test_events_publisher import Proxy, proxied  # noqa: E402

WAIT = 10.0
LOGGER = "cache_middleware.events"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


class World:
    """One test's names: an entity type, a queue and a key prefix no other test uses."""

    def __init__(
        self, broker: str, redis_url: str, direct: str | None = None, **events_extra: Any
    ) -> None:
        tag = uuid.uuid4().hex[:10]
        self.broker = direct or broker  # where the test publishes and cleans up
        self.entity = f"product_{tag}"
        self.queue = f"test-in-process-{tag}"
        self.prefix = f"cmtest:{tag}"
        self.redis_url = redis_url
        consume = {
            "queue": self.queue,
            "dead_letter_queue": f"{self.queue}.dead",
            "in_process": True,
            "entities": {self.entity: {"paths": ["/api/products/{entityId}"]}},
            **events_extra.pop("consume", {}),
        }
        self.config: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": self.prefix,
            "routes": {"/api/products/{id}": {"ttl": 60}},
            "events": {
                "broker_url": broker,  # where the consumers connect
                "tenant_id": TENANT,
                "organization_id": ORG,
                "reconnect_max": 0.2,
                "connect_timeout": 1,
                "consume": consume,
                **events_extra,
            },
        }
        self.settings = load_config(self.config)
        self.events = load_events_config(self.config)
        self.exchange = Exchange("coder.events", type="topic", durable=True)
        self.consumers: list[InProcessConsumer] = []

    def key(self, product: object) -> str:
        return f"{self.prefix}:GET:/api/products/{product}"

    def start(self, sink: Any = None, redis_url: str | None = None) -> InProcessConsumer:
        settings = self.settings
        if redis_url is not None:  # another "process" with a memory store of its own
            settings = load_config({**self.config, "redis_url": redis_url})
        consumer = start_in_process_consumer(
            settings, self.events, sink or MemorySink(), safety_interval=0.1, requeue_pause=0.05
        )
        self.consumers.append(consumer)
        assert consumer.wait_consuming(WAIT), "the consumer never started consuming"
        return consumer

    def publish(self, product: object, event_id: str | None = None) -> str:
        event_id = event_id or str(uuid.uuid4())
        body = {
            "id": event_id,
            "type": "data.updated",
            "version": "1.0",
            "timestamp": "2026-01-23T10:00:00Z",
            "tenantId": TENANT,
            "source": {"service": "catalog"},
            "data": {"entityType": self.entity, "entityId": product},
        }
        with Connection(self.broker) as conn:
            Producer(conn.channel()).publish(
                json.dumps(body),
                exchange=self.exchange,
                routing_key="data.updated",
                content_type="application/json",
                retry=True,
            )
        return event_id

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.stop(5)
            assert not consumer.running
        with Connection(self.broker) as conn:
            for name in (self.queue, f"{self.queue}.dead"):
                Queue(name)(conn.channel()).delete()


@pytest.fixture
def world_factory(memory_url: str) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(
        broker: str, redis_url: str | None = None, direct: str | None = None, **extra: Any
    ) -> World:
        world = World(broker, redis_url or memory_url, direct, **extra)
        made.append(world)
        return world

    yield make
    for world in made:
        world.close()


# -- configuration ----------------------------------------------------------------------------


def test_switches_default_off_and_are_validated() -> None:
    base = {"tenant_id": TENANT, "organization_id": ORG}
    events = load_events_config(base)
    assert events.consume.in_process is False and events.report_expired is False
    events = load_events_config({**base, "report_expired": True, "consume": {"in_process": True}})
    assert events.consume.in_process is True and events.report_expired is True
    with pytest.raises(ConfigError, match=r"^<dict>: events\.consume\.in_process: must be true"):
        load_events_config({**base, "consume": {"in_process": "yes"}})
    with pytest.raises(ConfigError, match=r"events\.report_expired: must be true or false, got 1"):
        load_events_config({**base, "report_expired": 1})


def test_events_settings_of_each_config_source(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(
        "routes: {'/a': {ttl: 60}}\n"
        f"events:\n  tenant_id: {TENANT}\n  organization_id: {ORG}\n"
        "  consume: {in_process: true}\n"
    )
    from_path = events_settings_of(path)
    assert from_path is not None and from_path.consume.in_process
    assert from_path.source == "cache.yaml"
    assert events_settings_of(str(path)) == from_path
    (tmp_path / "plain.yaml").write_text("routes: {'/a': {ttl: 60}}\n")
    assert events_settings_of(tmp_path / "plain.yaml") is None
    as_dict = {"routes": {}, "events": {"tenant_id": TENANT, "organization_id": ORG}}
    from_dict = events_settings_of(as_dict)
    assert from_dict is not None and not from_dict.consume.in_process
    assert events_settings_of({"routes": {}}) is None
    # Settings do not carry the events section
    assert events_settings_of(load_config(as_dict)) is None
    assert events_settings_of(None) is None
    path.write_text(f"events:\n  tenant_id: acme\n  organization_id: {ORG}\n")
    with pytest.raises(ConfigError, match=r"^cache\.yaml: events\.tenant_id: must be a UUID"):
        events_settings_of(path)


def test_maybe_start_is_none_when_off_or_without_kombu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, memory_url: str
) -> None:
    off = {"redis_url": memory_url, "events": {"tenant_id": TENANT, "organization_id": ORG}}
    assert maybe_start_in_process(off, load_config(off)) is None
    assert maybe_start_in_process({"redis_url": memory_url}, load_config({})) is None
    on = {**off, "events": {**off["events"], "consume": {"in_process": True}}}
    assert maybe_start_in_process(load_config(on), load_config(on)) is None  # a Settings
    monkeypatch.setitem(sys.modules, "kombu", None)  # import kombu -> ImportError
    assert maybe_start_in_process(on, load_config(on)) is None
    assert "kombu is not installed" in caplog.text


# -- kombu's memory transport (fast) ---------------------------------------------------------------


def test_memory_transport_every_process_sees_every_event(
    world_factory: Callable[..., World],
) -> None:
    world = world_factory("memory://")
    other_store = f"memory://{uuid.uuid4().hex[:12]}"
    first, second = world.start(), world.start(redis_url=other_store)
    stores = [shared_memory_store(world.settings), make_sync_store(second.settings)]
    assert first.store is stores[0] and second.store is stores[1]
    for store in stores:
        store.set(world.key(42), b"x", 60)
        store.set(world.key(7), b"x", 60)
    world.publish(42)
    wait_until(lambda: all(store.get(world.key(42)) is None for store in stores))
    assert all(store.get(world.key(7)) is not None for store in stores)


# -- the real RabbitMQ -------------------------------------------------------------------------


def test_memory_store_each_process_has_its_own_exclusive_queue(
    rabbitmq: str,
    world_factory: Callable[..., World],
) -> None:
    world = world_factory(rabbitmq)
    sinks = [MemorySink(), MemorySink()]
    first = world.start(sinks[0])
    second = world.start(sinks[1], redis_url=f"memory://{uuid.uuid4().hex[:12]}")
    names = [first.queue_name, second.queue_name]
    assert names[0] != names[1]
    for name in names:
        assert name.startswith(f"{world.queue}.") and f".{os.getpid()}." in name
    stores = [first.store, second.store]
    for store in stores:
        store.set(world.key(42), b"x", 60)
        store.set(world.key(420), b"x", 60)
    event_id = world.publish(42)
    wait_until(lambda: all(store.get(world.key(42)) is None for store in stores))
    assert all(store.get(world.key(420)) is not None for store in stores)
    # each process reports its own invalidation
    for sink in sinks:
        wait_until(
            lambda sink=sink: any(d.get("source_event_id") == event_id for _, d in sink.events)
        )
    with Connection(rabbitmq) as conn:
        # exclusive: another connection may not even look at it
        with pytest.raises(Exception, match="RESOURCE_LOCKED"):
            conn.channel().queue_declare(names[0], passive=True)
        first.stop(5)
        # exclusive and auto-delete: gone with its connection
        with pytest.raises(Exception, match=r"NOT_FOUND|no queue"):
            conn.channel().queue_declare(names[0], passive=True)
    # the other process goes on
    second.store.set(world.key(42), b"x", 60)
    world.publish(42)
    wait_until(lambda: second.store.get(world.key(42)) is None)


def test_redis_store_processes_share_the_durable_queue(
    rabbitmq: str,
    redis_url: str,
    world_factory: Callable[..., World],
) -> None:
    world = world_factory(rabbitmq, redis_url)
    sinks = [MemorySink(), MemorySink()]
    consumers = [world.start(sinks[0]), world.start(sinks[1])]
    assert all(c.queue_name == world.queue and c.shared for c in consumers)
    store = make_sync_store(world.settings)
    try:
        for product in range(12):
            store.set(world.key(product), b"x", 60)
        ids = {world.publish(product) for product in range(12)}
        wait_until(lambda: all(store.get(world.key(p)) is None for p in range(12)))

        def reported() -> list[str]:
            return [
                d["source_event_id"]
                for sink in sinks
                for _, d in sink.events
                if d.get("source_event_id") in ids
            ]

        wait_until(lambda: len(reported()) >= 12)
        assert sorted(reported()) == sorted(ids)  # each event handled once, by one process
        with Connection(rabbitmq) as conn:
            ok = conn.channel().queue_declare(world.queue, passive=True)
            assert ok.consumer_count == 2
    finally:
        store.close()


async def _get(harness: Harness, target: str) -> str | None:
    return (await harness.request("GET", target)).x_cache


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
async def test_an_app_is_invalidated_by_data_updated(
    kind: str,
    rabbitmq: str,
    world_factory: Callable[..., World],
) -> None:
    world = world_factory(rabbitmq)
    config = {k: v for k, v in world.config.items() if k != "redis_url"}
    harness = Harness(
        kind, config, {"url": world.redis_url, "async_store": None, "sync_store": None}
    )
    # what the middleware's __init__ does with the wiring lines
    consumer = maybe_start_in_process(world.config, harness.middleware.settings)
    assert consumer is not None
    world.consumers.append(consumer)
    assert maybe_start_in_process(world.config, harness.middleware.settings) is consumer
    assert consumer.wait_consuming(WAIT)
    try:
        assert await _get(harness, "/api/products/42") == "MISS"
        assert await _get(harness, "/api/products/42") == "HIT"
        assert await _get(harness, "/api/products/43") == "MISS"
        world.publish(42)
        deadline = time.monotonic() + WAIT
        while (state := await _get(harness, "/api/products/42")) == "HIT":
            assert time.monotonic() < deadline, "never invalidated"
            time.sleep(0.01)
        assert state == "MISS"
        assert await _get(harness, "/api/products/43") == "HIT"
    finally:
        await harness.aclose()
        consumer.stop(5)
    # stopped: asking again starts a new one
    again = maybe_start_in_process(world.config, harness.middleware.settings)
    assert again is not None and again is not consumer
    world.consumers.append(again)


def test_reconnects_after_a_broker_outage(
    rabbitmq: str,
    world_factory: Callable[..., World],
) -> None:
    proxy = Proxy(
        (
            kombu.utils.url.parse_url(rabbitmq)["hostname"] or "127.0.0.1",
            kombu.utils.url.parse_url(rabbitmq)["port"] or 5672,
        )
    )
    try:
        world = world_factory(proxied(rabbitmq, proxy.port), direct=rabbitmq)
        consumer = start_in_process_consumer(
            world.settings, world.events, MemorySink(), safety_interval=0.1
        )
        world.consumers.append(consumer)
        time.sleep(0.2)  # refused a few times
        assert not consumer.consuming.is_set() and consumer.running
        proxy.start()
        assert consumer.wait_consuming(WAIT)
        proxy.stop()  # the broker goes away while consuming
        wait_until(lambda: not consumer.consuming.is_set(), what="the loss to be noticed")
        proxy.start()
        assert consumer.wait_consuming(WAIT)
        consumer.store.set(world.key(5), b"x", 60)
        world.publish(5)
        wait_until(lambda: consumer.store.get(world.key(5)) is None)
    finally:
        proxy.stop()


# What the in-process consumer says about the broker link (other tests' malformed events make
# it log dead-lettered WARNINGs on the same logger: those are not about the link).
LINK = (
    "cannot reach",
    "lost the connection",
    "in-process invalidation:",
    "connected",
    "reconnected",
)


def link_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(level, first words) of each line about the broker link, in the order logged."""
    return [
        (r.levelno, next(text for text in LINK if r.getMessage().startswith(text)))
        for r in caplog.records
        if r.name == LOGGER and r.getMessage().startswith(LINK)
    ]


def test_a_broker_fault_is_said_once_and_its_end_at_info(
    rabbitmq: str,
    world_factory: Callable[..., World],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two faults (unreachable at start, then lost while consuming): each is one WARNING, its
    attempts DEBUG, its end one INFO. Before, the thread added a WARNING "broker unreachable"
    of its own to the worker's "lost the connection", and said the recovery at WARNING."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    parts = kombu.utils.url.parse_url(rabbitmq)
    proxy = Proxy((parts["hostname"] or "127.0.0.1", parts["port"] or 5672))
    try:
        world = world_factory(proxied(rabbitmq, proxy.port), direct=rabbitmq)
        consumer = start_in_process_consumer(
            world.settings, world.events, MemorySink(), safety_interval=0.1
        )
        world.consumers.append(consumer)
        wait_until(lambda: (logging.DEBUG, "cannot reach") in link_lines(caplog))
        proxy.start()
        assert consumer.wait_consuming(WAIT)
        proxy.stop()  # the broker goes away while consuming
        wait_until(lambda: link_lines(caplog).count((logging.DEBUG, "cannot reach")) >= 2)
        proxy.start()
        wait_until(lambda: (logging.INFO, "reconnected") in link_lines(caplog))
        said = link_lines(caplog)  # before the proxy goes away for good
    finally:
        proxy.stop()
    lines = [line for line in said if line[1] != "in-process invalidation:"]
    first_fault = lines.index((logging.INFO, "connected"))
    second_fault = lines.index((logging.INFO, "reconnected"))
    assert lines[0] == (logging.WARNING, "cannot reach")
    assert set(lines[1:first_fault]) == {(logging.DEBUG, "cannot reach")}
    assert lines[first_fault + 1] == (logging.WARNING, "lost the connection")
    assert set(lines[first_fault + 2 : second_fault]) == {(logging.DEBUG, "cannot reach")}
    assert lines[second_fault:] == [(logging.INFO, "reconnected")]
    # the start is said once, at INFO, and nothing of the thread's own at WARNING
    assert [line for line in said if line[1] == "in-process invalidation:"] == [
        (logging.INFO, "in-process invalidation:")
    ]
    (reconnected,) = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("reconnected")
    ]
    assert reconnected.endswith("s without the broker)") and world.queue in reconnected


def test_a_failure_that_is_not_the_broker_is_logged_with_its_traceback_once(
    world_factory: Callable[..., World],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug is not "cannot reach the broker": its traceback once, then INFO when it consumes."""
    world = world_factory("memory://")
    consumer = InProcessConsumer(world.settings, world.events, MemorySink(), safety_interval=0.1)
    world.consumers.append(consumer)
    real_run, failures = consumer.worker.run, []

    def failing_twice(**kwargs: Any) -> None:
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("a bug")
        real_run(**kwargs)

    monkeypatch.setattr(consumer.worker, "run", failing_twice)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        consumer.start()
        assert consumer.wait_consuming(WAIT)
    (error,) = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == LOGGER]
    assert error.levelno == logging.ERROR and error.exc_info is not None
    assert error.getMessage() == "in-process invalidation: the consumer failed: restarting"
    assert "in-process invalidation: consuming again" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.INFO
    ]
    assert not [r for r in caplog.records if r.getMessage().startswith("cannot reach")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_consumes_with_its_own_queue(
    rabbitmq: str,
    world_factory: Callable[..., World],
) -> None:
    world = world_factory(rabbitmq)
    consumer = world.start()
    parent_queue = consumer.queue_name
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it runs, then leave without running atexit hooks
        code = 1
        try:
            os.close(read)
            ok = consumer.wait_consuming(WAIT)
            mine = consumer.pid == os.getpid() and consumer.queue_name != parent_queue
            consumer.store.set(world.key(9), b"x", 60)
            world.publish(9)
            deadline = time.monotonic() + WAIT
            while consumer.store.get(world.key(9)) is not None and time.monotonic() < deadline:
                time.sleep(0.01)
            gone = consumer.store.get(world.key(9)) is None
            os.write(write, json.dumps([ok, mine, gone, consumer.queue_name]).encode())
            consumer.stop(2)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the child hung"
        time.sleep(0.02)
    with os.fdopen(read) as pipe:
        ok, mine, gone, child_queue = json.loads(pipe.read())
    assert os.waitstatus_to_exitcode(status) == 0
    assert ok and mine and gone, child_queue
    assert f".{pid}." in child_queue
    assert consumer.running and consumer.queue_name == parent_queue
    assert consumer in in_process_module._live


def test_the_middleware_starts_its_consumer_and_stops_it_at_shutdown(
    rabbitmq: str,
    world_factory: Callable[..., World],
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from cache_middleware import CacheMiddleware

    world = world_factory(rabbitmq)

    async def product(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    app = Starlette(routes=[Route("/api/products/{id}", product)])
    app.add_middleware(CacheMiddleware, config=world.config)
    with TestClient(app) as client:  # runs the lifespan: startup now, shutdown on exit
        middleware = app.middleware_stack
        while not isinstance(middleware, CacheMiddleware):
            middleware = middleware.app  # type: ignore[attr-defined]
        consumer = middleware.events_consumer
        assert consumer is not None, "events.consume.in_process did not start a consumer"
        world.consumers.append(consumer)
        assert consumer.wait_consuming(WAIT)
        assert client.get("/api/products/7").headers["x-cache"] == "MISS"
        assert client.get("/api/products/7").headers["x-cache"] == "HIT"
        world.publish(7)
        deadline = time.monotonic() + WAIT
        while client.get("/api/products/7").headers["x-cache"] == "HIT":
            assert time.monotonic() < deadline, "never invalidated"
            time.sleep(0.01)
    assert not consumer.running, "lifespan shutdown did not stop the consumer"
