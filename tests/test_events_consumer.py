"""The invalidation worker: data.updated / user.updated from coder.events -> store deletions."""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402

from cache_middleware._core.keys import build_key, tag_index_key  # noqa: E402
from cache_middleware.config import Settings  # noqa: E402
from cache_middleware.errors import ConfigError  # noqa: E402
from cache_middleware.events import MemorySink  # noqa: E402
from cache_middleware.events.consumer import (  # noqa: E402
    BadEvent,
    InvalidationWorker,
    invalidation_plan,
    load_consumer_config,
)
from cache_middleware.events.envelope import build_envelopes, load_events_config  # noqa: E402
from cache_middleware.storage.base import Indexed  # noqa: E402
from cache_middleware.storage.memory import MemoryStore  # noqa: E402

from .test_events_envelope import ORG, TENANT, validate  # noqa: E402

PREFIX = "gateway:response"
ENTITIES = {
    "product": {
        "tags": ["product:{entityId}"],
        "paths": ["/api/products/{entityId}", "/api/products/{entityId}/*"],
    },
}


def events_settings(queue: str = "cache-management.invalidations") -> Any:
    return load_events_config(
        {
            "tenant_id": TENANT,
            "organization_id": ORG,
            "consume": {
                "queue": queue,
                "dead_letter_queue": f"{queue}.dead",
                "entities": ENTITIES,
            },
        }
    )


def key(path: str, user: str | None = None, pairs: list[tuple[str, str]] | None = None) -> str:
    return build_key(PREFIX, "GET", path, pairs or [], user, None)


def envelope(event_type: str, data: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "version": "1.0",
        "timestamp": "2026-01-23T10:00:00Z",
        "tenantId": TENANT,
        "source": {"service": "catalog"},
        "data": data,
    }


# -- the plan (pure) ----------------------------------------------------------------------------


def test_plan_escapes_ids_in_globs() -> None:
    plan = invalidation_plan(
        envelope("data.updated", {"entityType": "product", "entityId": "4*2 [x]"}),
        events_settings(),
        PREFIX,
    )
    assert plan is not None
    patterns, indexes, _ = plan
    assert patterns == [
        f"{PREFIX}:GET:/api/products/4%2A2%20%5Bx%5D",
        f"{PREFIX}:GET:/api/products/4%2A2%20%5Bx%5D:*",
        f"{PREFIX}:GET:/api/products/4%2A2%20%5Bx%5D/*",
    ]
    assert indexes == [tag_index_key(PREFIX, "product:4*2 [x]")]


def test_plan_of_unmapped_entity_is_none_and_bad_events_raise() -> None:
    s = events_settings()
    assert invalidation_plan(envelope("data.updated", {"entityType": "order"}), s, PREFIX) is None
    for bad, message in (
        ([1], "not a JSON object"),
        ({"type": "data.updated", "data": {}}, "no id"),
        (envelope("data.created", {}), "unexpected event type"),
        (envelope("data.updated", {"entityId": 1}), "without data.entityType"),
        (envelope("data.updated", {"entityType": "product"}), r"\{entityId\}"),
        (envelope("user.updated", {"name": "x"}), r"\{userId\}"),
    ):
        with pytest.raises(BadEvent, match=message):
            invalidation_plan(bad, s, PREFIX)


