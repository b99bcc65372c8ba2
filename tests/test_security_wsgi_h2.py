"""A GET body over HTTP/2 or HTTP/3 reaching a WSGI app (issue #17, weakness 5, WSGI side).

Those protocols frame a body by the stream: a bridge such as a2wsgi hands it to the WSGI app in
wsgi.input with no CONTENT_LENGTH and no Transfer-Encoding, so the header check cannot see it.
The WSGI adapter reads one byte of such a request's input, puts it back, and bypasses. Proven
through a2wsgi with hand-built HTTP/2 scopes (what an HTTP/2 ASGI server gives) and with a bare
WSGI environ, on the memory store and the real Redis.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from a2wsgi import WSGIMiddleware

from cache_middleware import WSGICacheMiddleware


def _echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers with the body it read: an app that builds its answer from a GET body."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"body=" + body]


def _cached(url: str, prefix: str) -> WSGICacheMiddleware:
    config = {"redis_url": url, "key_prefix": prefix, "routes": {"/echo": {"ttl": 60}}}
    return WSGICacheMiddleware(_echo, config=config)


def _over_asgi(app: Any, version: str, chunks: list[bytes]) -> tuple[dict[str, str], bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": version,
        "method": "GET", "scheme": "https", "path": "/echo", "root_path": "",
        "raw_path": b"/echo", "query_string": b"", "headers": [(b"host", b"shop.example")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 443),
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(WSGIMiddleware(app)(scope, receive, send))  # type: ignore[arg-type]
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest, memory_url: str) -> str:
    if request.param == "memory":
        return memory_url
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.mark.parametrize("version", ["2", "3"])
def test_an_http2_get_body_through_a2wsgi_is_bypassed_and_reaches_the_app_whole(
    store_url: str, prefix: str, version: str
) -> None:
    app = _cached(store_url, prefix)
    headers, body = _over_asgi(app, version, [b"<script>", b"evil()</script>"])
    assert headers["x-cache"] == "BYPASS"
    assert "detail=request-body" in headers["cache-status"]
    assert body == b"body=<script>evil()</script>"  # the peeked byte was put back
    # Nothing was stored: a plain GET is a MISS answered by the app, not the attacker's body.
    headers, body = _over_asgi(app, version, [])
    assert (headers["x-cache"], body) == ("MISS", b"body=")
    headers, body = _over_asgi(app, version, [])
    assert (headers["x-cache"], body) == ("HIT", b"body=")


def test_an_http2_get_without_a_body_is_cached(store_url: str, prefix: str) -> None:
    app = _cached(store_url, prefix)
    assert _over_asgi(app, "2", [])[0]["x-cache"] == "MISS"
    assert _over_asgi(app, "2", [])[0]["x-cache"] == "HIT"


def test_http1_input_is_never_read_by_the_cache(memory_url: str, prefix: str) -> None:
    """HTTP/1.x frames a body by its headers: the cache reads no input (it could block)."""

    class Untouchable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the cache read an HTTP/1.1 request's input")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    cached = WSGICacheMiddleware(
        app, config={"redis_url": memory_url, "key_prefix": prefix, "routes": {"/p": {"ttl": 9}}}
    )
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/p", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "x", "SERVER_PORT": "80",
        "HTTP_HOST": "x", "wsgi.url_scheme": "http", "wsgi.input": Untouchable(),
    }  # fmt: skip
    statuses: list[str] = []
    body = b"".join(cached(environ, lambda status, headers, exc=None: statuses.append(status)))
    assert (statuses, body) == (["200 OK"], b"ok")
