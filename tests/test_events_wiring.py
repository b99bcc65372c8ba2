"""An `events:` section in cache.yaml and no code: every source of invalidation publishes
`cache.invalidated` (the seed's envelope) through the one sink of the process.

The sources: the admin app, the shared cache manager's `invalidate` / `delete`, the middleware's
write invalidation (`publish_write_invalidation`, and end to end through both adapters), the
invalidation worker (`run_consumer`) and the expiry reporter. Each runs over kombu's `memory://`
transport and over the real RabbitMQ (a failure, not a skip, when `CI` is set and it does not
answer), and each event is checked against its JSON Schema. Then: one sink per process and
configuration, a flush at lifespan shutdown, a close at exit (in a process of its own), a
forked child publishing its own events, and the fallback when kombu is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from cache_middleware import (  # noqa: E402
    CacheMiddleware,
    ConfigError,
    WSGICacheMiddleware,
    create_admin_app,
    get_cache_manager,
    get_sync_cache_manager,
    load_config,
)
from cache_middleware.events import LoggingSink, MemorySink  # noqa: E402
from cache_middleware.events import process_sink as ps  # noqa: E402
from cache_middleware.events.consumer import run_consumer  # noqa: E402
from cache_middleware.events.envelope import load_events_config  # noqa: E402
from cache_middleware.events.expiry import ExpiryReporter, lease_key  # noqa: E402
from cache_middleware.events.in_process import start_in_process_consumer  # noqa: E402
from cache_middleware.events.publisher import KombuEventSink  # noqa: E402

from .test_events_envelope import ORG, validate  # noqa: E402
from .test_events_publisher import Listener, events_config, listen  # noqa: E402, F401

WAIT = 10.0
TOKEN = "wiring-s3cret"
ROUTE = "/api/items"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    """kombu's in-process `memory://` transport, and the real RabbitMQ."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("rabbitmq")
    return url


@pytest.fixture(autouse=True)
def close_process_sinks() -> Iterator[None]:
    """Each test's configuration has a sink of its own (a fresh tenant): closed afterwards."""
    yield
    ps.flush_process_sinks(2)


def write_config(
    directory: Path,
    broker: str,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    **events_extra: Any,
) -> tuple[Path, dict[str, Any]]:
    """A cache.yaml with an `events:` section (a fresh tenant); the path and that section."""
    events = events_config(broker_url=broker, **events_extra)
    data: dict[str, Any] = {
        "redis_url": redis_url or f"memory://{uuid.uuid4().hex[:12]}",
        "key_prefix": prefix or f"cmtest:{uuid.uuid4().hex[:12]}",
        "routes": {ROUTE: {"ttl": 60}},
        "admin": {"token": TOKEN},
        "events": events,
    }
    path = directory / f"cache-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, events


def received(listener: Listener, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    """The listener's first `count` events, each valid against its schema."""
    envelopes = listener.wait_for(count, timeout=timeout)[:count]
    for message, envelope in zip(listener.messages, envelopes, strict=False):
        validate(envelope)
        assert message.delivery_info["routing_key"] == envelope["type"]
    return envelopes


def drop_queues(broker: str, *names: str) -> None:
    if not broker.startswith("amqp"):
        return
    with Connection(broker) as conn:
        for name in names:
            Queue(name)(conn.channel()).delete()


# -- one sink per process -----------------------------------------------------------------------


def test_one_sink_per_process_and_configuration(tmp_path: Path) -> None:
    path, events = write_config(tmp_path, "memory://")
    sink = ps.sink_for(path)
    assert isinstance(sink, KombuEventSink)
    # the same configuration in every form it comes in
    assert ps.sink_for(str(path)) is sink
    assert ps.sink_for({"events": events}) is sink
    assert ps.sink_for(load_events_config(events)) is sink
    # every source of the process uses it
    assert create_admin_app(path).state.event_sink is sink
    assert get_cache_manager(path).event_sink is sink
    assert get_sync_cache_manager(path).event_sink is sink
    settings = load_config(path)
    assert ExpiryReporter(settings, load_events_config(events)).sink is sink
    consumer = start_in_process_consumer(settings, load_events_config(events))
    try:
        assert consumer.sink is sink
    finally:
        consumer.stop(2)
    assert sink.pending == 0 and ps.sink_for(path) is sink  # stop() flushed it, not closed it
    # another events section: another sink; none: the logging sink, and no manager events
    other, _ = write_config(tmp_path, "memory://")
    assert ps.sink_for(other) is not sink
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"routes: {{{ROUTE}: {{ttl: 60}}}}\nadmin: {{token: {TOKEN}}}\n")
    assert isinstance(ps.sink_for(plain), LoggingSink)
    assert isinstance(create_admin_app(plain).state.event_sink, LoggingSink)
    assert get_sync_cache_manager(plain).event_sink is None