def test_consumer_config_from_the_cache_yaml(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(
        "key_prefix: shop\nroutes: {'/api/products/{id}': {ttl: 60}}\n"
        f"events:\n  tenant_id: {TENANT}\n  organization_id: {ORG}\n"
        "  consume: {entities: {product: {tags: ['product:{entityId}']}}}\n"
    )
    settings, events = load_consumer_config(path)
    assert settings.key_prefix == "shop" and settings.source == "cache.yaml"
    assert events.consume.rule("product") is not None
    path.write_text(f"ttl: 1\nevents:\n  tenant_id: {TENANT}\n  organization_id: {ORG}\n")
    with pytest.raises(ConfigError, match=r"^cache\.yaml: ttl: unknown field"):
        load_consumer_config(path)


# -- against RabbitMQ ---------------------------------------------------------------------------


class Running:
    def __init__(self, url: str) -> None:
        self.queue = f"test-invalidations-{uuid.uuid4().hex}"
        self.events = events_settings(self.queue)
        self.store = MemoryStore()
        self.sink = MemorySink()
        self.connection = Connection(url)
        self.worker = InvalidationWorker(
            self.connection,
            self.events,
            Settings(key_prefix=PREFIX),
            self.store,
            self.sink,
            requeue_pause=0.05,
        )
        self.thread = threading.Thread(
            target=self.worker.run, kwargs={"safety_interval": 0.1}, daemon=True
        )
        self.publisher = Connection(url)
        self.producer = Producer(self.publisher.channel())
        self.exchange = Exchange("coder.events", type="topic", durable=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        # the queue exists (and is bound) once the worker is consuming
        while time.monotonic() < deadline:
            try:
                ok = self.publisher.channel().queue_declare(self.queue, passive=True)
                if ok.consumer_count:
                    return
            except Exception:
                time.sleep(0.02)
        raise AssertionError("the worker never declared its queue")

    def publish(self, body: Any, routing_key: str) -> None:
        self.producer.publish(
            body if isinstance(body, (str, bytes)) else json.dumps(body),
            exchange=self.exchange,
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
        )

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    def stop(self) -> None:
        self.worker.should_stop = True
        self.thread.join(5)
        channel = self.publisher.channel()
        for name in (self.queue, f"{self.queue}.dead"):
            Queue(name)(channel).delete()
        self.publisher.release()
        self.connection.release()


@pytest.fixture
def running(rabbitmq: str) -> Iterator[Running]:
    r = Running(rabbitmq)
    r.start()
    yield r
    r.stop()


def test_data_updated_invalidates_mapped_paths_and_tags(running: Running) -> None:
    store = running.store
    doomed = [
        key("/api/products/42"),
        key("/api/products/42", pairs=[("lang", "en")]),
        key("/api/products/42/reviews"),
    ]
    kept = [key("/api/products/420"), key("/api/products/4*2"), key("/api/products")]
    for k in doomed + kept:
        store.set(k, b"x", 60)
    tagged = key("/api/home")
    store.set_indexed(Indexed(tagged, b"x", 60, tag_index_key(PREFIX, "product:42"), 60))
    event_id = str(uuid.uuid4())
    running.publish(
        envelope("data.updated", {"entityType": "product", "entityId": 42}, event_id),
        "data.updated",
    )
    running.wait(lambda: running.worker.handled == 1)
    assert [k for k in doomed + kept + [tagged] if store.get(k) is not None] == kept
    ((event_type, data),) = running.sink.events
    assert event_type == "cache.invalidated"
    assert data["reason"] == "data_updated" and data["count"] == 4
    assert data["source_event_id"] == event_id
    for env in build_envelopes(event_type, data, running.events):
        validate(env)
        assert env["data"]["sourceEventId"] == event_id

    # the same event again (a redelivery): acknowledged, nothing done twice
    store.set(doomed[0], b"x", 60)
    running.publish(
        envelope("data.updated", {"entityType": "product", "entityId": 42}, event_id),
        "data.updated",
    )
    # a glob character in an id is literal
    running.publish(
        envelope("data.updated", {"entityType": "product", "entityId": "4*2"}), "data.updated"
    )
    running.wait(lambda: running.worker.handled == 2)
    assert store.get(key("/api/products/4*2")) is None
    assert store.get(key("/api/products/420")) is not None
    assert store.get(doomed[0]) is not None  # the duplicate did not run
    assert len(running.sink.events) == 2


def test_user_updated_invalidates_that_users_private_entries(running: Running) -> None:
    store = running.store
    alice = [key("/api/me", "alice"), key("/api/orders", "alice", [("page", "2")])]
    others = [key("/api/me", "bob"), key("/api/me", pairs=[("user", "alice")]), key("/api/me")]
    for k in alice + others:
        store.set(k, b"x", 60)
    running.publish(envelope("user.updated", {"userId": "alice"}), "user.updated")
    running.wait(lambda: running.worker.handled == 1)
    assert [k for k in alice + others if store.get(k) is not None] == others
    assert running.sink.events[0][1]["reason"] == "user_updated"


def test_bad_messages_go_to_the_dead_letter_queue(running: Running) -> None:
    running.publish("{not json", "data.updated")
    running.publish(envelope("data.updated", {"entityType": "product"}), "data.updated")
    running.wait(lambda: running.worker.dead_lettered == 2)
    dead = Queue(f"{running.queue}.dead")(running.publisher.channel())
    got: list[Any] = []

    def drained() -> bool:
        message = dead.get(no_ack=True)
        if message is not None:
            got.append(message)
        return len(got) == 2

    running.wait(drained)
    errors = {m.headers["x-error"].split(":")[0]: m for m in got}
    assert errors["not JSON"].body in (b"{not json", "{not json")
    assert "{entityId}" in errors["placeholder {entityId}"].headers["x-error"]
    # the worker is still consuming
    running.publish(envelope("user.updated", {"userId": "zoe"}), "user.updated")
    running.wait(lambda: running.worker.handled == 1)


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    def delete_matching(self, pattern: str) -> int:
        if self.failures:
            self.failures -= 1
            from cache_middleware.errors import StoreUnavailable

            raise StoreUnavailable("down")
        return super().delete_matching(pattern)


def test_store_failure_requeues_until_it_works(rabbitmq: str) -> None:
    r = Running(rabbitmq)
    r.store = r.worker.store = FlakyStore()
    r.start()
    try:
        r.store.set(key("/api/me", "carol"), b"x", 60)
        r.publish(envelope("user.updated", {"userId": "carol"}), "user.updated")
        r.wait(lambda: r.worker.handled == 1)
        assert r.store.get(key("/api/me", "carol")) is None
        assert r.store.failures == 0
    finally:
        r.stop()
