"""The near-cache (L1): its rules in isolation, its invalidation stream on the real Redis, both
adapters in front of it, and coherence across uvicorn workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware.config import load_config
from cache_middleware.errors import ConfigError
from cache_middleware.storage.near import NearCache
from cache_middleware.storage.tracking import CHANNEL, InvalidationListener, near_cache_for
from tests.cluster_process import ClusterGroup

WAIT = 3.0  # how long a test waits for something that should take milliseconds


def until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def live_cache(max_bytes: int = 10_000, max_age: float = 60, clock: Any = None) -> NearCache:
    near = NearCache(max_bytes, max_age, clock=clock or Clock())
    near.set_live(True)
    return near


def keep(near: NearCache, key: str, value: bytes) -> None:
    near.offer(key, value, near.begin(key))


# -- the rules ------------------------------------------------------------------------------------


def test_a_read_is_kept_and_served() -> None:
    near = live_cache()
    keep(near, "p:GET:/a", b"entry")
    assert near.get("p:GET:/a") == b"entry"
    assert near.figures()["hits"] == 1


def test_nothing_is_kept_until_the_stream_is_live() -> None:
    near = NearCache(10_000, 60)
    assert near.begin("k") is None
    near.offer("k", b"v", None)
    assert near.get("k") is None


def test_an_invalidation_during_the_read_withdraws_it() -> None:
    # The push for a write after our read may overtake the read's own reply.
    near = live_cache()
    token = near.begin("k")
    near.invalidate(["k"])
    near.offer("k", b"old", token)
    assert near.get("k") is None


def test_a_flush_or_an_outage_during_the_read_withdraws_it() -> None:
    near = live_cache()
    token = near.begin("k")
    near.flush()
    near.offer("k", b"old", token)
    assert near.get("k") is None
    token = near.begin("k")
    near.set_live(False)
    near.set_live(True)
    near.offer("k", b"old", token)
    assert near.get("k") is None


def test_a_second_reader_of_the_same_key_supersedes_the_first() -> None:
    near = live_cache()
    first = near.begin("k")
    second = near.begin("k")
    near.offer("k", b"a", first)
    assert near.get("k") is None
    near.offer("k", b"b", second)
    assert near.get("k") == b"b"


def test_copies_never_outlive_max_age() -> None:
    clock = Clock()
    near = live_cache(max_age=5, clock=clock)
    keep(near, "k", b"v")
    clock.now += 4.9
    assert near.get("k") == b"v"
    clock.now += 0.2
    assert near.get("k") is None
    assert near.figures()["entries"] == 0


def test_bounded_in_bytes_oldest_copy_first() -> None:
    near = live_cache(max_bytes=3 * (2 * 100 + 1 + 120))  # a copy counts twice: raw + decoded
    for name in "abc":
        keep(near, name, b"x" * 100)
    keep(near, "d", b"x" * 100)
    assert near.get("a") is None
    assert near.get("b") == near.get("c") == near.get("d") == b"x" * 100
    keep(near, "b", b"y" * 100)  # taken again: now the youngest
    keep(near, "e", b"x" * 100)
    assert near.get("c") is None and near.get("b") == b"y" * 100
    assert near.figures()["bytes"] <= near.max_bytes
    keep(near, "huge", b"x" * 10_000)  # larger than the whole bound: not kept at all
    assert near.get("huge") is None and near.get("e") is not None


def test_going_down_empties_it() -> None:
    near = live_cache()
    keep(near, "k", b"v")
    near.set_live(False)
    assert near.get("k") is None
    assert near.begin("k") is None


def test_glob_invalidation_is_redis_glob_exact() -> None:
    near = live_cache()
    for key in ("p:GET:/api/a", "p:GET:/api/a:lang:en", "p:GET:/api/ab", "q:GET:/api/a"):
        keep(near, key, b"v")
    near.invalidate_matching("p:GET:/api/a:*")
    assert near.get("p:GET:/api/a:lang:en") is None
    assert near.get("p:GET:/api/a") == near.get("p:GET:/api/ab") == b"v"
    near.invalidate_matching(r"p:GET:/api/a\*")  # a literal star matches no key here
    assert near.get("p:GET:/api/a") == b"v"
    near.invalidate_matching("p:*")
    assert near.get("p:GET:/api/a") is None and near.get("q:GET:/api/a") == b"v"


def test_a_null_push_flushes_everything() -> None:
    near = live_cache()
    keep(near, "k", b"v")
    listener = InvalidationListener("redis://127.0.0.1:1/0", "p", near)
    listener._apply([b"message", CHANNEL, None])
    assert near.get("k") is None
    keep(near, "k", b"v")
    listener._apply([b"message", CHANNEL, [b"k", b"other"]])
    assert near.get("k") is None
    listener._apply([b"pong", b""])  # not an invalidation: ignored


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"near_cache": {"max_bytes": 0}}, "near_cache.max_bytes: must be a positive integer"),
        ({"near_cache": {"max_age": -1}}, "near_cache.max_age: must be a number of seconds"),
        ({"near_cache": {"size": 1}}, "near_cache.size: unknown field"),
        ({"near_cache": "yes"}, "near_cache: must be a mapping"),
    ],
)
def test_bad_near_cache_config(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_near_cache_config_forms() -> None:
    assert load_config({}).near_cache is None
    assert load_config({"near_cache": False}).near_cache is None
    defaults = load_config({"near_cache": {}}).near_cache
    assert load_config({"near_cache": True}).near_cache == defaults
    custom = load_config({"near_cache": {"max_bytes": 1024, "max_age": 2.5}}).near_cache
    assert custom is not None and (custom.max_bytes, custom.max_age) == (1024, 2.5)


# -- the invalidation stream, on the real Redis --------------------------------------------------


@pytest.fixture
def listener(redis_url: str, prefix: str) -> Iterator[InvalidationListener]:
    near = NearCache(1 << 20, 60)
    stream = InvalidationListener(redis_url, prefix, near, timeout=0.5)
    stream.start()
    assert stream.wait_live(WAIT), "the invalidation stream never came up"
    yield stream
    stream.stop()


@pytest.mark.parametrize(
    "change",
    [
        lambda r, k: r.delete(k),
        lambda r, k: r.set(k, b"new"),
        lambda r, k: r.pexpire(k, 1),
        lambda r, k: r.eval("redis.call('UNLINK', KEYS[1])", 1, k),
    ],
    ids=["DEL", "SET", "expiry", "Lua UNLINK"],
)
def test_every_change_by_anyone_reaches_the_copy(
    listener: InvalidationListener, redis_url: str, prefix: str, change: Any
) -> None:
    other = redis.Redis.from_url(redis_url)
    key = f"{prefix}:GET:/api/a"
    before = listener.messages
    other.set(key, b"old")
    assert until(lambda: listener.messages > before)  # the SET's own push is in
    keep(listener.near, key, b"old")
    assert listener.near.get(key) == b"old"
    change(other, key)
    assert until(lambda: listener.near.get(key) is None)
    other.close()


def test_keys_of_other_caches_do_not_disturb_it(
    listener: InvalidationListener, redis_url: str, prefix: str
) -> None:
    other = redis.Redis.from_url(redis_url)
    key = f"{prefix}:GET:/api/a"
    keep(listener.near, key, b"v")
    before = listener.messages
    other.set(f"x{prefix}:GET:/api/a", b"v", ex=5)
    other.set(key + "-sibling", b"v", ex=5)  # same prefix: reported, but names another key
    assert until(lambda: listener.messages > before)
    assert listener.near.get(key) == b"v"
    other.delete(f"x{prefix}:GET:/api/a", key + "-sibling")
    other.close()


def test_a_killed_connection_empties_it_then_it_comes_back(
    listener: InvalidationListener, redis_url: str, prefix: str
) -> None:
    other = redis.Redis.from_url(redis_url)
    key = f"{prefix}:GET:/api/a"
    keep(listener.near, key, b"v")
    connects = listener.connects
    other.client_kill_filter(_id=listener.client_id)
    assert until(lambda: listener.connects > connects), "the listener did not reconnect"
    assert listener.near.get(key) is None  # anything could have changed while it was down
    assert listener.near.live
    before = listener.messages
    other.set(key, b"v2")
    assert until(lambda: listener.messages > before)
    keep(listener.near, key, b"v2")
    other.delete(key)
    assert until(lambda: listener.near.get(key) is None)
    other.close()


def test_a_silently_hung_redis_turns_it_off_within_the_bound(redis_process: Any) -> None:
    # SIGSTOP: the connection stays open but nothing answers, not even a PING.
    import signal

    near = NearCache(1 << 20, 60)
    stream = InvalidationListener(redis_process.url, "p", near, timeout=0.5)
    stream.start()
    try:
        assert stream.wait_live(WAIT)
        keep(near, "p:GET:/a", b"v")
        redis_process.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        try:
            assert until(lambda: not near.live, 5)
            took = time.monotonic() - paused
            assert took <= 3.2, f"took {took:.2f} s (documented bound: 3 s)"
            assert near.get("p:GET:/a") is None
        finally:
            redis_process.proc.send_signal(signal.SIGCONT)
        assert until(lambda: near.live, 10), "not back after the pause"
    finally:
        stream.stop()


def test_an_unreachable_redis_keeps_it_off() -> None:
    near = NearCache(1 << 20, 60)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = port.getsockname()[1]
    port.close()
    stream = InvalidationListener(f"redis://127.0.0.1:{address}/0", "p", near, timeout=0.2)
    stream.start()
    try:
        assert not stream.wait_live(0.5)
        assert near.begin("k") is None
    finally:
        stream.stop()


def test_a_forked_worker_never_serves_the_parents_copies(redis_url: str, prefix: str) -> None:
    # gunicorn --preload: the app (and its near-cache) is built before the fork; the child
    # inherits the copies but not the thread that kept them coherent.
    settings = load_config({"redis_url": redis_url, "key_prefix": prefix, "near_cache": {}})
    near, stream = near_cache_for(settings)
    assert stream.wait_live(WAIT)
    key = f"{prefix}:GET:/api/a"
    other = redis.Redis.from_url(redis_url)
    before = stream.messages
    other.set(key, b"v1")
    assert until(lambda: stream.messages > before)
    keep(near, key, b"v1")
    assert near.get(key) == b"v1"
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        code = 1
        try:
            inherited_gone = near.get(key) is None and not near.live
            again, listener = near_cache_for(settings)
            listening = again is near and listener is not stream and listener.wait_live(5)
            client = redis.Redis.from_url(redis_url)
            seen = listener.messages
            client.set(key, b"v2")
            heard = until(lambda: listener.messages > seen)
            keep(near, key, b"v2")
            client.delete(key)
            dropped = until(lambda: near.get(key) is None)
            code = 0 if (inherited_gone and listening and heard and dropped) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    other.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert near.get(key) is None  # the child's delete reached the parent's copy too


# -- both adapters ------------------------------------------------------------------------------


def _config(redis_url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "near_cache": {"max_age": 300},
        "routes": {"/api/item": {"ttl": 300}},
    }


class Versions:
    """What the app serves: its version, read per request (so a refill shows a change)."""

    def __init__(self) -> None:
        self.version = 1
        self.calls = 0

    def next(self) -> dict[str, int]:
        self.calls += 1
        return {"version": self.version}


def asgi_client(config: dict[str, Any], versions: Versions) -> TestClient:
    async def item(request: Request) -> Response:
        return JSONResponse(versions.next())

    app = Starlette(routes=[Route("/api/item", item, methods=["GET", "POST"])])
    app.add_middleware(CacheMiddleware, config=config)
    return TestClient(app)


def wsgi_client(config: dict[str, Any], versions: Versions) -> Any:
    flask_app = Flask(__name__)

    @flask_app.route("/api/item", methods=["GET", "POST"])
    def item() -> Any:
        return versions.next()

    flask_app.wsgi_app = WSGICacheMiddleware(flask_app.wsgi_app, config=config)  # type: ignore[method-assign]
    return Buffered(flask_app.test_client())


class Buffered:
    """Werkzeug's test client, reading each body to its end and closing it, as a server does
    (the WSGI middleware stores an entry when the body is closed)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, path: str) -> Any:
        return Answer(self.client.get(path, buffered=True))

    def post(self, path: str) -> Any:
        return Answer(self.client.post(path, buffered=True))


