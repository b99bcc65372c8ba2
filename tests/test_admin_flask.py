"""The admin sub-app in a Flask (WSGI) app, next to WSGICacheMiddleware:

    app.wsgi_app = DispatcherMiddleware(
        WSGICacheMiddleware(app.wsgi_app, config=cfg),
        {"/admin/cache": ASGIMiddleware(create_admin_app(cfg, token=...))},
    )

a2wsgi runs the admin app on an event loop of its own, in a daemon thread; the admin app reads
and flushes the WSGI middleware's counters (in a worker thread) and warms through it.

a2wsgi's responder is a generator: the ASGI task finishes (or is cancelled) only once the WSGI
server has iterated the body to its end, and WSGICacheMiddleware stores an entry when its body has
been read. Real servers always do; werkzeug's test client only when the body is read, hence
`buffered=True` on every request here.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from a2wsgi import ASGIMiddleware
from flask import Flask, Response
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import TestResponse

from cache_middleware import create_admin_app
from cache_middleware.config import load_config
from cache_middleware.events import MemorySink
from cache_middleware.wsgi import WSGICacheMiddleware

from .redis_process import RedisProcess

TOKEN = "flask-admin-s3cret"
# Not werkzeug's default `localhost`, which is also the Host /warm makes up.
BASE_URL = "http://shop.example"
ITEM_ROUTE = "/api/items/{item_id}"
HOST_KEYED = bool(getattr(load_config({}), "key_host", False))


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess | None]:
    """A redis-server of this module's own (see tests/test_admin.py for why)."""
    if shutil.which("redis-server") is None:
        yield None
        return
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@dataclass
class FlaskSite:
    prefix: str
    app: Flask
    mw: WSGICacheMiddleware
    admin: ASGIMiddleware
    sink: MemorySink
    calls: list[str] = field(default_factory=list)

    def get(self, path: str) -> TestResponse:
        reply = self.app.test_client().get(path, base_url=BASE_URL, buffered=True)
        assert reply.status_code < 500
        return reply

    def call_admin(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        authorization: str | None = None,
    ) -> TestResponse:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        reply = self.app.test_client().open(
            "/admin/cache" + path,
            method=method,
            base_url=BASE_URL,
            headers=headers,
            json=body,
            buffered=True,
        )
        assert reply.status_code != 500, reply.text
        assert reply.headers.get("Cache-Control") == "no-store"
        return reply

    def entries(self) -> list[str]:
        loop = self.admin.loop
        store = self.admin.app.state.store
        pattern = f"{self.prefix}:GET:*"
        future = asyncio.run_coroutine_threadsafe(store.keys_matching(pattern), loop)
        return sorted(future.result(5))


def build(url: str, prefix: str) -> FlaskSite:
    config = {
        "redis_url": url,
        "key_prefix": prefix,
        "routes": {ITEM_ROUTE: {"ttl": 60, "tags": ["item:{item_id}"]}, "/api/news": {"ttl": 60}},
    }
    app = Flask(__name__)
    calls: list[str] = []

    @app.get("/api/items/<item_id>")
    def item(item_id: str) -> dict[str, str]:
        calls.append(item_id)
        return {"id": item_id}

    @app.get("/api/news")
    def news() -> Response:
        calls.append("news")
        return Response("news", headers={"Cache-Tag": "headlines"})

    sink = MemorySink()
    mw = WSGICacheMiddleware(app.wsgi_app, config=config)
    admin = ASGIMiddleware(create_admin_app(config, token=TOKEN, event_sink=sink))
    app.wsgi_app = DispatcherMiddleware(mw, {"/admin/cache": admin})  # type: ignore[method-assign]
    return FlaskSite(prefix, app, mw, admin, sink, calls)


