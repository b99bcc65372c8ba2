"""Adapter behaviour beyond the table: headers, streaming, identity, corrupt entries, round trips.

Every test runs through both adapters via the shared Harness unless it is about one of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware.storage import AsyncMemoryStore, MemoryStore

from .adapters import Harness

CONFIG: dict[str, Any] = {
    "routes": {"/api": {"ttl": 60}, "/api/me": {"ttl": 3600, "private": True}},
}


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def memory_backend(memory_url: str) -> dict[str, Any]:
    return {"url": memory_url, "async_store": None, "sync_store": None}


async def test_cache_headers(adapter: str, backend: dict[str, Any], prefix: str) -> None:
    h = Harness(adapter, {**CONFIG, "key_prefix": prefix}, backend)
    miss = await h.request("GET", "/api/events?page=2")
    hit = await h.request("GET", "/api/events?page=2")
    key = f"{prefix}:GET:/api/events:page:2:host:http%3A//t"
    for reply in (miss, hit):
        assert reply.headers["x-cache-key"] == key[:50] + "..."
        assert reply.headers["x-cache-ttl"] == "60"
        assert reply.headers["cache-control"] == "public, max-age=60"
        assert reply.headers.get_list("x-cache") == [reply.x_cache]
    assert "age" not in miss.headers
    assert hit.headers["age"] == "0"
    assert hit.body == miss.body
    assert hit.headers["content-length"] == str(len(hit.body))
    assert hit.headers["content-type"] == "text/plain"
    head = await h.request("HEAD", "/api/events?page=2")
    assert head.x_cache == "HIT"
    assert head.headers["content-length"] == str(len(miss.body))
    private = await h.request("GET", "/api/me", {"X-Test-User": "alice"})
    assert private.headers["cache-control"] == "private, max-age=3600"
    own = await h.request("GET", "/api/own-cc")
    assert own.headers.get_list("cache-control") == ["public, max-age=5"]
    await h.aclose()


async def test_age_grows(
    adapter: str, memory_backend: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time as real_time

    h = Harness(adapter, CONFIG, memory_backend)
    await h.request("GET", "/api/events")
    later = real_time.time() + 42.7
    module = "cache_middleware.asgi" if adapter == "asgi" else "cache_middleware.wsgi"
    monkeypatch.setattr(f"{module}.time.time", lambda: later)
    hit = await h.request("GET", "/api/events")
    assert hit.headers["age"] in ("42", "43")
    await h.aclose()


async def test_key_header_can_be_turned_off(adapter: str, memory_backend: dict[str, Any]) -> None:
    h = Harness(adapter, {**CONFIG, "expose_key_header": False}, memory_backend)
    await h.request("GET", "/api/events")
    hit = await h.request("GET", "/api/events")
    assert hit.x_cache == "HIT"
    assert "x-cache-key" not in hit.headers
    await h.aclose()


async def test_non_ascii_path_key_header_is_ascii(
    adapter: str, memory_backend: dict[str, Any]
) -> None:
    h = Harness(adapter, CONFIG, memory_backend)
    first = await h.request("GET", "/api/caf%C3%A9")
    second = await h.request("GET", "/api/caf%C3%A9")
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
    assert second.headers["x-cache-key"].isascii()
    if adapter == "asgi":  # httpx's WSGI transport does not latin-1-encode PATH_INFO (PEP 3333)
        assert "%C3%A9" in second.headers["x-cache-key"]
    await h.aclose()


async def test_user_header_and_resolvers(adapter: str, memory_backend: dict[str, Any]) -> None:
    h = Harness(adapter, {**CONFIG, "user_header": "X-User-Id"}, memory_backend)
    # With user_header configured, the trusted header identifies the user (not the framework).
    assert (await h.request("GET", "/api/me", {"X-Test-User": "alice"})).x_cache == "BYPASS"
    assert (await h.request("GET", "/api/me", {"X-User-Id": "u1"})).x_cache == "MISS"
    assert (await h.request("GET", "/api/me", {"X-User-Id": "u1"})).x_cache == "HIT"
    assert (await h.request("GET", "/api/me", {"X-User-Id": "u2"})).x_cache == "MISS"
    await h.aclose()

    def by_tenant_header(native: Any) -> str | None:
        if isinstance(native, dict) and "HTTP_X_TENANT" in native:
            return str(native["HTTP_X_TENANT"])
        for key, value in native.get("headers", []) if isinstance(native, dict) else []:
            if key == b"x-tenant":
                return str(value.decode())
        return None

    h = Harness(
        adapter,
        CONFIG,
        memory_backend,
        user_resolver=lambda native: "fixed-user",
        venue_resolver=by_tenant_header,
    )
    a = await h.request("GET", "/api/me", {"X-Tenant": "t1"})
    b = await h.request("GET", "/api/me", {"X-Tenant": "t1"})
    c = await h.request("GET", "/api/me", {"X-Tenant": "t2"})
    assert (a.x_cache, b.x_cache, c.x_cache) == ("MISS", "HIT", "MISS")
    assert b.headers["x-cache-key"].endswith("...")
    await h.aclose()


async def test_corrupt_entry_is_a_miss_and_is_removed(
    adapter: str, backend: dict[str, Any], prefix: str
) -> None:
    h = Harness(adapter, {**CONFIG, "key_prefix": prefix}, backend)
    store = h.middleware.store
    key = f"{prefix}:GET:/api/events:host:http%3A//t"
    for garbage in (b"not msgpack at all", b"CMR\x01\xc1\xc1", b"CMR\x09future-format"):
        if adapter == "asgi":
            await store.set(key, garbage, 60)
        else:
            store.set(key, garbage, 60)
        reply = await h.request("GET", "/api/events")
        assert reply.status == 200
        assert reply.x_cache == "MISS"
        assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    await h.aclose()


_COUNTED = ("get", "set", "acquire_fill", "store_fill", "release_fill", "peek_fill", "delete")


class CountingAsyncStore(AsyncMemoryStore):
    """Records every store operation the middleware performs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name == "local_get":  # a plain function: the read of what this process holds
            calls = super().__getattribute__("calls")

            def counted_local(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return attr(*args, **kwargs)

            return counted_local
        if name in _COUNTED:
            calls = super().__getattribute__("calls")

            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return await attr(*args, **kwargs)

            return counted
        return attr


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in _COUNTED:
            calls = super().__getattribute__("calls")

            def counted(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr


async def test_hit_is_one_store_call(adapter: str) -> None:
    """DESIGN invariant 6: a HIT does one round trip and no stats writes."""
    store: Any = CountingAsyncStore() if adapter == "asgi" else CountingStore()
    backend = {"url": "memory://", "async_store": store, "sync_store": store}
    h = Harness(adapter, CONFIG, backend)
    await h.request("GET", "/api/events")
    # ASGI first asks what the process holds without a coroutine (`local_get`), then the store.
    read = ["local_get"] if adapter == "asgi" else ["get"]
    miss_read = ["local_get", "get"] if adapter == "asgi" else ["get"]
    # A MISS: the read, the fill lease, the leased write (which releases the lease).
    assert store.calls == [*miss_read, "acquire_fill", "store_fill"]
    store.calls.clear()
    for _ in range(5):
        assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    assert store.calls == read * 5
    store.calls.clear()
    await h.request("GET", "/not-cached")
    await h.request("OPTIONS", "/api/events")
    assert store.calls == []
    snapshot = h.middleware.stats.snapshot()
    assert (snapshot["hits"], snapshot["misses"], snapshot["bypasses"], snapshot["stores"]) == (
        5,
        1,
        1,
        1,
    )
    assert snapshot["hit_ratio"] == 0.8333
    await h.aclose()


async def test_asgi_large_body_streams_without_buffering() -> None:
    """Chunks reach the client as the app sends them, not after the app finished."""
    seen: list[str] = []
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a" * 800, "more_body": True})
        seen.append("app sent first chunk")
        await release.wait()
        await send({"type": "http.response.body", "body": b"b" * 800, "more_body": False})

    mw = CacheMiddleware(
        app, config={"max_body_bytes": 1000, "routes": {"/": {"ttl": 5}}}, store=AsyncMemoryStore()
    )

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and message["body"].startswith(b"a"):
            seen.append("client got first chunk")
            release.set()

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/x", "query_string": b"", "headers": []}
    await asyncio.wait_for(mw(scope, receive, send), 2)
    assert seen == ["client got first chunk", "app sent first chunk"]
    assert mw.stats.stores == 0


def test_wsgi_large_body_streams_and_closes() -> None:
    events: list[str] = []

    class Body:
        def __iter__(self):  # type: ignore[no-untyped-def]
            for chunk in (b"a" * 800, b"b" * 800):
                events.append("app yields")
                yield chunk

        def close(self) -> None:
            events.append("closed")

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    store = MemoryStore()
    mw = WSGICacheMiddleware(
        app, config={"max_body_bytes": 1000, "routes": {"/": {"ttl": 5}}}, store=store
    )
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": ""}
    result = mw(environ, lambda status, headers, exc_info=None: lambda data: None)
    iterator = iter(result)
    assert next(iterator) == b"a" * 800
    assert events == ["app yields"]
    assert b"".join(iterator) == b"b" * 800
    result.close()  # type: ignore[attr-defined]
    assert events == ["app yields", "app yields", "closed"]
    assert len(store) == 0


def test_wsgi_client_disconnect_stores_nothing() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return iter([b"part1", b"part2"])

    store = MemoryStore()
    mw = WSGICacheMiddleware(app, config={"routes": {"/": {"ttl": 5}}}, store=store)
    result = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: lambda d: None)
    iterator = iter(result)
    next(iterator)
    result.close()  # type: ignore[attr-defined]  # the server gives up after one chunk
    assert len(store) == 0


def test_wsgi_write_callable_is_recorded() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"legacy-")
        return [b"body"]

    written: list[bytes] = []
    store = MemoryStore()
    mw = WSGICacheMiddleware(app, config={"routes": {"/": {"ttl": 5}}}, store=store)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}
    body = b"".join(mw(environ, lambda *a: written.append))
    assert [*written, body] == [b"legacy-", b"body"]
    statuses: list[Any] = []
    replay = b"".join(mw(environ, lambda status, headers, exc_info=None: statuses.append(headers)))
    assert replay == b"legacy-body"
    assert ("x-cache", "HIT") in statuses[0]


