"""Expiry reporting (`events.report_expired`): entries Redis expires become `cache.invalidated`
events with reason `expired`.

The batching and filtering run without a server; the subscription, the CONFIG refusal and the
lease run over fakeredis (which refuses CONFIG and does not publish expirations itself: the tests
publish the notifications); real expirations run over the real Redis, through the middleware, the
consume worker (`cache-middleware events consume`) and the in-process consumer, to RabbitMQ.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Queue  # noqa: E402

from cache_middleware._core.keys import build_key, lock_key, tag_index_key, variant_key  # noqa: E402
from cache_middleware.config import load_config  # noqa: E402
from cache_middleware.events import MemorySink  # noqa: E402
from cache_middleware.events.envelope import build_envelopes, load_events_config  # noqa: E402
from cache_middleware.events.expiry import (  # noqa: E402
    MAX_VENUES,
    ExpiryReporter,
    _flags_with_expired,
    lease_key,
    venue_of,
)
from cache_middleware.events.in_process import start_in_process_consumer  # noqa: E402
from cache_middleware.events.publisher import KombuEventSink  # noqa: E402

from .adapters import Harness  # noqa: E402
from .test_events_envelope import ORG, TENANT, validate  # noqa: E402
from .test_events_publisher import Listener, events_config, listen  # noqa: E402, F401

WAIT = 10.0
VENUE_TENANT = "0b6f3c1e-6a8e-4a6b-9d43-5a1a8a0c4a12"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def events_settings(**extra: Any) -> Any:
    return load_events_config(
        {
            "tenant_id": TENANT,
            "organization_id": ORG,
            "report_expired": True,
            "reconnect_max": 0.2,
            "venues": {"arena": {"tenant_id": VENUE_TENANT}},
            **extra,
        }
    )


# -- keys, flags, batches (no server) -------------------------------------------------------------


def test_venue_of_reads_the_venue_segment_only() -> None:
    p = "gw:response"
    assert venue_of(build_key(p, "GET", "/a", [], None, "arena"), p) == "arena"
    assert venue_of(build_key(p, "GET", "/a", [], "bob", "v 1:x"), p) == "v 1:x"
    # a query parameter named venue, or a value "venue", is not the venue segment
    assert venue_of(build_key(p, "GET", "/a", [("venue", "x")], None, None), p) is None
    assert venue_of(build_key(p, "GET", "/venue", [("q", "venue")], None, None), p) is None
    keyed = build_key(p, "GET", "/a", [("q", "venue")], None, "arena")
    assert venue_of(keyed, p) == "arena"
    assert venue_of(variant_key(keyed, ("accept",), ["en"]), p) == "arena"
    assert (
        venue_of(variant_key(build_key(p, "GET", "/a", [], None, None), ("venue",), ["x"]), p)
        is None
    )
    assert venue_of("other:GET:/a:venue:arena", p) is None


def test_notification_flags_are_added_never_replaced() -> None:
    assert _flags_with_expired("") == "Ex"
    assert _flags_with_expired("Kg") == "KgEx"
    assert _flags_with_expired("Ex") is None
    assert _flags_with_expired("KEA") is None  # A includes x
    assert _flags_with_expired("xK") == "xKE"


def test_batches_keep_entries_only_are_bounded_and_flood_controlled() -> None:
    p = "gw:response"
    events = events_settings(max_events_per_invalidation=3)
    sink = MemorySink()
    reporter = ExpiryReporter(load_config({"key_prefix": p}), events, sink)
    entries = [build_key(p, "GET", f"/api/items/{i}", [], None, None) for i in range(10)]
    assert all(reporter.add(k) for k in entries)
    for other in (
        lock_key(entries[0], p),
        tag_index_key(p, "news"),
        f"{p}:IDX:%2Fapi%2Fitems",
        f"{p}:STATS:total",
        build_key("gw:other", "GET", "/api/items/1", [], None, None),
        "cache-middleware:epoch",
    ):
        assert not reporter.add(other), other
    arena = build_key(p, "GET", "/api/items/1", [], None, "arena")
    assert reporter.add(arena)
    assert reporter.flush() == 11
    assert reporter.flush() == 0  # nothing new
    by_venue = {data["venue"]: data for _, data in sink.events}
    whole = by_venue[None]
    assert whole["reason"] == "expired" and whole["count"] == 10
    assert whole["keys"] == entries[:3]  # only as many as can become events are kept
    assert whole["unlisted"] == {"keys": 7}
    envelopes = build_envelopes("cache.invalidated", whole, events)
    for envelope in envelopes:
        validate(envelope)
        assert envelope["data"]["reason"] == "expired"
    assert [e["data"]["cacheKey"] for e in envelopes[:3]] == entries[:3]
    assert all(e["data"]["selector"] == "key" for e in envelopes[:3])
    summary = envelopes[3]["data"]
    assert summary["cacheKey"] == "summary:7 more selectors"
    assert summary["omitted"] == {"patterns": 0, "paths": 0, "tags": 0, "keys": 7}
    assert summary["count"] == 10 and len(envelopes) == 4
    (venue_envelope,) = build_envelopes("cache.invalidated", by_venue["arena"], events)
    validate(venue_envelope)
    assert venue_envelope["tenantId"] == VENUE_TENANT
    assert venue_envelope["data"]["venue"] == "arena"

    # many venues: at most MAX_VENUES batches, the rest merged into the venue-less one
    for i in range(MAX_VENUES + 10):
        reporter.add(build_key(p, "GET", "/x", [], None, f"v{i}"))
    sink.events.clear()
    assert reporter.flush() == MAX_VENUES + 10
    assert len(sink.events) == MAX_VENUES + 1
    assert sum(d["count"] for _, d in sink.events if d["venue"] is None) == 10


def test_unsupported_stores_log_and_do_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cache_middleware.events"):
        for url in ("memory://x", None, "redis+sentinel://h:26379/svc"):
            reporter = ExpiryReporter(
                load_config({"redis_url": url}), events_settings(), MemorySink()
            )
            reporter.start()
            assert not reporter.running
            reporter.stop(1)
    assert "memory store" in caplog.text and "redis+sentinel://" in caplog.text


# -- fakeredis: subscription, CONFIG refused, the lease ------------------------------------------


def test_fakeredis_refused_config_warns_and_one_reporter_leads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer()
    p = f"cmtest:{uuid.uuid4().hex[:8]}"
    settings = load_config({"key_prefix": p})
    events = events_settings()

    def client() -> redis.Redis:
        return fakeredis.FakeRedis(server=server)

    sinks = [MemorySink(), MemorySink()]
    with caplog.at_level(logging.INFO, logger="cache_middleware.events"):
        first = ExpiryReporter(
            settings, events, sinks[0], interval=0.05, lease_ttl=0.6, client_factory=client
        ).start()
        assert first.subscribed.wait(WAIT)
        second = ExpiryReporter(
            settings, events, sinks[1], interval=0.05, lease_ttl=0.6, client_factory=client
        ).start()
        try:
            assert "Redis refused CONFIG" in caplog.text and "'Ex'" in caplog.text
            observer = client()
            assert observer.get(lease_key(p)) is not None
            entry = build_key(p, "GET", "/a", [], None, None)
            observer.publish("__keyevent@0__:expired", entry)
            observer.publish("__keyevent@0__:expired", lock_key(entry, p))
            wait_until(lambda: first.reported == 1)
            assert sinks[0].events[0][1]["keys"] == [entry]
            time.sleep(0.3)  # the second reporter tried the lease at least once
            assert not second.leader and not second.subscribed.is_set()
            first.stop(2)  # hands the lease back: the other one takes over
            assert second.subscribed.wait(WAIT)
            observer.publish("__keyevent@0__:expired", entry)
            wait_until(lambda: second.reported == 1)
            assert first.reported == 1 and sinks[1].events[0][1]["keys"] == [entry]
        finally:
            first.stop(2)
            second.stop(2)
    assert client().get(lease_key(p)) is None
    assert caplog.text.count("Redis refused CONFIG") == 2  # once per reporter


def test_fakeredis_outage_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    p = f"cmtest:{uuid.uuid4().hex[:8]}"
    reporter = ExpiryReporter(
        load_config({"key_prefix": p}),
        events_settings(),
        MemorySink(),
        interval=0.05,
        client_factory=lambda: fakeredis.FakeRedis(server=server),
    )
    with caplog.at_level(logging.WARNING, logger="cache_middleware.events"):
        reporter.start()
        try:
            assert reporter.subscribed.wait(WAIT)
            server.connected = False
            wait_until(lambda: not reporter.subscribed.is_set(), what="the outage to be seen")
            server.connected = True
            assert reporter.subscribed.wait(WAIT)
            fakeredis.FakeRedis(server=server).publish("__keyevent@0__:expired", f"{p}:GET:/after")
            wait_until(lambda: reporter.reported == 1)
        finally:
            reporter.stop(2)
    assert "Redis unreachable" in caplog.text and "reachable again" in caplog.text


# -- the real Redis, to RabbitMQ -----------------------------------------------------------------


@pytest.fixture
def notifications(redis_url: str) -> str:
    """The shared Redis: its `notify-keyspace-events` is left with `Ex` added (harmless)."""
    return redis_url


async def test_an_expired_entry_is_published_with_reason_expired(
    notifications: str,
    prefix: str,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    config = events_config(broker_url=rabbitmq, report_expired=True)
    listener = listen(rabbitmq, config["tenant_id"])
    events = load_events_config(config)
    app_config = {"key_prefix": prefix, "routes": {"/api/short/{n}": {"ttl": 1}}}
    harness = Harness(
        "asgi", app_config, {"url": notifications, "async_store": None, "sync_store": None}
    )
    settings = harness.middleware.settings
    sink = KombuEventSink(events)
    reporter = ExpiryReporter(settings, events, sink, interval=0.2).start()
    try:
        assert reporter.subscribed.wait(WAIT)
        flags = redis.Redis.from_url(notifications).config_get("notify-keyspace-events")
        flags = flags["notify-keyspace-events"]
        assert "E" in flags and ("x" in flags or "A" in flags), flags
        # stored with a 1 s TTL (not read back: under load it may be gone already); another
        # process's invalidation on the shared database can void a fill: then ask again
        deadline = time.monotonic() + WAIT
        while True:
            reply = await harness.request("GET", "/api/short/1")
            if reply.x_cache == "MISS" and "stored" in reply.headers.get("cache-status", ""):
                break
            assert time.monotonic() < deadline, reply.headers
        (envelope,) = listener.wait_for(1, timeout=WAIT)
        validate(envelope)
        assert envelope["type"] == "cache.invalidated"
        assert envelope["data"]["reason"] == "expired"
        assert envelope["data"]["cacheKey"].startswith(f"{prefix}:GET:/api/short/1:")
        assert envelope["data"]["selector"] == "key" and envelope["data"]["count"] == 1
        assert (await harness.request("GET", "/api/short/1")).x_cache == "MISS"
    finally:
        await harness.aclose()
        reporter.stop(2)
        assert sink.close(5) == 0


def test_the_consume_worker_reports_expiries(
    notifications: str,
    prefix: str,
    tmp_path: Path,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    """`cache-middleware events consume --config` with `report_expired: true`, in a process."""
    tenant = str(uuid.uuid4())
    queue = f"test-expiry-worker-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "cache.yaml"
    path.write_text(
        f"redis_url: {notifications}\nkey_prefix: '{prefix}'\n"
        f"events:\n  broker_url: '{rabbitmq}'\n  tenant_id: {tenant}\n  organization_id: {ORG}\n"
        "  report_expired: true\n"
        f"  consume: {{queue: {queue}, dead_letter_queue: {queue}.dead}}\n"
    )
    listener = listen(rabbitmq, tenant)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cache_middleware.cli", "events", "consume", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = redis.Redis.from_url(notifications)
    entry = f"{prefix}:GET:/api/worker"
    try:
        wait_until(lambda: client.get(lease_key(prefix)) is not None, what="the reporter's lease")
        # the lease comes just before the subscription: expire entries until one is reported
        deadline = time.monotonic() + WAIT
        while not listener.messages:
            assert time.monotonic() < deadline, "no expiry reported"
            client.set(entry, b"x", px=100)
            try:
                listener.wait_for(1, timeout=0.5)
            except AssertionError:
                continue
        envelope = listener.wait_for(1)[0]
        validate(envelope)
        assert envelope["data"]["reason"] == "expired" and envelope["data"]["cacheKey"] == entry
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(WAIT)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        _, err = worker.communicate()
        with Connection(rabbitmq) as conn:
            for name in (queue, f"{queue}.dead"):
                Queue(name)(conn.channel()).delete()
        client.close()
    assert code == 0, err.decode()
    assert redis.Redis.from_url(notifications).get(lease_key(prefix)) is None  # handed back


def test_the_in_process_consumer_reports_expiries(
    notifications: str,
    prefix: str,
    rabbitmq: str,
) -> None:
    queue = f"test-expiry-in-process-{uuid.uuid4().hex[:10]}"
    config = {
        "redis_url": notifications,
        "key_prefix": prefix,
        "events": {
            "broker_url": rabbitmq,
            "tenant_id": TENANT,
            "organization_id": ORG,
            "report_expired": True,
            "consume": {"queue": queue, "dead_letter_queue": f"{queue}.dead", "in_process": True},
        },
    }
    sink = MemorySink()
    consumer = start_in_process_consumer(
        load_config(config), load_events_config(config), sink, expiry_interval=0.2
    )
    client = redis.Redis.from_url(notifications)
    try:
        assert consumer.reporter is not None
        assert consumer.reporter.subscribed.wait(WAIT)
        entry = f"{prefix}:GET:/api/in-process"
        client.set(entry, b"x", px=100)
        wait_until(lambda: any(d.get("reason") == "expired" for _, d in sink.events))
        ((_, data),) = sink.events
        assert data["keys"] == [entry] and data["count"] == 1
    finally:
        consumer.stop(5)
        with Connection(rabbitmq) as conn:
            for name in (queue, f"{queue}.dead"):
                Queue(name)(conn.channel()).delete()
        client.close()
    assert not consumer.reporter.running
