"""The echo table: an app that answers what the request asks for, behind either adapter, on
the memory store and the real Redis (tests/test_rfc9111_freshness.py, test_rfc9111_standard.py).

The app answers `X-Respond-Status` with the headers `X-Respond-Headers` lists (a JSON list of
[name, value]; several lines of one name kept apart). `{now+N}` / `{now-N}` in a value is the
HTTP date N seconds from the adapters' clock (`http_dates`), which the tests move. Test modules
import the fixtures (`clock`, `kind`, `store`, `make`) by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from email.utils import formatdate
from typing import Any

import pytest
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from tests.conftest import AdapterClock as Clock

Headers = tuple[tuple[str, str], ...]
_PLACEHOLDER = re.compile(r"\{now([+-]\d+)\}")


# -- the apps: answer what the request asks for ---------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.count = 0


def _answer(calls: Calls, asked: Mapping[str, str]) -> tuple[int, list[tuple[str, str]], str]:
    calls.count += 1
    status = int(asked.get("x-respond-status", "200"))
    fields = [("content-type", "text/plain")]
    fields += [(str(n), str(v)) for n, v in json.loads(asked.get("x-respond-headers", "[]"))]
    return status, fields, "" if status == 204 else f"call={calls.count}"


def starlette_app(calls: Calls) -> Starlette:
    async def page(request: Request) -> Response:
        status, fields, body = _answer(calls, request.headers)
        response = Response(body, status_code=status)
        # Raw, so that two field lines of one name stay two (a dict would merge them).
        response.raw_headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in fields)
        return response

    return Starlette(routes=[Route("/{path:path}", page)])


def flask_app(calls: Calls) -> Flask:
    app = Flask(__name__)

    @app.route("/<path:path>")
    def page(path: str) -> Any:
        asked = {name.lower(): value for name, value in flask_request.headers.items()}
        status, fields, body = _answer(calls, asked)
        return body, status, fields  # a list: repeated names kept

    return app


@pytest.fixture
def clock(adapter_clock: Clock) -> Clock:
    """The adapters' clock (conftest.py), moved by the rows."""
    return adapter_clock


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, memory_url: str) -> dict[str, Any]:
    """The config's store and prefix: the memory store, and the real Redis."""
    if request.param == "memory":
        return {"redis_url": memory_url, "key_prefix": "fresh"}
    url = request.getfixturevalue("redis_url")
    return {"redis_url": url, "key_prefix": request.getfixturevalue("prefix"), "redis_timeout": 2}


class Client:
    """Either test client, with the middleware it talks to and the app's call count."""

    def __init__(self, kind: str, config: dict[str, Any]) -> None:
        self.kind = kind
        self.calls = Calls()
        if kind == "asgi":
            self.http: Any = TestClient(CacheMiddleware(starlette_app(self.calls), config=config))
            self.http.__enter__()
        else:
            app = flask_app(self.calls)
            app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
            self.http = app.test_client(use_cookies=False)

    def get(self, path: str, headers: Mapping[str, str]) -> Any:
        if self.kind == "asgi":
            self.http.cookies.clear()  # a Set-Cookie answer must not make the next one personal
            return self.http.get(path, headers=dict(headers))
        # Buffered: the body read and the app's iterable closed, as a server does, so a fill
        # lease a BYPASS held is released before the next request.
        return self.http.get(path, headers=dict(headers), buffered=True)

    def body(self, response: Any) -> bytes:
        return bytes(response.content if self.kind == "asgi" else response.data)

    def close(self) -> None:
        if self.kind == "asgi":
            self.http.__exit__(None, None, None)


@pytest.fixture
def make(kind: str, store: dict[str, Any]) -> Iterator[Any]:
    made: list[Client] = []

    def build(config: dict[str, Any]) -> Client:
        client = Client(kind, {**store, **config})
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def http_dates(headers: Headers, now: float) -> list[tuple[str, str]]:
    def fill(value: str) -> str:
        return _PLACEHOLDER.sub(
            lambda m: formatdate(int(now) + int(m.group(1)), usegmt=True), value
        )

    return [(name, fill(value)) for name, value in headers]


def check_fields(response: Any, expected: Mapping[str, Any], where: str) -> None:
    for name, value in expected.items():
        got = response.headers.get(name)
        if isinstance(value, tuple):
            assert got in value, f"{where}: {name}: {got!r} not in {value!r}"
        else:
            assert got == value, f"{where}: {name}: {got!r} != {value!r}"


def check_not_stored(
    client: Client, get: Callable[[], Any], status: int, detail: str, fields: Mapping[str, Any]
) -> None:
    """Twice a BYPASS the app answered, its Cache-Status naming `detail`, with `fields`."""
    for n in (1, 2):
        reply = get()
        assert (reply.status_code, reply.headers["x-cache"], client.calls.count) == (
            status,
            "BYPASS",
            n,
        )
        assert f"detail={detail}" in reply.headers["cache-status"]
        check_fields(reply, fields, "BYPASS")


def check_miss(client: Client, miss: Any, status: int, fields: Mapping[str, Any]) -> None:
    """The first answer: a MISS, the app's first call, with `fields`."""
    assert (miss.status_code, miss.headers["x-cache"], client.calls.count) == (status, "MISS", 1)
    check_fields(miss, fields, "MISS")


def check_hit(client: Client, hit: Any, miss: Any, status: int, fields: Mapping[str, Any]) -> None:
    """A HIT replaying `miss` without calling the app again, with `fields`."""
    assert (hit.status_code, hit.headers["x-cache"], client.calls.count) == (status, "HIT", 1)
    assert client.body(hit) == client.body(miss)
    check_fields(hit, fields, "HIT")


class EmptySource:
    """A `RequestSource` with no headers and no user: a policy's plan of a bare request."""

    def header(self, name: str) -> str | None:
        return None

    def has_any(self, names: frozenset[str]) -> bool:
        return False

    def default_user(self) -> str | None:
        return None

    def native(self) -> object:
        return {}

    def view(self) -> Any:
        raise AssertionError
