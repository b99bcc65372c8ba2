"""The ETag a HIT carries is on the MISS too, when the body is known whole in time.

A stored response with no ETag of its own gets one derived from its bytes (`body_etag`). A MISS
sends it as well when its whole body is known before its headers leave: in ASGI, a body sent
in one message; in WSGI, a body with a declared Content-Length (pulled from the app before the
headers go) or handed over as a list. So a client's first copy revalidates: its If-None-Match
gets a 304 from the HIT. A streamed body (several ASGI messages, a WSGI generator with no
length) keeps the old behaviour: no ETag on the MISS, the derived one on every HIT. Checked with
the frameworks' own test clients, over the memory store and the real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, Response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.policy import body_etag

BODY = b"the same bytes for everyone"


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:12]}"
    url: str = request.getfixturevalue("redis_url")
    return url


def _config(url: str, prefix: str) -> dict[str, Any]:
    # Generous: a loaded CI machine must not turn a MISS into a store-unavailable BYPASS.
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "redis_timeout": 1.0,
        "routes": {"/api": {"ttl": 60}},
    }


# -- ASGI (Starlette's TestClient) -----------------------------------------------------------


def _starlette(url: str, prefix: str) -> TestClient:
    async def whole(request: Request) -> PlainTextResponse:
        return PlainTextResponse(BODY)  # one body message

    async def own_etag(request: Request) -> PlainTextResponse:
        return PlainTextResponse(BODY, headers={"ETag": '"v7"'})

    async def streamed(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield BODY[:8]
            yield BODY[8:]

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(
        routes=[
            Route("/api/whole", whole),
            Route("/api/own-etag", own_etag),
            Route("/api/streamed", streamed),
        ]
    )
    app.add_middleware(CacheMiddleware, config=_config(url, prefix))
    return TestClient(app)


def _body(response: Any) -> bytes:
    # httpx and Starlette's TestClient: .content; Flask's test_client: .data
    return response.content if hasattr(response, "content") else response.data  # type: ignore[no-any-return]


def _miss_then_hit(get: Any, path: str) -> tuple[Any, Any]:
    miss = get(path)
    assert _body(miss) == BODY  # read first: a streamed body is stored once it was all read
    hit = get(path)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert _body(hit) == BODY
    return miss, hit


def test_asgi_miss_carries_the_hit_etag(store_url: str, prefix: str) -> None:
    with _starlette(store_url, prefix) as client:
        miss, hit = _miss_then_hit(client.get, "/api/whole")
        assert miss.headers["etag"] == hit.headers["etag"] == body_etag(BODY).decode()
        # The client's first copy revalidates against the HIT.
        again = client.get("/api/whole", headers={"If-None-Match": miss.headers["etag"]})
        assert (again.status_code, again.headers["x-cache"]) == (304, "HIT")
        assert again.headers["etag"] == miss.headers["etag"] and again.content == b""


def test_asgi_app_etag_is_kept_alone(store_url: str, prefix: str) -> None:
    with _starlette(store_url, prefix) as client:
        miss, hit = _miss_then_hit(client.get, "/api/own-etag")
        assert miss.headers.get_list("etag") == hit.headers.get_list("etag") == ['"v7"']


def test_asgi_streamed_miss_keeps_no_etag(store_url: str, prefix: str) -> None:
    """Several body messages: the headers leave before the body is known. No ETag on the MISS
    (as before); the HIT carries the derived one."""
    with _starlette(store_url, prefix) as client:
        miss, hit = _miss_then_hit(client.get, "/api/streamed")
        assert "etag" not in miss.headers
        assert hit.headers["etag"] == body_etag(BODY).decode()


async def test_asgi_bypass_and_head_get_no_etag(prefix: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain")]
        if scope["path"].endswith("cookie"):
            headers.append((b"set-cookie", b"s=1"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    mw = CacheMiddleware(app, config=_config("memory://", prefix))
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        cookie = await client.get("/api/cookie")
        head = await client.head("/api/head")
    assert cookie.headers["x-cache"] == head.headers["x-cache"] == "BYPASS"
    assert "etag" not in cookie.headers and "etag" not in head.headers


# -- WSGI (Flask's test_client) ----------------------------------------------------------------


def _flask(url: str, prefix: str) -> Any:
    app = Flask(__name__)

    @app.get("/api/whole")
    def whole() -> Response:
        return Response(BODY, content_type="text/plain")  # Flask declares the Content-Length

    @app.get("/api/own-etag")
    def own_etag() -> Response:
        return Response(BODY, headers={"ETag": '"v7"'})

    @app.get("/api/chunked-with-length")
    def chunked_with_length() -> Response:
        def chunks() -> Iterator[bytes]:
            yield BODY[:8]
            yield BODY[8:]

        return Response(chunks(), headers={"Content-Length": str(len(BODY))})

    @app.get("/api/streamed")
    def streamed() -> Response:
        def chunks() -> Iterator[bytes]:
            yield BODY[:8]
            yield BODY[8:]

        return Response(chunks(), content_type="text/plain")  # no length: a stream

    app.wsgi_app = WSGICacheMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config=_config(url, prefix)
    )
    return app.test_client()


@pytest.mark.parametrize("path", ["/api/whole", "/api/chunked-with-length"])
def test_wsgi_miss_carries_the_hit_etag(store_url: str, prefix: str, path: str) -> None:
    client = _flask(store_url, prefix)
    miss, hit = _miss_then_hit(client.get, path)
    assert miss.headers["etag"] == hit.headers["etag"] == body_etag(BODY).decode()
    again = client.get(path, headers={"If-None-Match": miss.headers["etag"]})
    assert (again.status_code, again.headers["x-cache"]) == (304, "HIT")
    assert again.headers["etag"] == miss.headers["etag"] and again.data == b""


def test_wsgi_app_etag_is_kept_alone(store_url: str, prefix: str) -> None:
    client = _flask(store_url, prefix)
    miss, hit = _miss_then_hit(client.get, "/api/own-etag")
    assert miss.headers.getlist("etag") == hit.headers.getlist("etag") == ['"v7"']


def test_wsgi_streamed_miss_keeps_no_etag(store_url: str, prefix: str) -> None:
    client = _flask(store_url, prefix)
    miss, hit = _miss_then_hit(client.get, "/api/streamed")
    assert "etag" not in miss.headers
    assert hit.headers["etag"] == body_etag(BODY).decode()


@pytest.mark.parametrize("declared", [True, False])
def test_wsgi_list_body_is_whole_in_time(prefix: str, declared: bool) -> None:
    """A body handed over as a list is in memory: whole before the headers go, with a declared
    length or without."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("Content-Type", "text/plain")]
        if declared:
            headers.append(("Content-Length", str(len(BODY))))
        start_response("200 OK", headers)
        return [BODY[:5], BODY[5:]]

    mw = WSGICacheMiddleware(app, config=_config("memory://", prefix))
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as client:
        miss, hit = _miss_then_hit(client.get, "/api/list")
    assert miss.headers["etag"] == hit.headers["etag"] == body_etag(BODY).decode()


def test_wsgi_bypass_and_head_get_no_etag(prefix: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
        if environ["PATH_INFO"].endswith("cookie"):
            headers.append(("Set-Cookie", "s=1"))
        start_response("200 OK", headers)
        return [BODY]

    mw = WSGICacheMiddleware(app, config=_config("memory://", prefix))
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as client:
        cookie, head = client.get("/api/cookie"), client.head("/api/head")
    assert cookie.headers["x-cache"] == head.headers["x-cache"] == "BYPASS"
    assert "etag" not in cookie.headers and "etag" not in head.headers