class Answer:
    def __init__(self, response: Any) -> None:
        self.headers = response.headers
        self._json = response.json

    def json(self) -> Any:
        return self._json


@pytest.mark.parametrize("make_client", [asgi_client, wsgi_client], ids=["asgi", "wsgi"])
def test_hits_come_from_the_near_cache_and_invalidations_reach_it(
    make_client: Any, redis_url: str, prefix: str
) -> None:
    config = _config(redis_url, prefix)
    near, stream = near_cache_for(load_config(config))
    assert stream.wait_live(WAIT)
    versions = Versions()
    client = make_client(config, versions)
    assert client.get("/api/item").headers["x-cache"] == "MISS"
    for _ in range(5):
        response = client.get("/api/item")
        assert response.headers["x-cache"] == "HIT"
        assert response.json() == {"version": 1}
    assert near.hits >= 3, "HITs did not come from the near-cache"
    assert versions.calls == 1
    # Another process (here: another client) invalidates: this process follows within the bound.
    versions.version = 2
    other = redis.Redis.from_url(redis_url)
    for key in other.scan_iter(match=f"{prefix}:GET:/api/item*"):
        other.delete(key)
    other.close()
    assert until(lambda: client.get("/api/item").json() == {"version": 2})
    assert client.get("/api/item").headers["x-cache"] == "HIT"


