"""A disconnected cache may serve stale (RFC 9111 §4.2.4), in `mode: standard`: an entry past
its freshness, kept within `revalidate_window`, answers in place of an app that cannot be
reached (it raised, or answered 502 or 504), never in place of an answer the app chose (a 500,
a 503), and never when the response forbade stale use. Both adapters, memory and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from werkzeug.test import Client

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from tests.conftest import AdapterClock
from tests.helpers.origin_apps import asgi_origin, wsgi_origin


class Origin:
    def __init__(self, cache_control: str = "max-age=10") -> None:
        self.cache_control = cache_control
        self.fail: int | str | None = None  # a status to answer, "raise", or None: the page
        self.calls = 0

    def answer(self) -> tuple[int, list[tuple[str, str]], bytes]:
        self.calls += 1
        if self.fail == "raise":
            raise ConnectionError("the origin closed the connection")
        if self.fail is not None:
            return int(self.fail), [("Content-Type", "text/plain")], b"failed"
        return 200, [("Cache-Control", self.cache_control)], f"page {self.calls}".encode()


def asgi(config: dict[str, Any], origin: Origin) -> Iterator[Any]:
    app = asgi_origin(lambda scope: origin.answer())
    with TestClient(CacheMiddleware(app, config=config), raise_server_exceptions=False) as c:
        yield lambda: c.get("/s")


def wsgi(config: dict[str, Any], origin: Origin) -> Iterator[Any]:
    app = wsgi_origin(lambda environ: origin.answer())
    client = Client(WSGICacheMiddleware(app, config=config))

    def get() -> Any:
        try:
            return client.get("/s")
        except ConnectionError:
            return None  # the app's error reached the server: no stale answer

    yield get


ADAPTERS = pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])


def standard(store_config: dict[str, Any]) -> dict[str, Any]:
    return {**store_config, "mode": "standard", "routes": {"/s": {}}}


@ADAPTERS
@pytest.mark.parametrize("failure", [502, 504, "raise"])
def test_an_unreachable_app_is_answered_stale(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock, failure: Any
) -> None:
    origin = Origin()
    for get in make(standard(store_config), origin):
        assert get().headers["x-cache"] == "MISS"
        adapter_clock.offset = 30  # 20 s stale, kept within the revalidation window
        origin.fail = failure
        served = get()
        assert served is not None and served.status_code == 200
        assert served.headers["x-cache"] == "STALE"
        assert "detail=disconnected" in served.headers["cache-status"]
        assert served.text == "page 1"


@ADAPTERS
@pytest.mark.parametrize("status", [500, 503])
def test_an_answer_the_app_chose_is_passed_on(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock, status: int
) -> None:
    origin = Origin()
    for get in make(standard(store_config), origin):
        get()
        adapter_clock.offset = 30
        origin.fail = status
        assert get().status_code == status


@ADAPTERS
@pytest.mark.parametrize("forbids", ["must-revalidate", "proxy-revalidate", "s-maxage=10"])
def test_a_response_that_forbids_stale_use_is_never_served_stale(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock, forbids: str
) -> None:
    origin = Origin(f"max-age=10, {forbids}")
    for get in make(standard(store_config), origin):
        get()
        adapter_clock.offset = 30
        origin.fail = 502
        assert get().status_code == 502


@ADAPTERS
def test_a_gateway_route_has_no_disconnected_stale(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    for get in make({**store_config, "routes": {"/s": {"ttl": 10}}}, origin):
        get()
        adapter_clock.offset = 30
        origin.fail = 502
        assert get().status_code == 502
