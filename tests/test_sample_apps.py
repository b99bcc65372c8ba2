"""The three sample apps and the packaged demo, end to end through their real routes.

Each test builds a fresh app on a memory store of its own: the sample apps read
`sample_apps/cache.yaml`, whose `redis_url` the CACHE_REDIS_URL variable overrides, so the test
points it at `memory://<uuid>`; the demo always makes a fresh memory store of its own.
ASGI apps are driven through httpx's ASGI transport, the Flask app through its test client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from cache_middleware.demo.app import create_app as create_demo_app
from sample_apps import fastapi_app, flask_app, starlette_app


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers / werkzeug Headers)
    body: bytes

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("x-cache")

    def json(self) -> Any:
        return json.loads(self.body)


class Client(Protocol):
    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer: ...


class AsgiClient:
    def __init__(self, app: Any) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        response = await self.http.get(path, headers=headers)
        return Answer(response.status_code, response.headers, response.content)


class WsgiClient:
    def __init__(self, app: Any) -> None:
        self.http = app.test_client()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        response = self.http.get(path, headers=headers or {})
        return Answer(response.status_code, response.headers, response.get_data())


APPS: dict[str, Callable[[], tuple[Any, str]]] = {
    "starlette": lambda: (starlette_app.create_app(), "asgi"),
    "fastapi": lambda: (fastapi_app.create_app(), "asgi"),
    "flask": lambda: (flask_app.create_app(), "wsgi"),
    "demo": lambda: (create_demo_app(), "asgi"),
}


async def _client_for(name: str) -> AsyncIterator[Client]:
    app, kind = APPS[name]()
    if kind == "wsgi":
        yield WsgiClient(app)
        return
    client = AsgiClient(app)
    try:
        yield client
    finally:
        await client.http.aclose()


@pytest.fixture(params=sorted(APPS))
async def client(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> AsyncIterator[Client]:
    # Before the app is built (Flask) or first called (Starlette builds its middleware lazily).
    monkeypatch.setenv("CACHE_REDIS_URL", memory_url)
    async for c in _client_for(request.param):
        yield c


async def test_second_get_is_a_hit_with_the_same_body(client: Client) -> None:
    first = await client.get("/api/events")
    second = await client.get("/api/events")
    assert first.status == second.status == 200
    assert first.x_cache == "MISS"
    assert second.x_cache == "HIT"
    assert second.body == first.body
    assert "generated_at" in first.json()
    assert first.headers["x-cache-ttl"] == second.headers["x-cache-ttl"] == "600"
    assert first.headers["cache-control"] == "public, max-age=600"
    assert "age" in second.headers


async def test_route_covers_the_paths_below_it(client: Client) -> None:
    await client.get("/api/events")
    detail = await client.get("/api/events/e1")
    assert detail.x_cache == "MISS"  # its own entry, not the list's
    assert detail.json()["event"]["id"] == "e1"
    again = await client.get("/api/events/e1")
    assert again.x_cache == "HIT"
    assert again.body == detail.body


async def test_a_404_is_never_stored(client: Client) -> None:
    first = await client.get("/api/events/nope")
    second = await client.get("/api/events/nope")
    assert first.status == second.status == 404
    assert first.x_cache == second.x_cache == "BYPASS"


async def test_ttls_follow_the_route_table(client: Client) -> None:
    expected = {
        "/api/venues": "1800",
        "/api/tickets/availability?event_id=e2": "30",
        "/api/search?q=jazz": "300",
    }
    for path, ttl in expected.items():
        answer = await client.get(path)
        assert answer.status == 200, path
        assert answer.x_cache == "MISS", path
        assert answer.headers["x-cache-ttl"] == ttl, path


async def test_search_is_keyed_by_q_and_category_only(client: Client) -> None:
    a = await client.get("/api/search?q=a")
    b = await client.get("/api/search?q=b")
    assert a.x_cache == b.x_cache == "MISS"
    assert a.json()["q"] == "a"
    assert b.json()["q"] == "b"
    a_again = await client.get("/api/search?q=a")
    b_again = await client.get("/api/search?q=b")
    assert a_again.x_cache == b_again.x_cache == "HIT"
    assert a_again.body == a.body
    assert b_again.body == b.body
    assert a.headers["x-cache-key"] != b.headers["x-cache-key"]
    # A parameter outside vary_by does not make a new entry; category does.
    tracked = await client.get("/api/search?q=a&utm_source=mail")
    assert tracked.x_cache == "HIT"
    assert tracked.body == a.body
    music = await client.get("/api/search?q=a&category=music")
    assert music.x_cache == "MISS"
    assert music.json()["category"] == "music"


async def test_private_route_without_a_user_is_bypassed(client: Client) -> None:
    first = await client.get("/api/me")
    second = await client.get("/api/me")
    assert first.x_cache == second.x_cache == "BYPASS"
    assert first.status == 401


async def test_private_route_has_one_entry_per_user(client: Client) -> None:
    alice = await client.get("/api/me", headers={"X-User-Id": "alice"})
    bob = await client.get("/api/me", headers={"X-User-Id": "bob"})
    assert alice.x_cache == bob.x_cache == "MISS"
    assert alice.json()["user"]["id"] == "alice"
    assert bob.json()["user"]["id"] == "bob"
    # (X-Cache-Key shows only the first 50 characters: the two keys differ past them.)
    assert alice.headers["cache-control"] == "private, max-age=3600"
    alice_again = await client.get("/api/me", headers={"X-User-Id": "alice"})
    bob_again = await client.get("/api/me", headers={"X-User-Id": "bob"})
    assert alice_again.x_cache == bob_again.x_cache == "HIT"
    assert alice_again.body == alice.body
    assert bob_again.body == bob.body
    assert (await client.get("/api/me")).x_cache == "BYPASS"  # no user: never a user's entry


@pytest.mark.parametrize("path", ["/health", "/"])
async def test_unconfigured_path_has_no_cache_headers(client: Client, path: str) -> None:
    first = await client.get(path)
    second = await client.get(path)
    assert first.status == second.status == 200
    for answer in (first, second):
        assert "x-cache" not in answer.headers
        assert "x-cache-key" not in answer.headers
        assert "x-cache-ttl" not in answer.headers


@pytest.mark.parametrize("name", ["starlette", "fastapi", "flask"])
async def test_each_app_gets_its_own_memory_store(
    name: str, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    monkeypatch.setenv("CACHE_REDIS_URL", memory_url)
    async for first in _client_for(name):
        await first.get("/api/events")
        assert (await first.get("/api/events")).x_cache == "HIT"
    # Same URL, same process: the memory store is shared, as with one Redis.
    async for same in _client_for(name):
        assert (await same.get("/api/events")).x_cache == "HIT"
    monkeypatch.setenv("CACHE_REDIS_URL", memory_url + "-other")
    async for other in _client_for(name):
        assert (await other.get("/api/events")).x_cache == "MISS"


async def test_demo_stays_on_memory_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on port 1: were the demo to follow CACHE_REDIS_URL, every answer would be
    # a BYPASS (store unreachable).
    monkeypatch.setenv("CACHE_REDIS_URL", "redis://127.0.0.1:1/0")
    app = create_demo_app()
    assert app.state.cache_settings.redis_url == "memory://demo"
    async for client in _client_for("demo"):
        assert (await client.get("/api/events")).x_cache == "MISS"
        assert (await client.get("/api/events")).x_cache == "HIT"
    # Every demo app has a fresh store.
    async for client in _client_for("demo"):
        assert (await client.get("/api/events")).x_cache == "MISS"


async def test_demo_accepts_a_config_of_its_own(tmp_path: Path) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text(
        "redis_url: redis://127.0.0.1:1/0\nroutes:\n  /api/venues: {ttl: 5}\n", encoding="utf-8"
    )
    for source in (config, str(config), {"routes": {"/api/venues": {"ttl": 5}}}):
        client = AsgiClient(create_demo_app(source))
        try:
            first = await client.get("/api/venues")
            assert first.x_cache == "MISS"
            assert first.headers["x-cache-ttl"] == "5"
            assert (await client.get("/api/venues")).x_cache == "HIT"
            assert "x-cache" not in (await client.get("/api/events")).headers
        finally:
            await client.http.aclose()


async def test_demo_index_lists_the_routes() -> None:
    client = AsgiClient(create_demo_app())
    try:
        page = await client.get("/")
    finally:
        await client.http.aclose()
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.body.decode()
    for route in (
        "/api/events",
        "/api/venues",
        "/api/tickets/availability",
        "/api/search",
        "/api/me",
    ):
        assert route in text
    assert "curl -i http://testserver/api/events" in text
