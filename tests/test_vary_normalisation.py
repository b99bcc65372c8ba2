"""Vary values compared after normalisation (RFC 9111 §4.1): list whitespace, split field lines
and Accept-Language order and case select one variant; other values stay apart. Through both
adapters on the memory store and the real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.keys import selecting_value


@pytest.mark.parametrize(
    ("name", "a", "b", "same"),
    [
        ("foo", "1, 2", "1,2", True),
        ("foo", "1, 2", " 1 ,2 ,", True),
        ("foo", "1, 2", "2, 1", False),  # order may matter to an unknown field
        ("foo", "A", "a", False),  # so may case
        ("accept-language", "en, de", "de, en", True),
        ("accept-language", "en, de", "eN, De", True),
        ("accept-language", "en, de", " en ,   de", True),
        ("accept-language", "en", "fr", False),
        ("accept-language", "en;q=0.5, de", "de, en; q=0.5", True),
    ],
)
def test_selecting_values(name: str, a: str, b: str, same: bool) -> None:
    assert (selecting_value(name, a) == selecting_value(name, b)) is same


def asgi_send(config: dict[str, Any]) -> Any:
    async def page(request: Request) -> Response:
        return PlainTextResponse("page", headers={"Vary": "Foo, Accept-Language"})

    client = TestClient(CacheMiddleware(Starlette(routes=[Route("/v", page)]), config=config))
    return lambda headers: client.get("/v", headers=headers).headers["x-cache"]


def wsgi_send(config: dict[str, Any]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Vary", "Foo, Accept-Language")])
        return [b"page"]

    client = Client(WSGICacheMiddleware(app, config=config))
    return lambda headers: client.get("/v", headers=headers).headers["X-Cache"]


@pytest.mark.parametrize("make", [asgi_send, wsgi_send], ids=["asgi", "wsgi"])
def test_equivalent_values_share_a_variant(make: Any, store_config: dict[str, Any]) -> None:
    send = make({**store_config, "routes": {"/v": {"ttl": 60}}})
    assert send({"Foo": "1, 2", "Accept-Language": "en, de"}) == "MISS"
    assert send({"Foo": "1, 2", "Accept-Language": "en, de"}) == "HIT"  # learns the Vary
    assert send({"Foo": "1,2", "Accept-Language": "eN ,De"}) == "HIT"
    assert send({"Foo": "1,2", "Accept-Language": "de, en"}) == "HIT"
    assert send({"Foo": "2,1", "Accept-Language": "en, de"}) == "MISS"
    assert send({"Foo": "1, 2", "Accept-Language": "fr"}) == "MISS"
