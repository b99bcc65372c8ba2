"""RFC 9111 §5.2.1 request directives and §4.4 invalidation, through both adapters on the memory
store and the real Redis: `only-if-cached` (504 without the app), `max-stale`, `max-age` and
`min-fresh` (honoured where request no-cache is), unknown methods and `Location` /
`Content-Location` invalidating."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from werkzeug.test import Client

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from tests.conftest import AdapterClock
from tests.helpers.origin_apps import asgi_origin, wsgi_origin


class Origin:
    """The app behind the cache: counts its calls; answers what `answer` says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.status = 200
        self.headers: list[tuple[str, str]] = []

    def record(self, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        self.calls.append((method, path))
        return self.status, list(self.headers), f"{method} {path} #{len(self.calls)}".encode()


Send = Callable[..., Any]


def asgi_client(origin: Origin, config: dict[str, Any]) -> Iterator[Send]:
    app = asgi_origin(lambda scope: origin.record(scope["method"], scope["path"]))
    with TestClient(CacheMiddleware(app, config=config)) as client:
        yield lambda method, path, headers=None: client.request(method, path, headers=headers)


def wsgi_client(origin: Origin, config: dict[str, Any]) -> Iterator[Send]:
    app = wsgi_origin(lambda env: origin.record(env["REQUEST_METHOD"], env["PATH_INFO"]))
    client = Client(WSGICacheMiddleware(app, config=config))
    yield lambda method, path, headers=None: client.open(path, method=method, headers=headers)


@pytest.fixture(params=["asgi", "wsgi"])
def make(request: pytest.FixtureRequest, store_config: dict[str, Any]) -> Iterator[Any]:
    opened: list[Iterator[Send]] = []

    def build(origin: Origin, **settings: Any) -> Send:
        routes = settings.pop("routes", {"/api": {"ttl": 60}})
        config = {**store_config, "routes": routes, **settings}
        factory = asgi_client if request.param == "asgi" else wsgi_client
        made = factory(origin, config)
        opened.append(made)
        return next(made)

    yield build
    for made in opened:
        for _ in made:  # closes the TestClient (lifespan shutdown)
            pass


def x_cache(response: Any) -> str:
    return str(response.headers.get("x-cache"))


def cache_status(response: Any) -> str:
    return str(response.headers.get("cache-status", ""))


# -- only-if-cached (RFC 9111 §5.2.1.7) -----------------------------------------------------------


def test_only_if_cached_without_an_entry_is_a_504_without_the_app(make: Any) -> None:
    origin = Origin()
    send = make(origin)
    response = send("GET", "/api/x", {"Cache-Control": "only-if-cached"})
    assert response.status_code == 504 and origin.calls == []
    assert "detail=only-if-cached" in cache_status(response)


def test_only_if_cached_with_a_fresh_entry_is_a_hit(make: Any) -> None:
    origin = Origin()
    send = make(origin)
    assert x_cache(send("GET", "/api/x")) == "MISS"
    response = send("GET", "/api/x", {"Cache-Control": "only-if-cached"})
    assert response.status_code == 200 and x_cache(response) == "HIT"
    assert len(origin.calls) == 1


# -- max-stale (§5.2.1.2) ------------------------------------------------------------------------


STALE_KEPT = {"/api": {"ttl": 10, "stale_if_error": 300}}  # kept in the store once stale


def test_max_stale_serves_a_stale_entry_it_accepts(make: Any, adapter_clock: AdapterClock) -> None:
    origin = Origin()
    send = make(origin, routes=STALE_KEPT)
    send("GET", "/api/x")
    adapter_clock.offset = 30  # 20 s stale
    served = send("GET", "/api/x", {"Cache-Control": "max-stale=60"})
    assert x_cache(served) == "STALE" and "detail=max-stale" in cache_status(served)
    assert len(origin.calls) == 1
    assert send("GET", "/api/x", {"Cache-Control": "max-stale"}).headers["x-cache"] == "STALE"
    # Staler than it accepts, or no max-stale at all: the app answers.
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "max-stale=5"})) == "MISS"
    assert len(origin.calls) == 2


