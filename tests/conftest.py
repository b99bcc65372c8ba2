"""Shared fixtures: the real Redis (or a throwaway one), fakeredis, memory stores.

Real Redis: `CACHE_TEST_REDIS_URL`, else redis://127.0.0.1:6379/15. When it does not answer, a
throwaway `redis-server` is started on a free port if the binary is installed (as pytest-redis
does); otherwise the tests that need it are skipped with the reason, except when `CI` is set,
where they fail: CI must never pass by not testing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore

DEFAULT_URL = "redis://127.0.0.1:6379/15"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a real Redis server for this session."""
    url = os.environ.get("CACHE_TEST_REDIS_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = f"no Redis at {url} and no redis-server binary to start one"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {message}")
        pytest.skip(message)
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="cache-mw-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"started {binary} on port {port} but it never answered")
        time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's entries."""
    return f"cmtest:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(redis_server: str, prefix: str) -> Iterator[str]:
    """The real Redis, cleaned of this test's keys afterwards."""
    yield redis_server
    client = redis.Redis.from_url(redis_server)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.unlink(key)
    client.close()


@pytest.fixture
def memory_url() -> str:
    """A memory store of this test's own (memory://NAME stores are shared per process and name)."""
    return f"memory://{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
def store_config(request: pytest.FixtureRequest, memory_url: str) -> dict[str, object]:
    """The config keys of a store: this test's memory store, then the real Redis (with a
    generous timeout: on a loaded machine a 100 ms write may fail open, and tests count HITs)."""
    if request.param == "memory":
        return {"redis_url": memory_url, "key_prefix": "t"}
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "key_prefix": request.getfixturevalue("prefix"),
        "redis_timeout": 2,
    }


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The real RabbitMQ's URL; a skip with the reason when it does not answer, a failure
    when `CI` is set."""
    from tests.test_events_publisher import AMQP_URL, amqp_available

    problem = amqp_available(AMQP_URL)
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {problem}")
        pytest.skip(problem)
    return AMQP_URL


class AdapterClock:
    """The adapters' `time` module with `time()` moved forward by `offset` seconds: what both
    adapters read their wall clock from (entries, freshness, Age)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def adapter_clock(monkeypatch: pytest.MonkeyPatch) -> AdapterClock:
    import cache_middleware.asgi
    import cache_middleware.wsgi

    fake = AdapterClock()
    monkeypatch.setattr(cache_middleware.asgi, "time", fake)
    monkeypatch.setattr(cache_middleware.wsgi, "time", fake)
    return fake


class FakeAsyncRedisStore(AsyncRedisStore):
    """The async Redis store over fakeredis: the same code paths without a server."""

    def __init__(self, server: fakeredis.FakeServer) -> None:
        super().__init__("redis://fake", fast_get=False)
        self._server = server

    def _new_client(self):  # type: ignore[no-untyped-def]
        return fakeredis.FakeAsyncRedis(server=self._server)


def fake_sync_store(server: fakeredis.FakeServer) -> RedisStore:
    return RedisStore("redis://fake", client=fakeredis.FakeRedis(server=server))


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def backend(request: pytest.FixtureRequest, memory_url: str, fake_server: fakeredis.FakeServer):  # type: ignore[no-untyped-def]
    """(config redis_url, async store or None, sync store or None) for each backend.

    Stores are None when the middleware should build its own from the URL.
    """
    if request.param == "memory":
        return {"url": memory_url, "async_store": None, "sync_store": None}
    if request.param == "fakeredis":
        return {
            "url": memory_url,
            "async_store": FakeAsyncRedisStore(fake_server),
            "sync_store": fake_sync_store(fake_server),
        }
    url = request.getfixturevalue("redis_url")
    return {"url": url, "async_store": None, "sync_store": None}


@pytest.fixture
def redis_process() -> Iterator[object]:
    """A throwaway redis-server (see tests/redis_process.py), stopped after the test."""
    from .redis_process import RedisProcess

    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[object]:
    """A Sentinel group of this session's own (tests/cluster_process.py); stopped at the end."""
    from .cluster_process import SentinelGroup

    group = SentinelGroup()
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def cluster_group() -> Iterator[object]:
    """A 3-primary, 3-replica Redis Cluster of this session's own; stopped at the end."""
    from .cluster_process import ClusterGroup

    group = ClusterGroup()
    try:
        group.start()
        yield group
    finally:
        group.stop()