def test_event_sink_in_code_still_wins(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, "memory://")
    mine = MemorySink()
    app = create_admin_app(path, event_sink=mine)
    assert app.state.event_sink is mine
    with TestClient(app) as client:
        reply = client.post(
            "/invalidate",
            json={"paths": [f"{ROUTE}/1"]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert reply.status_code == 200
    assert [name for name, _ in mine.events] == ["cache.invalidated"]
    assert ps.flush_events(path) == 0  # no process sink was made for it


def test_callers_racing_on_one_configuration_get_one_sink(tmp_path: Path) -> None:
    _, events = write_config(tmp_path, "memory://")
    settings = load_events_config(events)
    start = threading.Barrier(8)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(ps.sink_for(settings))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(got) == 8 and len({id(sink) for sink in got}) == 1


def test_kombu_missing_logs_events_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = importlib.import_module

    def no_kombu(name: str, package: str | None = None) -> Any:
        if name == "kombu":
            raise ImportError("No module named 'kombu'")
        return real(name, package)

    monkeypatch.setattr(ps.importlib, "import_module", no_kombu)
    monkeypatch.setattr(ps, "_kombu_missing_warned", False)
    first, _ = write_config(tmp_path, "memory://")
    second, _ = write_config(tmp_path, "memory://")
    with caplog.at_level(logging.INFO, logger="cache_middleware.events"):
        sink = ps.sink_for(first)
        assert isinstance(sink, LoggingSink)
        assert isinstance(ps.sink_for(second), LoggingSink)
        assert get_sync_cache_manager(first).event_sink is sink
        get_sync_cache_manager(first).invalidate("nothing:*")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "kombu is not installed" in warnings[0].getMessage()
    assert first.name in warnings[0].getMessage()
    assert any(r.getMessage().startswith("cache.invalidated ") for r in caplog.records)


# -- every source, with YAML alone --------------------------------------------------------------


async def test_admin_invalidate_publishes_with_yaml_alone(
    tmp_path: Path,
    broker: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    listener = listen(broker, events["tenant_id"])
    app = create_admin_app(path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        reply = await client.post(
            "/invalidate",
            json={"paths": [f"{ROUTE}/1"]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert reply.status_code == 200, reply.text
    (event,) = received(listener, 1)
    assert event["type"] == "cache.invalidated"
    assert event["tenantId"] == events["tenant_id"]
    assert event["data"]["reason"] == "manual"
    assert event["data"]["cacheKey"] == f"path:{ROUTE}/1"
    await app.state.store.aclose()


async def test_manager_invalidate_and_delete_publish_with_yaml_alone(
    tmp_path: Path,
    broker: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    listener = listen(broker, events["tenant_id"])
    cache = get_cache_manager(path)
    await cache.set("user:1:profile", {"name": "Ada"})
    await cache.set("user:2:profile", {"name": "Bob"})
    assert await cache.invalidate("user:1:*") == 1
    sync = get_sync_cache_manager(path)  # the blocking twin, same process sink
    assert sync.delete("user:2:profile", "user:3:profile") == 1
    pattern_event, *key_events = received(listener, 3)
    assert pattern_event["data"]["cacheKey"] == "user:1:*"
    assert pattern_event["data"]["selector"] == "pattern"
    assert pattern_event["data"]["count"] == 1
    assert [e["data"]["cacheKey"] for e in key_events] == ["user:2:profile", "user:3:profile"]
    assert {e["data"]["selector"] for e in key_events} == {"key"}
    assert {e["data"]["count"] for e in key_events} == {1}
    assert len({e["data"]["correlationId"] for e in key_events}) == 1  # one invalidation
    for event in (pattern_event, *key_events):
        assert event["data"]["reason"] == "manual"
        assert event["data"]["organizationId"] == ORG


def test_publish_write_invalidation(
    tmp_path: Path,
    broker: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    settings = ps.events_of(path)
    listener = listen(broker, events["tenant_id"])
    before = dict(ps._sinks)
    # no events configured: returns at once, makes no sink
    ps.publish_write_invalidation(None, f"{ROUTE}/1", 3)
    # nothing dropped: no event
    ps.publish_write_invalidation(settings, f"{ROUTE}/1", 0)
    assert ps._sinks == before
    ps.publish_write_invalidation(settings, f"{ROUTE}/1", 3, "arena")
    (event,) = received(listener, 1)
    assert event["data"]["reason"] == "write"
    assert event["data"]["selector"] == "path"
    assert event["data"]["cacheKey"] == f"path:{ROUTE}/1"
    assert event["data"]["count"] == 3
    assert event["data"]["venue"] == "arena"


def test_publish_write_invalidation_never_raises(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, "memory://")
    settings = ps.events_of(path)
    sink = ps.sink_for(settings)

    def explode(event_type: str, data: dict[str, Any]) -> None:
        raise RuntimeError("broken sink")

    sink.emit = explode  # type: ignore[method-assign]
    ps.publish_write_invalidation(settings, ROUTE, 1)  # logged, not raised


def test_worker_and_expiry_reporter_publish_with_yaml_alone(
    tmp_path: Path,
    broker: str,
    redis_url: str,
    prefix: str,
    listen: Callable[..., Listener],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`run_consumer` (what `cache-middleware events consume` runs) on a YAML file: a consumed
    data.updated and an expired entry both come out as `cache.invalidated`."""
    queue = f"test-wiring-{uuid.uuid4().hex[:10]}"
    path, events = write_config(
        tmp_path,
        broker,
        redis_url=redis_url,
        prefix=prefix,
        report_expired=True,
        consume={
            "queue": queue,
            "dead_letter_queue": f"{queue}.dead",
            "entities": {"item": {"paths": [f"{ROUTE}/{{entityId}}"]}},
        },
    )
    listener = listen(broker, events["tenant_id"])
    client = redis.Redis.from_url(redis_url)
    entry = f"{prefix}:GET:{ROUTE}/7"
    client.set(entry, b"x")
    stop = threading.Event()
    worker = threading.Thread(target=run_consumer, args=(path,), kwargs={"stop": stop})
    with caplog.at_level(logging.INFO, logger="cache_middleware.events"):
        worker.start()
        try:
            wait_until(lambda: "connected to" in caplog.text, what="the worker's connection")
            with Connection(broker) as conn:
                Producer(conn.channel()).publish(
                    {
                        "id": str(uuid.uuid4()),
                        "type": "data.updated",
                        "data": {"entityType": "item", "entityId": "7"},
                    },
                    exchange=Exchange("coder.events", type="topic", durable=True),
                    routing_key="data.updated",
                    serializer="json",
                )
            # the path template as key globs: the path's entry, and its variants
            consumed = received(listener, 2)
            assert [e["data"]["cacheKey"] for e in consumed] == [entry, f"{entry}:*"]
            for event in consumed:
                assert event["data"]["reason"] == "data_updated"
                assert event["data"]["count"] == 1
            assert client.get(entry) is None

            wait_until(
                lambda: "expiry reporting: listening" in caplog.text, what="the subscription"
            )
            client.set(f"{prefix}:GET:{ROUTE}/8", b"x", px=50)
            expired = received(listener, 3)[2]
            assert expired["data"]["reason"] == "expired"
            assert expired["data"]["cacheKey"] == f"{prefix}:GET:{ROUTE}/8"
        finally:
            stop.set()
            worker.join(WAIT)
            drop_queues(broker, queue, f"{queue}.dead")
            client.close()
    assert not worker.is_alive()
    assert redis.Redis.from_url(redis_url).get(lease_key(prefix)) is None  # handed back


# -- the middleware's write invalidation, end to end --------------------------------------------


def _asgi_app() -> Starlette:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.method} {request.path_params['n']}")

    return Starlette(routes=[Route(ROUTE + "/{n}", item, methods=["GET", "POST", "DELETE"])])


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
async def test_a_successful_write_publishes_with_yaml_alone(
    tmp_path: Path,
    broker: str,
    adapter: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    listener = listen(broker, events["tenant_id"])
    transport: httpx.AsyncBaseTransport
    if adapter == "asgi":
        transport = httpx.ASGITransport(app=CacheMiddleware(_asgi_app(), config=path))
    else:
        wsgi = WSGICacheMiddleware(_wsgi_app, config=path)
        transport = _SyncToAsync(httpx.WSGITransport(app=wsgi))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get(f"{ROUTE}/5")).headers["x-cache"] == "MISS"
        assert (await client.get(f"{ROUTE}/5")).headers["x-cache"] == "HIT"
        assert (await client.post(f"{ROUTE}/5")).status_code == 200
        assert (await client.get(f"{ROUTE}/5")).headers["x-cache"] == "MISS"
    (event,) = received(listener, 1, timeout=WAIT)
    assert event["data"]["reason"] == "write"
    assert event["data"]["cacheKey"] == f"path:{ROUTE}/5"
    assert event["data"]["count"] >= 1


def test_the_middleware_lifespan_shutdown_flushes_the_process_sink(
    tmp_path: Path,
    broker: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    listener = listen(broker, events["tenant_id"])
    sink = ps.sink_for(path)
    assert isinstance(sink, KombuEventSink)
    flushes: list[int] = []
    real_flush = sink.flush

    def spy(timeout: float = 5.0) -> int:
        flushes.append(real_flush(timeout))
        return flushes[-1]

    sink.flush = spy  # type: ignore[method-assign]
    with TestClient(CacheMiddleware(_asgi_app(), config=path)) as client:
        assert client.get(f"{ROUTE}/6").headers["x-cache"] == "MISS"
        assert client.delete(f"{ROUTE}/6").status_code == 200
    assert flushes == [0]  # at shutdown, everything out
    (event,) = received(listener, 1, timeout=WAIT)
    assert event["data"]["reason"] == "write"


class _SyncToAsync(httpx.AsyncBaseTransport):
    """httpx's WSGI transport behind the async client (one code path for both adapters)."""

    def __init__(self, inner: httpx.WSGITransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        sync_request = httpx.Request(
            request.method, request.url, headers=request.headers, content=body
        )
        response = await asyncio.to_thread(self.inner.handle_request, sync_request)
        content = await asyncio.to_thread(response.read)
        return httpx.Response(response.status_code, headers=response.headers, content=content)


# -- shutdown -----------------------------------------------------------------------------------


def test_admin_lifespan_shutdown_flushes_and_keeps_the_sink_open(
    tmp_path: Path,
    broker: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    path, events = write_config(tmp_path, broker)
    listener = listen(broker, events["tenant_id"])
    app = create_admin_app(path)
    sink = app.state.event_sink
    assert isinstance(sink, KombuEventSink)
    flushes: list[int] = []
    real_flush = sink.flush

    def spy(timeout: float = 5.0) -> int:
        left = real_flush(timeout)
        flushes.append(left)
        return left

    sink.flush = spy  # type: ignore[method-assign]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for n in (1, 2):  # a second start (the process serves again): the sink was not closed
        with TestClient(app) as client:
            reply = client.post("/invalidate", json={"paths": [f"{ROUTE}/{n}"]}, headers=auth)
            assert reply.status_code == 200
        assert flushes == [0] * n  # flushed at shutdown, nothing left
        assert sink.pending == 0
    assert [e["data"]["cacheKey"] for e in received(listener, 2)] == [
        f"path:{ROUTE}/1",
        f"path:{ROUTE}/2",
    ]


def test_flush_process_sinks_closes_all_once(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, "amqp://guest:guest@127.0.0.1:1//")  # never reachable
    sink = ps.sink_for(path)
    assert isinstance(sink, KombuEventSink)
    sink.emit("cache.cleared", {"prefix": "p", "count": 1})
    start = time.monotonic()
    assert ps.flush_process_sinks(0.3) == 1  # bounded: the broker is away
    assert time.monotonic() - start < 2
    assert ps.flush_process_sinks(0.3) == 0  # idempotent: nothing left to close
    assert ps.sink_for(path) is not sink  # a new one for whoever asks next


def test_the_sink_is_flushed_at_exit(
    tmp_path: Path,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    """A process that invalidates and exits at once, with no shutdown code: the atexit hook
    publishes the event its sink still held."""
    path, events = write_config(tmp_path, rabbitmq)
    listener = listen(rabbitmq, events["tenant_id"])
    script = (
        "import sys\n"
        "from cache_middleware import get_sync_cache_manager\n"
        "cache = get_sync_cache_manager(sys.argv[1])\n"
        "cache.invalidate('exit:*')\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    (event,) = received(listener, 1)
    assert event["data"]["cacheKey"] == "exit:*"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_publishes_through_a_sink_of_its_own(
    tmp_path: Path,
    rabbitmq: str,
    listen: Callable[..., Listener],  # noqa: F811
) -> None:
    """gunicorn --preload: the sink was started in the parent; the child's copy has no thread.
    It gets one, publishes its own events, and the parent's sink goes on working."""
    path, events = write_config(tmp_path, rabbitmq)
    listener = listen(rabbitmq, events["tenant_id"])
    sink = ps.sink_for(path)
    sink.emit("cache.cleared", {"prefix": "parent-before", "count": 0})
    assert ps.flush_events(path, WAIT) == 0
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ps.sink_for(path).emit("cache.cleared", {"prefix": "child", "count": 0})
            code = 0 if ps.flush_process_sinks(WAIT) == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.emit("cache.cleared", {"prefix": "parent-after", "count": 0})
    prefixes = sorted(e["data"]["prefix"] for e in received(listener, 3))
    assert prefixes == ["child", "parent-after", "parent-before"]


def test_a_bad_events_section_fails_at_startup(tmp_path: Path) -> None:
    """Invariant 5: the admin app and the manager read the `events:` section now; a bad one is
    a ConfigError naming the file and the field, not a sink that silently never publishes."""
    path = tmp_path / "cache.yaml"
    path.write_text(
        f"admin: {{token: {TOKEN}}}\nevents: {{tenant_id: acme, organization_id: {ORG}}}\n"
    )
    for build in (create_admin_app, get_cache_manager, get_sync_cache_manager, ps.sink_for):
        with pytest.raises(ConfigError, match=r"cache\.yaml: events\.tenant_id: must be a UUID"):
            build(path)