@pytest.mark.parametrize("make_client", [asgi_client, wsgi_client], ids=["asgi", "wsgi"])
def test_this_processes_own_invalidation_is_seen_at_once(
    make_client: Any, redis_url: str, prefix: str
) -> None:
    config = _config(redis_url, prefix)
    _, stream = near_cache_for(load_config(config))
    assert stream.wait_live(WAIT)
    versions = Versions()
    client = make_client(config, versions)
    client.get("/api/item")
    client.get("/api/item")
    client.get("/api/item")
    versions.version = 2
    # An unsafe method on the path drops the entry before its answer leaves: the very next
    # read, in the same process, must not be served from the near-cache.
    client.post("/api/item")
    assert client.get("/api/item").json() == {"version": 2}


def test_admin_invalidation_and_stats_with_a_near_cache(redis_url: str, prefix: str) -> None:
    from starlette.routing import Mount

    from cache_middleware.admin import create_admin_app

    config = _config(redis_url, prefix)
    _, stream = near_cache_for(load_config(config))
    assert stream.wait_live(WAIT)
    versions = Versions()

    async def item(request: Request) -> Response:
        return JSONResponse(versions.next())

    inner = Starlette(routes=[Route("/api/item", item)])
    app = Starlette(
        routes=[
            Mount("/admin/cache", create_admin_app(config, token="t" * 32)),
            Mount("/", CacheMiddleware(inner, config=config)),
        ]
    )
    auth = {"Authorization": "Bearer " + "t" * 32}
    with TestClient(app) as client:
        for _ in range(4):
            client.get("/api/item")
        versions.version = 2
        answer = client.post("/admin/cache/invalidate", json={"paths": ["/api/item"]}, headers=auth)
        assert answer.json()["invalidated"] >= 1
        # The admin's store is not the middleware's: the push from Redis carries it over.
        assert until(lambda: client.get("/api/item").json() == {"version": 2})
        figures = client.get("/admin/cache/stats", headers=auth).json()["near_cache"]
    assert figures["live"] is True
    assert figures["hits"] >= 2 and figures["invalidations"] >= 1