def test_starlette_authentication_user_keys_private_routes() -> None:
    """The default ASGI identity: scope["user"] from AuthenticationMiddleware, outside the cache."""
    from starlette.testclient import TestClient

    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> Any:
            name = conn.headers.get("x-login")
            return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

    calls = {"n": 0}

    async def me(request: Any) -> PlainTextResponse:
        calls["n"] += 1
        user = request.user.display_name if request.user.is_authenticated else "anon"
        return PlainTextResponse(f"{user} {calls['n']}")

    app = Starlette(
        routes=[Route("/api/me", me)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(CacheMiddleware, config=CONFIG, store=AsyncMemoryStore()),
        ],
    )
    client = TestClient(app)
    assert client.get("/api/me").headers["x-cache"] == "BYPASS"
    alice1 = client.get("/api/me", headers={"x-login": "alice"})
    alice2 = client.get("/api/me", headers={"x-login": "alice"})
    bob = client.get("/api/me", headers={"x-login": "bob"})
    assert (alice1.headers["x-cache"], alice2.headers["x-cache"]) == ("MISS", "HIT")
    assert alice2.text == alice1.text == "alice 2"
    assert bob.text == "bob 3"
    assert alice2.headers["x-cache-key"].startswith("gateway:response:GET:/api/me:host:")


