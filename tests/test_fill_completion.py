"""A fill completes when the app has produced the body, not when the client has read it.

The request that fills a key stores the entry and gives its lease up as soon as the body is
known whole (ASGI: the message with `more_body` false, or the declared Content-Length reached;
WSGI: the declared Content-Length reached, pulling the app's chunks ahead, or a list body),
before the last chunk is handed to the client. A slow client downloading the leader's answer
then holds neither the key nor the requests waiting for it; Flask's test_client, which never
reads a body it is not asked for, sees MISS then HIT. Over the memory store and the real Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from flask import Flask, Response

from cache_middleware import CacheMiddleware, WSGICacheMiddleware

BODY = b"".join(b"%03d," % i for i in range(25))  # 100 bytes, no two chunks alike
# A wait that would expire if the leader held the fill for its client's download: the
# requests below must be answered well before it.
COALESCE_WAIT = 5.0
QUICK = 2.0


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:12]}"
    url: str = request.getfixturevalue("redis_url")
    return url


def _config(url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "redis_timeout": 1.0,  # a loaded CI machine must not make a MISS a BYPASS
        "coalesce_wait": COALESCE_WAIT,
        "routes": {"/api": {"ttl": 60}},
    }


def _no_lease_left(url: str, prefix: str) -> bool:
    if not url.startswith("redis://"):
        return True
    client = redis.Redis.from_url(url)
    try:
        return not list(client.scan_iter(match=f"{prefix}:LOCK:*"))
    finally:
        client.close()


# -- WSGI ------------------------------------------------------------------------------------


def _flask(url: str, prefix: str, calls: list[str]) -> Flask:
    app = Flask(__name__)

    @app.get("/api/plain")
    def plain() -> Response:
        calls.append("plain")
        return Response(BODY, content_type="text/plain")

    @app.get("/api/chunks")
    def chunks() -> Response:
        calls.append("chunks")

        def parts() -> Iterator[bytes]:
            for i in range(0, len(BODY), 10):
                yield BODY[i : i + 10]

        return Response(parts(), headers={"Content-Length": str(len(BODY))})

    app.wsgi_app = WSGICacheMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config=_config(url, prefix)
    )
    return app


@pytest.mark.parametrize("path", ["/api/plain", "/api/chunks"])
def test_flask_test_client_headers_only_miss_then_hit(
    store_url: str, prefix: str, path: str
) -> None:
    """Two GETs that look only at headers: once a 5 s stall, then BYPASS detail=not-leader,
    and nothing ever stored."""
    calls: list[str] = []
    client = _flask(store_url, prefix, calls).test_client()
    start = time.monotonic()
    first = client.get(path)
    second = client.get(path)
    assert time.monotonic() - start < QUICK
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert len(calls) == 1
    assert second.data == BODY
    assert _no_lease_left(store_url, prefix)


def test_wsgi_slow_client_does_not_hold_the_fill(store_url: str, prefix: str) -> None:
    """A server still writing the leader's first chunk to a slow client (it has not asked for
    the next): concurrent requests for the key get the entry."""
    calls: list[str] = []
    app = _flask(store_url, prefix, calls)
    started: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(dict((k.lower(), v) for k, v in headers)["x-cache"])
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/chunks",
        "QUERY_STRING": "",
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",  # as Flask's test_client sends it: the same key
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    leader = app.wsgi_app(environ, start_response)
    body = iter(leader)
    assert next(body) == BODY[:10]  # handed to the server; the client is slow to take it
    assert started == ["MISS"]

    def other(_: int) -> tuple[str, bytes]:
        reply = app.test_client().get("/api/chunks")
        return reply.headers["x-cache"], reply.data

    begin = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(other, range(4)))
    assert time.monotonic() - begin < QUICK
    assert replies == [("HIT", BODY)] * 4
    assert calls == ["chunks"]
    assert _no_lease_left(store_url, prefix)
    assert b"".join(body) == BODY[10:]  # the slow client gets the rest in the end
    leader.close()  # type: ignore[attr-defined]


def test_wsgi_streamed_body_without_length_is_stored_at_its_end(prefix: str) -> None:
    """A generator with no Content-Length is whole only when the server asks past its last
    chunk: stored then (documented), not before."""
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        calls.append("stream")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield BODY[:50]
        yield BODY[50:]

    mw = WSGICacheMiddleware(app, config=_config("memory://", prefix))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/stream",
        "HTTP_HOST": "t",
        "wsgi.url_scheme": "http",
    }
    body = iter(mw(environ, lambda status, headers, exc_info=None: None))
    assert [next(body), next(body)] == [BODY[:50], BODY[50:]]
    assert mw.stats.stores == 0  # the last chunk is out; the end is not known yet
    assert list(body) == []
    assert mw.stats.stores == 1


# -- ASGI ------------------------------------------------------------------------------------


def _asgi_app(calls: list[str]) -> Any:
    """`/api/one`: the body in one message; `/api/parts`: three messages, the last empty;
    `/api/sized`: two messages with a Content-Length, then an empty last one."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        calls.append(path)
        headers = [(b"content-type", b"text/plain")]
        if path == "/api/sized":
            headers.append((b"content-length", str(len(BODY)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/api/one":
            await send({"type": "http.response.body", "body": BODY})
            return
        await send({"type": "http.response.body", "body": BODY[:50], "more_body": True})
        await send({"type": "http.response.body", "body": BODY[50:], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"t")],
        "scheme": "http",
        "http_version": "1.1",
        "server": ("t", 80),
        "client": ("127.0.0.1", 1234),
    }


class SlowReader:
    """The leader's client: `send` blocks on the chunk that completes the body until let go."""

    def __init__(self, last_chunk: bytes) -> None:
        self.last_chunk = last_chunk
        self.blocked = asyncio.Event()
        self.go = asyncio.Event()
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and message["body"] == self.last_chunk:
            self.blocked.set()
            await self.go.wait()

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


@pytest.mark.parametrize(
    ("path", "last_chunk"),
    [("/api/one", BODY), ("/api/parts", b""), ("/api/sized", BODY[50:])],
)
async def test_asgi_slow_client_does_not_hold_the_fill(
    store_url: str, prefix: str, path: str, last_chunk: bytes
) -> None:
    """`/api/sized` blocks on the chunk that reaches the Content-Length, before the app's
    final empty message: the length alone says the body is whole."""
    calls: list[str] = []
    mw = CacheMiddleware(_asgi_app(calls), config=_config(store_url, prefix))
    reader = SlowReader(last_chunk)
    leader = asyncio.ensure_future(mw(_scope(path), reader.receive, reader.send))
    await asyncio.wait_for(reader.blocked.wait(), QUICK)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.get(path) for _ in range(4))), QUICK
        )
    assert [(r.headers["x-cache"], r.content) for r in replies] == [("HIT", BODY)] * 4
    assert calls == [path]
    assert not leader.done()  # the leader's client is still reading
    assert _no_lease_left(store_url, prefix)
    reader.go.set()
    await leader
    assert reader.body() == BODY
    headers = dict(reader.messages[0]["headers"])
    assert headers[b"x-cache"] == b"MISS"
    assert mw.stats.stores == 1