# -- Sentinel and Cluster ----------------------------------------------------------------------


def _started(url: str, prefix: str) -> tuple[NearCache, InvalidationListener]:
    near = NearCache(1 << 20, 60)
    stream = InvalidationListener(url, prefix, near, timeout=0.5)
    stream.start()
    assert stream.wait_live(10), "the invalidation stream never came up"
    return near, stream


def _keys_per_primary(cluster: Any, prefix: str) -> dict[int, str]:
    """One entry key on each primary (port -> key)."""
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"{prefix}:GET:/api/{i}"
        found.setdefault(cluster.get_node_from_key(key).port, key)
        if len(found) == 3:
            return found
    raise AssertionError("keys never reached every primary")


def test_every_primary_of_a_cluster_reports_its_keys(cluster_group: Any, prefix: str) -> None:
    near, stream = _started(cluster_group.url, prefix)
    cluster = cluster_group.cluster_client()
    try:
        assert len(stream.client_ids) == 3  # one tracking connection per primary
        keys = _keys_per_primary(cluster, prefix)
        before = stream.messages
        for key in keys.values():
            cluster.set(key, b"old")
        assert until(lambda: stream.messages >= before + 3)  # the SETs' own pushes are in
        for key in keys.values():
            keep(near, key, b"old")
        for key in keys.values():
            assert near.get(key) == b"old"
            cluster.delete(key)
            assert until(lambda key=key: near.get(key) is None), f"{key} was never reported"
    finally:
        stream.stop()
        cluster.close()