def test_non_http_scopes_pass_through() -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    mw = CacheMiddleware(app, config=CONFIG, store=AsyncMemoryStore())
    asyncio.run(mw({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    asyncio.run(mw({"type": "websocket", "path": "/api/x"}, None, None))  # type: ignore[arg-type]
    assert called == ["lifespan", "websocket"]


async def test_failing_condition_or_resolver_bypasses(
    adapter: str, memory_backend: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "routes": {
            "/api": {"ttl": 60, "condition": "tests.helpers.conditions:explodes"},
            "/api/me": {"ttl": 60, "private": True},
        }
    }

    def broken_resolver(native: object) -> str | None:
        raise KeyError("no such claim")

    h = Harness(adapter, config, memory_backend, user_resolver=broken_resolver)
    for target in ("/api/events", "/api/me"):
        reply = await h.request("GET", target)
        assert (reply.status, reply.x_cache) == (200, "BYPASS")
    assert sum("bypassing" in r.getMessage() for r in caplog.records) == 2
    await h.aclose()


async def test_app_copies_of_our_headers_are_not_doubled(
    adapter: str, memory_backend: dict[str, Any]
) -> None:
    h = Harness(adapter, CONFIG, memory_backend)
    miss = await h.request("GET", "/api/upstream")
    hit = await h.request("GET", "/api/upstream")
    assert miss.headers.get_list("x-cache") == ["MISS"]
    # RFC 9111 §5.1: the app's Age is the upstream age: passed on once, and counted on a HIT.
    assert miss.headers.get_list("age") == ["100"]
    assert hit.headers.get_list("x-cache") == ["HIT"]
    assert hit.headers.get_list("age") == ["100"]
    assert hit.headers.get_list("x-cache-ttl") == ["60"]
    await h.aclose()


async def test_empty_venue_means_no_venue(adapter: str, memory_backend: dict[str, Any]) -> None:
    h = Harness(adapter, CONFIG, memory_backend, venue_resolver=lambda native: "")
    reply = await h.request("GET", "/api/events")
    assert not reply.headers["x-cache-key"].rstrip(".").endswith(":venue:")
    await h.aclose()


async def test_stats_follow_the_x_cache_header(
    adapter: str, memory_backend: dict[str, Any]
) -> None:
    h = Harness(adapter, CONFIG, memory_backend)
    # /api/cookie last: the client keeps its cookie, and a request with a cookie is not stored.
    seen = [(await h.request("GET", t)).x_cache for t in ("/api/a", "/api/a", "/api/cookie")]
    assert seen == ["MISS", "HIT", "BYPASS"]
    stats = h.middleware.stats
    assert (stats.bypasses, stats.misses, stats.hits, stats.stores) == (1, 1, 1, 1)
    await h.aclose()