async def test_asgi_another_process_gets_the_entry_while_the_leader_client_reads(
    redis_url: str, prefix: str
) -> None:
    """A second middleware on the same Redis (another worker) polls the lease: it finds the
    entry, not the lease, while the leader's client is still downloading."""
    calls: list[str] = []
    one = CacheMiddleware(_asgi_app(calls), config=_config(redis_url, prefix))
    two = CacheMiddleware(_asgi_app(calls), config=_config(redis_url, prefix))
    reader = SlowReader(b"")
    leader = asyncio.ensure_future(one(_scope("/api/parts"), reader.receive, reader.send))
    await asyncio.wait_for(reader.blocked.wait(), QUICK)
    transport = httpx.ASGITransport(app=two)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reply = await asyncio.wait_for(client.get("/api/parts"), QUICK)
    assert (reply.headers["x-cache"], reply.content) == ("HIT", BODY)
    assert calls == ["/api/parts"]
    reader.go.set()
    await leader


async def test_asgi_entry_is_kept_when_the_client_leaves_during_the_last_chunk(
    store_url: str, prefix: str
) -> None:
    """The body was whole when its last chunk was handed on: a client gone meanwhile does not
    undo the entry."""
    calls: list[str] = []
    mw = CacheMiddleware(_asgi_app(calls), config=_config(store_url, prefix))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("client disconnected")

    with pytest.raises(OSError):
        await mw(_scope("/api/one"), receive, send)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reply = await client.get("/api/one")
    assert (reply.headers["x-cache"], reply.content) == ("HIT", BODY)
    assert _no_lease_left(store_url, prefix)


async def test_asgi_incomplete_body_is_not_stored_and_frees_the_key(
    store_url: str, prefix: str
) -> None:
    """A client gone before the body was whole: nothing stored, the lease given back at once,
    the next request fills the key again."""
    calls: list[str] = []
    mw = CacheMiddleware(_asgi_app(calls), config=_config(store_url, prefix))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("more_body"):
            raise OSError("client disconnected")

    with pytest.raises(OSError):
        await mw(_scope("/api/parts"), receive, send)
    assert mw.stats.stores == 0
    assert _no_lease_left(store_url, prefix)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        start = time.monotonic()
        again = await client.get("/api/parts")
        assert time.monotonic() - start < QUICK
    assert again.headers["x-cache"] == "MISS"
    assert calls == ["/api/parts", "/api/parts"]


def test_threads_see_the_wsgi_entry_while_the_leader_is_mid_body(prefix: str) -> None:
    """The same with real threads and a server that writes slowly: the leader's thread is
    blocked writing its first chunk while the other threads get HITs."""
    calls: list[str] = []
    app = _flask("memory://" + uuid.uuid4().hex[:12], prefix, calls)
    writing = threading.Event()
    release = threading.Event()

    def slow_server() -> bytes:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/api/plain",
            "HTTP_HOST": "localhost",
            "wsgi.url_scheme": "http",
        }
        out = []
        result = app.wsgi_app(environ, lambda status, headers, exc_info=None: None)
        try:
            for chunk in result:
                writing.set()
                release.wait(10)  # the client is slow to take it
                out.append(chunk)
        finally:
            result.close()  # type: ignore[attr-defined]
        return b"".join(out)

    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(slow_server)
        assert writing.wait(QUICK)
        client = app.test_client()
        replies = [client.get("/api/plain") for _ in range(3)]
        assert [r.headers["x-cache"] for r in replies] == ["HIT"] * 3
        release.set()
        assert leader.result(QUICK) == BODY
    assert calls == ["plain"]