def test_the_sentinel_master_reports_its_keys(sentinel_group: Any, prefix: str) -> None:
    near, stream = _started(sentinel_group.url, prefix)
    master = redis.Redis(port=sentinel_group.current_master())
    key = f"{prefix}:GET:/api/a"
    try:
        before = stream.messages
        master.set(key, b"old")
        assert until(lambda: stream.messages > before)
        keep(near, key, b"old")
        master.set(key, b"new")
        assert until(lambda: near.get(key) is None)
    finally:
        stream.stop()
        master.delete(key)
        master.close()


def test_a_cluster_primary_killed_empties_it_until_its_replica_took_over(prefix: str) -> None:
    group = ClusterGroup()
    try:
        group.start()
        near, stream = _started(group.url, prefix)
        cluster = group.cluster_client()
        keys = _keys_per_primary(cluster, prefix)
        before = stream.messages
        for key in keys.values():
            cluster.set(key, b"v")
        assert until(lambda: stream.messages >= before + 3)
        for key in keys.values():
            keep(near, key, b"v")
        cluster.close()
        connects = stream.connects
        victim = next(iter(keys))
        group.kill(victim)
        # Its pushes can no longer come: nothing is kept until every primary is heard again.
        assert until(lambda: not near.live, 5)
        assert all(near.get(key) is None for key in keys.values())
        assert until(lambda: stream.connects > connects and near.live, 20)
        assert victim not in group.primaries()
        # The promoted replica reports the victim's keys now.
        cluster = group.cluster_client()
        key = keys[victim]
        keep(near, key, b"v")
        assert near.get(key) == b"v"
        cluster.delete(key)
        assert until(lambda: near.get(key) is None), "the new primary's writes were not heard"
        cluster.close()
        stream.stop()
    finally:
        group.stop()


def test_both_adapters_serve_from_the_near_cache_on_a_cluster(
    cluster_group: Any, prefix: str
) -> None:
    config = {**_config(cluster_group.url, prefix)}
    _, stream = near_cache_for(load_config(config))
    assert stream.wait_live(10)
    for make_client in (asgi_client, wsgi_client):
        versions = Versions()
        client = make_client({**config, "key_prefix": prefix}, versions)
        assert client.get("/api/item").headers["x-cache"] == "MISS"
        for _ in range(3):
            assert client.get("/api/item").headers["x-cache"] == "HIT"
        versions.version = 2
        cluster = cluster_group.cluster_client()
        for key in cluster.scan_iter(match=f"{prefix}:GET:/api/item*"):
            cluster.delete(key)
        cluster.close()
        assert until(lambda client=client: client.get("/api/item").json() == {"version": 2})
        assert versions.calls == 2


# -- several workers --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, method: str = "GET") -> tuple[dict[str, Any], dict[str, str]]:
    import json

    # One public Host for every server, as behind a load balancer: the Host is part of the key.
    headers = {"Connection": "close", "Host": "api.example.test"}
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}