def test_max_stale_never_serves_a_must_revalidate_response_stale(
    make: Any, adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    origin.headers = [("Cache-Control", "public, max-age=10, must-revalidate")]
    send = make(origin, routes=STALE_KEPT)
    send("GET", "/api/x")
    adapter_clock.offset = 30
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "max-stale"})) == "MISS"


# -- max-age and min-fresh (§5.2.1.1, §5.2.1.3) ---------------------------------------------------


def test_max_age_and_min_fresh_are_honoured_where_request_no_cache_is(
    make: Any, adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    send = make(origin, honor_request_no_cache=True)
    send("GET", "/api/x")
    adapter_clock.offset = 20  # 20 s old, 40 s of freshness left
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "max-age=30"})) == "HIT"
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "max-age=10"})) == "MISS"
    assert len(origin.calls) == 2
    adapter_clock.offset = 40  # the refetched entry is 20 s old, 40 s left
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "min-fresh=30"})) == "HIT"
    assert x_cache(send("GET", "/api/x", {"Cache-Control": "min-fresh=50"})) == "MISS"
    assert len(origin.calls) == 3


def test_max_age_and_min_fresh_cannot_turn_hits_into_app_calls_by_default(
    make: Any, adapter_clock: AdapterClock
) -> None:
    """A gateway shields its app: a client's max-age=1 does not reach it."""
    origin = Origin()
    send = make(origin)
    send("GET", "/api/x")
    adapter_clock.offset = 20
    for value in ("max-age=1", "min-fresh=59"):
        assert x_cache(send("GET", "/api/x", {"Cache-Control": value})) == "HIT"
    assert len(origin.calls) == 1


# -- invalidation: unknown methods, Location, Content-Location (§4.4) ----------------------------


def test_a_method_of_unknown_safety_invalidates(make: Any) -> None:
    origin = Origin()
    send = make(origin)
    send("GET", "/api/x")
    assert x_cache(send("GET", "/api/x")) == "HIT"
    send("M-SEARCH", "/api/x")
    assert x_cache(send("GET", "/api/x")) == "MISS"
    # An error answer changed nothing: nothing is dropped.
    origin.status = 405
    send("BREW", "/api/x")
    origin.status = 200
    assert x_cache(send("GET", "/api/x")) == "HIT"


@pytest.mark.parametrize("safe", ["OPTIONS", "TRACE", "PROPFIND"])
def test_safe_methods_do_not_invalidate(make: Any, safe: str) -> None:
    origin = Origin()
    send = make(origin)
    send("GET", "/api/x")
    send(safe, "/api/x")
    assert x_cache(send("GET", "/api/x")) == "HIT"


@pytest.mark.parametrize("field", ["Location", "Content-Location"])
@pytest.mark.parametrize(
    ("value", "dropped"),
    [
        ("/api/items/7", True),
        ("7", True),  # relative to /api/items/
        ("http://shop.example/api/items/7", True),  # this host
        ("https://SHOP.example/api/items/7", True),
        ("http://evil.example/api/items/7", False),  # another host: not this cache's
        ("http://shop.example:8080/api/items/7", False),  # another port, another origin
        ("/api/items/%37", True),  # decoded as the key's path is
        ("/api/items//7", False),  # non-canonical: never a key
        ("/elsewhere/7", False),  # no route covers it
    ],
)
def test_location_and_content_location_are_invalidated_on_this_host(
    make: Any, field: str, value: str, dropped: bool
) -> None:
    origin = Origin()
    send = make(origin)
    host = {"Host": "shop.example"}
    send("GET", "/api/items/7", host)
    assert x_cache(send("GET", "/api/items/7", host)) == "HIT"
    origin.status, origin.headers = 201, [(field, value)]
    send("POST", "/api/items/", host)
    origin.status, origin.headers = 200, []
    assert x_cache(send("GET", "/api/items/7", host)) == ("MISS" if dropped else "HIT")
