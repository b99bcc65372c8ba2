"""End to end over the real RabbitMQ: admin HTTP calls -> KombuEventSink -> `coder.events` -> a
queue of the test's own, every envelope checked against its JSON Schema; and the way back:
`data.updated` on the exchange -> the in-process consumer -> the app's entries -> the
`cache.invalidated` it publishes.

Each test has a tenant of its own (its listener keeps only that tenant's events) and a queue of
its own, so tests running at the same time against the same broker do not see each other's.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402
from starlette.applications import Starlette  # noqa: E402

from cache_middleware import CacheMiddleware, create_admin_app  # noqa: E402
from cache_middleware.events.envelope import load_events_config  # noqa: E402
from cache_middleware.events.in_process import maybe_start_in_process  # noqa: E402
from cache_middleware.events.publisher import KombuEventSink  # noqa: E402

from .test_admin import BASE_URL, TOKEN, AppState, build_inner, call_admin, make_config  # noqa: E402
from .test_events_envelope import validate  # noqa: E402
from .test_events_publisher import Listener, events_config, listen  # noqa: E402, F401

WAIT = 10.0


@dataclass
class Site:
    client: httpx.AsyncClient
    sink: KombuEventSink
    listener: Listener
    mw: CacheMiddleware
    admin_app: Starlette

    async def admin(self, path: str, body: Any) -> dict[str, Any]:
        reply = await call_admin(self.client, "POST", "/admin/cache" + path, body, TOKEN)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    async def get(self, path: str) -> str | None:
        reply = await self.client.get(path)
        assert reply.status_code == 200, reply.text
        return reply.headers.get("x-cache")

    def receive(self, count: int) -> list[dict[str, Any]]:
        """The next `count` events of this test, each checked against its schema."""
        seen = len(self.listener.messages)
        envelopes = self.listener.wait_for(seen + count, timeout=WAIT)[seen:]
        for message, envelope in zip(self.listener.messages[seen:], envelopes, strict=True):
            validate(envelope)
            assert message.delivery_info["routing_key"] == envelope["type"]
            assert message.content_type == "application/json"
            assert message.properties["delivery_mode"] == 2
        return envelopes


@pytest.fixture(params=["memory", "redis"])
async def site(
    request: pytest.FixtureRequest,
    prefix: str,
    memory_url: str,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> AsyncIterator[Site]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else memory_url
    config = make_config(url, prefix)
    events = events_config(broker_url=rabbitmq, max_events_per_invalidation=5)
    listener = listen(rabbitmq, events["tenant_id"])
    sink = KombuEventSink(events)
    admin = create_admin_app(config, token=TOKEN, event_sink=sink)
    mw = CacheMiddleware(build_inner(admin, AppState()), config=config)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url=BASE_URL)
    yield Site(client, sink, listener, mw, admin)
    await client.aclose()
    assert sink.close(5) == 0
    await mw.store.aclose()
    await admin.state.store.aclose()


async def test_admin_actions_reach_rabbitmq_as_valid_events(site: Site) -> None:
    for n in ("1", "2", "3"):
        assert await site.get(f"/api/events/{n}") == "MISS"

    # invalidate: one event per selector, sharing the invalidation's correlation id and count
    answer = await site.admin("/invalidate", {"paths": ["/api/events/1"], "tags": ["event:2"]})
    path_event, tag_event = site.receive(2)
    assert [e["type"] for e in (path_event, tag_event)] == ["cache.invalidated"] * 2
    assert path_event["data"]["cacheKey"] == "path:/api/events/1"
    assert path_event["data"]["selector"] == "path"
    assert tag_event["data"]["cacheKey"] == "tag:event:2"
    for event in (path_event, tag_event):
        assert event["data"]["reason"] == "manual"
        assert event["data"]["count"] == answer["invalidated"]
        assert event["data"]["venue"] is None
    assert path_event["data"]["correlationId"] == tag_event["data"]["correlationId"]
    assert await site.get("/api/events/1") == "MISS"

    # warm
    answer = await site.admin("/warm", {"paths": ["/api/events/4"]})
    (warmed,) = site.receive(1)
    assert warmed["type"] == "cache.warmed"
    assert warmed["data"]["paths"] == ["/api/events/4"]
    assert warmed["data"]["warmed"] == len(answer["warmed"])
    assert warmed["data"]["failed"] == len(answer["failed"])

    # optimize
    answer = await site.admin("/optimize", {})
    (optimized,) = site.receive(1)
    assert optimized["type"] == "cache.optimized"
    assert optimized["data"]["prefix"] == site.mw.settings.key_prefix
    for field, name in (
        ("orphanedIndexMembers", "orphaned_index_members"),
        ("unroutedEntries", "unrouted_entries"),
        ("oversizedEntries", "oversized_entries"),
        ("bytesReclaimed", "bytes_reclaimed"),
    ):
        assert optimized["data"][field] == answer[name]

    # clear
    answer = await site.admin("/clear", {"confirm": True})
    (cleared,) = site.receive(1)
    assert cleared["type"] == "cache.cleared"
    assert cleared["data"]["count"] == answer["cleared"]
    assert cleared["data"]["prefix"] == site.mw.settings.key_prefix

    # flood control: 8 keys with a limit of 5 -> 5 events and one summary
    keys = [f"{site.mw.settings.key_prefix}:GET:/api/events/k{i}" for i in range(8)]
    await site.admin("/invalidate", {"keys": keys})
    flood = site.receive(6)
    assert [e["data"]["cacheKey"] for e in flood[:5]] == keys[:5]
    summary = flood[5]["data"]
    assert summary["summary"] is True and summary["selector"] == "summary"
    assert summary["cacheKey"] == "summary:3 more selectors"
    assert summary["omitted"]["keys"] == 3
    assert len({e["data"]["correlationId"] for e in flood}) == 1
    # nothing else was published for this tenant
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        message = site.listener.queue.get(no_ack=True)
        if message is None:
            time.sleep(0.01)
            continue
        assert json.loads(message.body)["tenantId"] != site.listener.tenant, message.body


async def test_data_updated_round_trip_through_the_in_process_consumer(
    prefix: str,
    memory_url: str,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    """data.updated on coder.events -> the app's in-process consumer drops the entry -> its own
    KombuEventSink publishes cache.invalidated (reason data_updated, sourceEventId)."""
    tenant = str(uuid.uuid4())
    queue = f"test-e2e-{uuid.uuid4().hex[:10]}"
    entity = f"concert_{uuid.uuid4().hex[:8]}"
    config = make_config(
        memory_url,
        prefix,
        events={
            **events_config(broker_url=rabbitmq, tenant_id=tenant),
            "consume": {
                "queue": queue,
                "dead_letter_queue": f"{queue}.dead",
                "in_process": True,
                "entities": {entity: {"tags": ["event:{entityId}"]}},
            },
        },
    )
    assert load_events_config(config).consume.in_process
    listener = listen(rabbitmq, tenant)
    mw = CacheMiddleware(build_inner(create_admin_app(config, token=TOKEN), AppState()), config)
    consumer = maybe_start_in_process(config, mw.settings)
    assert consumer is not None
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url=BASE_URL)
    try:
        assert consumer.wait_consuming(WAIT)
        for n in ("7", "8"):
            assert (await client.get(f"/api/events/{n}")).headers["x-cache"] == "MISS"
        event_id = str(uuid.uuid4())
        with Connection(rabbitmq) as conn:
            Producer(conn.channel()).publish(
                json.dumps(
                    {
                        "id": event_id,
                        "type": "data.updated",
                        "version": "1.0",
                        "timestamp": "2026-01-23T10:00:00.000Z",
                        "tenantId": tenant,
                        "source": {"service": "events"},
                        "data": {"entityType": entity, "entityId": "7"},
                    }
                ),
                exchange=Exchange("coder.events", type="topic", durable=True),
                routing_key="data.updated",
                content_type="application/json",
            )
        (envelope,) = listener.wait_for(1, timeout=WAIT)
        validate(envelope)
        assert envelope["type"] == "cache.invalidated"
        assert envelope["data"]["reason"] == "data_updated"
        assert envelope["data"]["sourceEventId"] == event_id
        assert envelope["data"]["cacheKey"] == "tag:event:7"
        assert envelope["data"]["count"] == 1
        assert (await client.get("/api/events/7")).headers["x-cache"] == "MISS"
        assert (await client.get("/api/events/8")).headers["x-cache"] == "HIT"
    finally:
        await client.aclose()
        consumer.stop(5)
        await mw.store.aclose()
        with Connection(rabbitmq) as conn:
            for name in (queue, f"{queue}.dead"):
                Queue(name)(conn.channel()).delete()