class Workers:
    """tests/near_app.py served by uvicorn: `servers` processes on ports of their own (as on
    several hosts), each with `workers` worker processes sharing its port."""

    def __init__(self, redis_url: str, prefix: str, servers: int = 1, workers: int = 2) -> None:
        env = {
            **os.environ,
            "NEAR_TEST_REDIS_URL": redis_url,
            "NEAR_TEST_PREFIX": prefix,
            "PYTHONPATH": str(Path(__file__).parent),
        }
        self.bases: list[str] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        for _ in range(servers):
            port = _free_port()
            self.bases.append(f"http://127.0.0.1:{port}")
            self.servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "near_app:app",
                        "--workers",
                        str(workers),
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for base in self.bases:

            def up(base: str = base) -> bool:
                try:
                    _get(f"{base}/health")  # not a cached route: caches nothing
                    return True
                except OSError:
                    return False

            assert until(up, 20), "uvicorn did not start"

    def get(
        self, path: str, method: str = "GET", server: int = 0
    ) -> tuple[dict[str, Any], dict[str, str]]:
        return _get(f"{self.bases[server % len(self.bases)]}{path}", method)

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def workers(redis_url: str, prefix: str) -> Iterator[Workers]:
    """One uvicorn with two worker processes."""
    served = Workers(redis_url, prefix)
    yield served
    served.stop()


@pytest.fixture
def hosts(redis_url: str, prefix: str) -> Iterator[Workers]:
    """Two uvicorn servers on ports of their own, as two hosts would be: requests can be sent
    to either, so both surely take part."""
    served = Workers(redis_url, prefix, servers=2, workers=1)
    yield served
    served.stop()


def test_workers_never_serve_what_another_worker_invalidated(
    workers: Workers, redis_url: str, prefix: str
) -> None:
    version_key = f"{prefix}:test-version"
    other = redis.Redis.from_url(redis_url)
    try:
        other.set(version_key, 1)
        # Both workers serve version 1 from their near-cache.
        near_pids: set[str] = set()

        def both_near() -> bool:
            body, headers = workers.get("/api/item")
            assert body == {"version": 1}
            if headers["x-cache"] == "HIT" and int(headers["x-near-hits"]) > 0:
                near_pids.add(headers["x-pid"])
            return len(near_pids) == 2

        assert until(both_near, 20), f"only {near_pids} served from the near-cache"
        # The data changes and one worker invalidates; within the bound no worker serves v1.
        other.set(version_key, 2)
        workers.get("/invalidate", method="POST")
        invalidated = time.monotonic()
        time.sleep(0.2)  # the bound on loopback is far below this
        seen: dict[str, int] = {}
        while len(seen) < 2 or time.monotonic() - invalidated < 1.5:
            body, headers = workers.get("/api/item")
            assert body == {"version": 2}, f"worker {headers['x-pid']} served a stale copy"
            seen[headers["x-pid"]] = seen.get(headers["x-pid"], 0) + 1
            assert time.monotonic() - invalidated < 20, f"only workers {seen} answered"
    finally:
        other.close()


def _concurrently(hosts: Workers, path: str, count: int) -> list[tuple[Any, dict[str, str]]]:
    """`count` requests at once, alternating between the servers, each on a connection of its
    own."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: hosts.get(path, server=i), range(count)))


def test_processes_fill_a_missing_entry_once(hosts: Workers, redis_url: str, prefix: str) -> None:
    # The lease makes one request, in one process, call the app; the others, in both
    # processes, wait for its entry.
    answers = _concurrently(hosts, "/api/slow", 16)
    other = redis.Redis.from_url(redis_url)
    try:
        assert int(other.get(f"{prefix}:calls:/api/slow") or 0) == 1
    finally:
        other.close()
    assert {body["calls"] for body, _ in answers} == {1}
    assert len({headers["x-pid"] for _, headers in answers}) == 2


def test_processes_refresh_a_stale_entry_once(hosts: Workers, redis_url: str, prefix: str) -> None:
    assert hosts.get("/api/swr")[0] == {"calls": 1}  # stored, fresh for 1 s
    time.sleep(1.2)  # past the TTL, inside stale_while_revalidate
    answers = _concurrently(hosts, "/api/swr", 16)
    stale = [body for body, headers in answers if headers["x-cache"] == "STALE"]
    assert stale and all(body == {"calls": 1} for body in stale)
    assert len({headers["x-pid"] for _, headers in answers}) == 2
    other = redis.Redis.from_url(redis_url)
    key = f"{prefix}:calls:/api/swr"
    try:
        # Exactly one background refresh across both processes, however many stale hits.
        assert until(lambda: int(other.get(key) or 0) == 2, 5)
        time.sleep(0.5)
        assert int(other.get(key) or 0) == 2
    finally:
        other.close()