@pytest.fixture(params=["redis", "memory"])
def site(
    request: pytest.FixtureRequest,
    own_redis: RedisProcess | None,
    prefix: str,
    memory_url: str,
) -> Iterator[FlaskSite]:
    if request.param == "memory":
        url = memory_url
    elif own_redis is None:
        url = request.getfixturevalue("redis_url")
    else:
        url = own_redis.url
    built = build(url, prefix)
    yield built
    loop = built.admin.loop
    close = built.admin.app.state.store.aclose()
    asyncio.run_coroutine_threadsafe(close, loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    deadline = time.monotonic() + 5
    while loop.is_running() and time.monotonic() < deadline:
        time.sleep(0.005)
    loop.close()
    built.mw.store.close()
    if request.param == "redis" and own_redis is not None:
        client = own_redis.client()
        client.flushdb()
        client.close()


def test_admin_needs_a_token(site: FlaskSite) -> None:
    site.get("/api/items/1")
    for authorization in (None, "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer t\xe9st", "Bearer"):
        for method, path, body in (
            ("GET", "/stats", None),
            ("POST", "/invalidate", {"paths": ["/api/items/*"]}),
            ("POST", "/clear", {"confirm": True}),
        ):
            reply = site.call_admin(method, path, body, token=None, authorization=authorization)
            assert reply.status_code == 401, (authorization, path)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert len(site.entries()) == 1
    assert site.sink.events == []
    assert site.call_admin("GET", "/stats").status_code == 200


def test_stats_reflect_the_flask_apps_cached_traffic(site: FlaskSite) -> None:
    states = [
        site.get(path)
        for path in ("/api/items/1", "/api/items/1", "/api/items/2", "/api/news", "/api/news")
    ]
    assert [r.headers["X-Cache"] for r in states] == ["MISS", "HIT", "MISS", "MISS", "HIT"]
    assert all("Cache-Tag" not in r.headers for r in states)
    site.mw.flush_stats()
    stats = site.call_admin("GET", "/stats").json
    assert {k: stats[k] for k in ("hits", "misses", "stores", "bypasses", "errors")} == {
        "hits": 2,
        "misses": 3,
        "stores": 3,
        "bypasses": 0,
        "errors": 0,
    }
    assert stats["hit_ratio"] == 0.4
    assert stats["entries"] == 3
    assert stats["bytes"] > 0
    assert (stats["routes"][ITEM_ROUTE]["hits"], stats["routes"][ITEM_ROUTE]["misses"]) == (1, 2)
    # Without a flush by hand the admin app still sees this process's counters.
    site.get("/api/items/2")
    assert site.call_admin("GET", "/stats").json["hits"] == 3
    metrics = site.call_admin("GET", "/metrics")
    assert metrics.mimetype == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    hits = {s.labels["route"]: s.value for s in families["cache_middleware_hits"].samples}
    assert hits["_all"] == 3


def test_invalidate_by_path_and_tag_makes_the_next_request_a_miss(site: FlaskSite) -> None:
    for path in ("/api/items/1", "/api/items/2", "/api/news"):
        assert site.get(path).headers["X-Cache"] == "MISS"
    dry = site.call_admin("POST", "/invalidate", {"paths": ["/api/items/1"], "dry_run": True})
    assert dry.json == {"success": True, "invalidated": 1, "dry_run": True}
    assert site.get("/api/items/1").headers["X-Cache"] == "HIT"
    reply = site.call_admin("POST", "/invalidate", {"paths": ["/api/items/1"]})
    assert reply.json == {"success": True, "invalidated": 1, "dry_run": False}
    assert site.get("/api/items/1").headers["X-Cache"] == "MISS"
    assert site.get("/api/items/2").headers["X-Cache"] == "HIT"
    reply = site.call_admin("POST", "/invalidate", {"tags": ["headlines", "item:2"]})
    assert reply.json["invalidated"] == 2
    assert site.get("/api/news").headers["X-Cache"] == "MISS"
    assert site.get("/api/items/2").headers["X-Cache"] == "MISS"
    assert [e["count"] for name, e in site.sink.events if name == "cache.invalidated"] == [1, 2]
    bad = site.call_admin("POST", "/invalidate", {"paths": ["/api/items/1"] * 101})
    assert bad.status_code == 400 and "at most 100" in bad.json["error"]


def test_warm_through_the_wsgi_middleware(site: FlaskSite) -> None:
    reply = site.call_admin("POST", "/warm", {"paths": ["/api/items/7", "/api/nope"]})
    assert reply.status_code == 200
    body = reply.json
    assert body["warmed"] == [{"path": "/api/items/7", "status": 200, "x_cache": "MISS"}]
    assert [(f["path"], f["status"]) for f in body["failed"]] == [("/api/nope", 404)]
    assert site.calls == ["7"]  # through Flask, once
    [stored] = site.entries()
    assert stored.startswith(f"{site.prefix}:GET:/api/items/7")
    again = site.call_admin("POST", "/warm", {"paths": ["/api/items/7"]}).json
    assert again["warmed"] == [{"path": "/api/items/7", "status": 200, "x_cache": "HIT"}]
    assert site.calls == ["7"]
    assert [name for name, _ in site.sink.events] == ["cache.warmed", "cache.warmed"]


def test_a_warmed_path_is_then_a_hit(site: FlaskSite) -> None:
    site.call_admin("POST", "/warm", {"paths": ["/api/items/7"]})
    assert site.get("/api/items/7").headers["X-Cache"] == "HIT"
    assert site.calls == ["7"]


def test_clear_and_optimize_under_flask(site: FlaskSite) -> None:
    for path in ("/api/items/1", "/api/items/2"):
        site.get(path)
    assert site.call_admin("POST", "/clear", {}).status_code == 400
    assert len(site.entries()) == 2
    cleared = site.call_admin("POST", "/clear", {"confirm": True}).json
    assert cleared["success"] is True and cleared["cleared"] >= 2
    assert site.entries() == []
    assert site.get("/api/items/1").headers["X-Cache"] == "MISS"
    report = site.call_admin("POST", "/optimize", {}).json
    assert report["success"] is True
    assert (report["unrouted_entries"], report["oversized_entries"]) == (0, 0)
