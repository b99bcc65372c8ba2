"""The store never causes a 500 (issue #16, point 3): whatever building or using the Redis
client raises, not only redis-py's own errors, is the store-unavailable path, which both
adapters answer with the app's response and `X-Cache: BYPASS`. Proven through the frameworks'
own test clients, with a store whose client cannot be built and with a real dead port."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, WSGICacheMiddleware, load_config
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_cluster import AsyncRedisClusterStore, RedisClusterStore
from cache_middleware.storage.redis_sync import RedisStore

from .conftest import _free_port

ROUTES = {"/api": {"ttl": 60}}
FAILURES = [ValueError("Port could not be cast to integer value"), TypeError("bad option")]


def starlette_client(config: Any, store: Any = None) -> tuple[TestClient, list[int]]:
    calls: list[int] = []

    async def view(request: Request) -> PlainTextResponse:
        calls.append(1)
        return PlainTextResponse(f"call {len(calls)}")

    app = Starlette(routes=[Route("/api/events", view)])
    app.add_middleware(CacheMiddleware, config=config, store=store)
    return TestClient(app, raise_server_exceptions=False), calls


def flask_client(config: dict[str, Any], store: Any = None) -> tuple[Any, list[int]]:
    calls: list[int] = []
    app = Flask(__name__)

    @app.get("/api/events")
    def view() -> str:
        calls.append(1)
        return f"call {len(calls)}"

    app.wsgi_app = WSGICacheMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config=config, store=store
    )
    return app.test_client(), calls


def assert_bypassed(responses: list[Any], calls: list[int]) -> None:
    for response in responses:
        assert response.status_code == 200
        assert response.headers["X-Cache"] == "BYPASS"
        assert "detail=store-unavailable" in response.headers["Cache-Status"]
    assert len(calls) == len(responses)  # the app answered every one


def url_for(store_cls: Any) -> str:
    """A URL the store's class reads (never contacted: building its client fails first)."""
    return (
        "redis+cluster://127.0.0.1:1"
        if "Cluster" in store_cls.__name__
        else "redis://127.0.0.1:1/0"
    )


def failing_builder(exc: Exception) -> Any:
    def _new_client(self: Any) -> Any:
        raise exc

    return _new_client


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "store_cls",
    [AsyncRedisStore, AsyncRedisClusterStore],
    ids=lambda c: c.__name__,
)
def test_starlette_bypasses_when_the_client_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    store_cls: Any,
    exc: Exception,
) -> None:
    caplog.set_level(logging.WARNING, logger="cache_middleware.storage")
    monkeypatch.setattr(store_cls, "_new_client", failing_builder(exc))
    url = url_for(store_cls)
    store = store_cls(url, breaker_failures=3, breaker_cooldown=60)
    client, calls = starlette_client({"routes": ROUTES}, store)
    with client:
        responses = [client.get("/api/events") for _ in range(6)]
    assert_bypassed(responses, calls)
    assert store.breaker.state == "open"  # it fails fast, like a dead server
    outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage) == 1  # logged once per outage ...
    assert outage[0].exc_info is not None  # ... with the traceback: not a network failure


def test_starlette_builds_its_own_store_and_still_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The middleware's own store (from the config): the pipelined GET's binding builds the
    client too, and its failure is the same BYPASS."""
    settings = load_config({"redis_url": "redis://127.0.0.1:6379/15", "routes": ROUTES})
    monkeypatch.setattr(AsyncRedisStore, "_new_client", failing_builder(ValueError("no")))
    client, calls = starlette_client(settings)
    with client:
        responses = [client.get("/api/events") for _ in range(3)]
    assert_bypassed(responses, calls)


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("store_cls", [RedisStore, RedisClusterStore], ids=lambda c: c.__name__)
def test_flask_bypasses_when_the_client_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch, store_cls: Any, exc: Exception
) -> None:
    monkeypatch.setattr(store_cls, "_new_client", failing_builder(exc))
    url = url_for(store_cls)
    # The lean GET would never build a redis-py client: this store goes through redis-py only.
    store = store_cls(url, fast_get=False, breaker_failures=3, breaker_cooldown=60)
    client, calls = flask_client({"routes": ROUTES}, store)
    responses = [client.get("/api/events") for _ in range(6)]
    assert_bypassed(responses, calls)
    assert store.breaker.state == "open"


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_a_real_unreachable_port_bypasses(framework: str) -> None:
    config = {
        "redis_url": f"redis://127.0.0.1:{_free_port()}/0",
        "redis_timeout": 0.1,
        "routes": ROUTES,
    }
    if framework == "starlette":
        client, calls = starlette_client(config)
        with client:
            responses = [client.get("/api/events") for _ in range(8)]
    else:
        client, calls = flask_client(config)
        responses = [client.get("/api/events") for _ in range(8)]
    assert_bypassed(responses, calls)


def test_a_bug_in_the_client_still_fails_open_in_the_cache_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manager's reads fail open on the same path; its invalidation refuses to pretend."""
    from cache_middleware.errors import StoreUnavailable
    from cache_middleware.manager import SyncCacheManager

    monkeypatch.setattr(RedisStore, "_new_client", failing_builder(TypeError("boom")))
    manager = SyncCacheManager(RedisStore("redis://127.0.0.1:1/0", fast_get=False))
    assert manager.get("k", "default") == "default"
    assert manager.set("k", 1) is False
    with pytest.raises(StoreUnavailable, match="TypeError: boom"):
        manager.invalidate("k*")
