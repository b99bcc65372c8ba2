"""`cache_headers:` (issue #21): which of the cache's informational headers (X-Cache,
X-Cache-Key, X-Cache-TTL, Cache-Status) a cached route's responses carry, globally and per
route. Through Starlette's TestClient (ASGI) and Flask's test client (WSGI), on the memory store
and the real Redis: MISS, HIT (the full path, and the short ways of `_core/held.py`: the memory
store and the near-cache), 304, BYPASS; the policy's STALE answer; config errors, also from
`cache-middleware check`. Age, ETag and Cache-Control are always sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, ConfigError, WSGICacheMiddleware, load_config
from cache_middleware._core.entry import CachedResponse
from cache_middleware._core.policy import CachePolicy, Lookup
from cache_middleware._core.rules import CACHE_HEADERS, Rule
from cache_middleware.cli import main as cli_main
from cache_middleware.config import ALL_CACHE_HEADERS
from cache_middleware.storage.tracking import near_cache_for
from tests.helpers.echo_table import EmptySource

OURS = ("x-cache", "x-cache-key", "x-cache-ttl", "cache-status")
PROTOCOL = ("age", "etag", "cache-control")  # on every HIT, whatever the setting
ROUTES: dict[str, Any] = {"/full": {"ttl": 60}, "/lean": {"ttl": 60}}


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, memory_url: str) -> dict[str, Any]:
    """The config's store and prefix: the memory store, and the real Redis."""
    if request.param == "memory":
        return {"redis_url": memory_url, "key_prefix": "ch"}
    url = request.getfixturevalue("redis_url")
    return {"redis_url": url, "key_prefix": request.getfixturevalue("prefix"), "redis_timeout": 2}


def starlette_app() -> Starlette:
    async def page(request: Request) -> Response:
        headers = {}
        if "nostore" in request.query_params:
            headers["cache-control"] = "no-store"  # a BYPASS decided on the response
        if "theirs" in request.query_params:
            headers["x-cache"] = "HIT from upstream"  # the app's copy: never passed on
        return PlainTextResponse(f"page {request.url.path}", headers=headers)

    return Starlette(
        routes=[Route("/{name}", page, methods=["GET", "HEAD", "POST"])],
    )


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/<name>", methods=["GET", "HEAD", "POST"])
    def page(name: str) -> Any:
        from flask import request

        headers = {}
        if "nostore" in request.args:
            headers["Cache-Control"] = "no-store"
        if "theirs" in request.args:
            headers["X-Cache"] = "HIT from upstream"
        return f"page /{name}", 200, headers

    return app


class Client:
    """Either test client, with the middleware it talks to."""

    def __init__(self, kind: str, config: dict[str, Any]) -> None:
        self.kind = kind
        if kind == "asgi":
            self.mw: Any = CacheMiddleware(starlette_app(), config=config)
            self.http: Any = TestClient(self.mw)
            self.http.__enter__()
        else:
            app = flask_app()
            self.mw = WSGICacheMiddleware(app.wsgi_app, config=config)
            app.wsgi_app = self.mw  # type: ignore[method-assign]
            self.http = app.test_client()

    def get(self, path: str, **headers: str) -> Any:
        return self.http.get(path, headers=headers)

    def post(self, path: str) -> Any:
        return self.http.post(path)

    def close(self) -> None:
        if self.kind == "asgi":
            self.http.__exit__(None, None, None)


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, cache: dict[str, Any]) -> Iterator[Any]:
    made: list[Client] = []

    def build(**extra: Any) -> Client:
        client = Client(kind, {**cache, "routes": ROUTES, **extra})
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def ours(response: Any) -> dict[str, str]:
    """The cache's informational headers a response carries, lower-case names."""
    return {name: response.headers[name] for name in OURS if name in response.headers}


def miss_then_hit(client: Client, path: str) -> tuple[Any, Any]:
    miss = client.get(path)
    hit = client.get(path)
    assert hit.text == miss.text == f"page {path.split('?')[0]}"
    return miss, hit


# -- through the adapters --------------------------------------------------------------------


def test_default_is_all_four(make: Any) -> None:
    client = make()
    miss, hit = miss_then_hit(client, "/full")
    assert set(ours(miss)) == set(OURS)
    assert ours(miss)["x-cache"] == "MISS"
    assert set(ours(hit)) == set(OURS)
    assert ours(hit)["x-cache"] == "HIT"
    bypass = client.get("/full?nostore=1")
    assert ours(bypass) == {
        "x-cache": "BYPASS",
        "cache-status": "cache-middleware; fwd=bypass; detail=no-store",
    }


def test_global_list_chooses_the_headers_of_every_answer(make: Any) -> None:
    client = make(cache_headers=["x-cache", "CACHE-STATUS"])  # any case
    miss, hit = miss_then_hit(client, "/full")
    assert ours(miss) == {
        "x-cache": "MISS",
        "cache-status": "cache-middleware; fwd=uri-miss; stored",
    }
    assert ours(hit) == {"x-cache": "HIT", "cache-status": "cache-middleware; hit; ttl=60"}
    for name in PROTOCOL:
        assert name in hit.headers, name
    # A BYPASS decided on the response (the policy's start_miss) and one decided on the request
    # (the adapter's own bypass: a POST invalidates and is never cached).
    assert ours(client.get("/full?nostore=1")) == {
        "x-cache": "BYPASS",
        "cache-status": "cache-middleware; fwd=bypass; detail=no-store",
    }
    assert ours(client.post("/full")) == {
        "x-cache": "BYPASS",
        "cache-status": "cache-middleware; fwd=bypass; detail=method",
    }


def test_an_empty_global_list_sends_none_of_them(make: Any) -> None:
    client = make(cache_headers=[])
    miss, hit = miss_then_hit(client, "/full")
    assert ours(miss) == {}
    assert ours(hit) == {}
    assert hit.headers["cache-control"] == "public, max-age=60"
    assert hit.headers["age"].isdigit()
    assert hit.headers["etag"].startswith('"')
    # Still a HIT: the app was not called again (the body says which call answered).
    assert client.get("/full").headers["etag"] == hit.headers["etag"]
    assert ours(client.get("/full?nostore=1")) == {}
    assert ours(client.post("/full")) == {}
    # The app's own X-Cache is still dropped: no header may pass for the cache's.
    assert ours(client.get("/full?theirs=1")) == {}
    assert ours(client.get("/full?theirs=1")) == {}


def test_a_304_carries_the_chosen_headers(make: Any) -> None:
    client = make(cache_headers=["X-Cache-TTL"])
    _, hit = miss_then_hit(client, "/full")
    revalidated = client.get("/full", **{"If-None-Match": hit.headers["etag"]})
    assert revalidated.status_code == 304
    assert ours(revalidated) == {"x-cache-ttl": "60"}
    assert "age" in revalidated.headers


def test_a_route_list_replaces_the_global_one(make: Any) -> None:
    routes = {"/full": {"ttl": 60}, "/lean": {"ttl": 60, "cache_headers": []}}
    client = make(routes=routes, cache_headers=["X-Cache", "X-Cache-Key"])
    miss, hit = miss_then_hit(client, "/lean")
    assert ours(miss) == {}
    assert ours(hit) == {}
    assert "age" in hit.headers
    assert ours(client.get("/lean?nostore=1")) == {}
    miss, hit = miss_then_hit(client, "/full")
    assert set(ours(miss)) == set(ours(hit)) == {"x-cache", "x-cache-key"}
    assert ours(hit)["x-cache"] == "HIT"


def test_a_route_may_bring_back_what_the_global_list_leaves_out(make: Any) -> None:
    routes = {"/full": {"ttl": 60, "cache_headers": list(ALL_CACHE_HEADERS)}, "/lean": {"ttl": 60}}
    client = make(routes=routes, cache_headers=[])
    _, hit = miss_then_hit(client, "/full")
    assert set(ours(hit)) == set(OURS)
    assert ours(hit)["x-cache-key"].startswith(client.mw.policy.key_prefix)
    _, hit = miss_then_hit(client, "/lean")
    assert ours(hit) == {}


def test_a_route_list_applies_to_the_adapters_own_bypasses(make: Any) -> None:
    routes = {"/full": {"ttl": 60}, "/lean": {"ttl": 60, "cache_headers": []}}
    client = make(routes=routes)
    assert ours(client.post("/lean")) == {}


def test_expose_key_header_false_is_leaving_x_cache_key_out(make: Any) -> None:
    client = make(expose_key_header=False)
    _, hit = miss_then_hit(client, "/full")
    assert set(ours(hit)) == set(OURS) - {"x-cache-key"}


def test_the_short_way_hit_replays_the_chosen_headers(make: Any, cache: dict[str, Any]) -> None:
    """The HIT of `_core/held.py`, from what the process holds: the memory store itself, or the
    near-cache in front of Redis. Its headers are the policy's memo, built with the route's list."""
    near_config = {} if cache["redis_url"].startswith("memory://") else {"near_cache": {}}
    routes = {"/full": {"ttl": 60}, "/lean": {"ttl": 60, "cache_headers": ["Cache-Status"]}}
    config = {**cache, "routes": routes, **near_config}
    near = None
    if near_config:
        near, stream = near_cache_for(load_config(config))
        assert stream.wait_live(3.0)
    client = make(**config)
    plans: list[str] = []
    plan = client.mw.policy.plan
    client.mw.policy.plan = lambda method, path, *a, **k: (
        plans.append(path) or plan(method, path, *a, **k)
    )
    miss, _ = miss_then_hit(client, "/lean")
    if near is not None:
        # The near-cache keeps a copy from the next read on: one HIT served from it first.
        first = near.hits
        for _ in range(20):
            client.get("/lean")
            if near.hits > first:
                break
        held_before = near.hits
    plans.clear()
    for _ in range(3):
        again = client.get("/lean")
        assert ours(again) == {"cache-status": "cache-middleware; hit; ttl=60"}
        assert "age" in again.headers and "etag" in again.headers
    assert plans == [], "the HITs took the full path, not the short way"
    if near is not None:
        assert near.hits == held_before + 3, "the HITs did not come from the near-cache"
    assert ours(miss) == {"cache-status": "cache-middleware; fwd=uri-miss; stored"}
    assert set(ours(client.get("/full"))) == set(OURS)


# -- the policy: STALE and a BYPASS with or without its rule ----------------------------------


def test_a_stale_answer_carries_the_chosen_headers() -> None:
    rule = Rule("/s", 10, stale_while_revalidate=30, cache_headers=("X-Cache", "Cache-Status"))
    policy = CachePolicy((rule,), key_prefix="p")
    lookup = policy.plan("GET", "/s", "", EmptySource())
    assert isinstance(lookup, Lookup)
    entry = CachedResponse(200, [(b"etag", b'"e"')], b"x", 1000.0, 10, 30, 0)
    _, headers, _ = policy.respond_hit(lookup, entry, 1015.0, stale="stale-while-revalidate")
    names = [name for name, _ in headers]
    assert dict(headers)[b"x-cache"] == b"STALE"
    assert b"fwd=stale" in dict(headers)[b"cache-status"]
    assert b"x-cache-key" not in names and b"x-cache-ttl" not in names
    assert {b"age", b"etag", b"cache-control"} <= set(names)


def test_bypass_headers_follow_the_rule_else_the_global_list() -> None:
    lean = Rule("/lean", 10, cache_headers=())
    policy = CachePolicy((lean,), key_prefix="p", cache_headers=("X-Cache",))
    app = [(b"x-cache", b"theirs"), (b"content-type", b"text/plain")]
    assert policy.bypass_headers(app, "method", lean) == [(b"content-type", b"text/plain")]
    assert policy.bypass_headers(app, "method") == [
        (b"content-type", b"text/plain"),
        (b"x-cache", b"BYPASS"),
    ]


def test_no_key_is_derived_for_a_route_that_does_not_show_it() -> None:
    rule = Rule("/k", 10, cache_headers=("X-Cache",))
    lookup = CachePolicy((rule,), key_prefix="p").plan("GET", "/k", "", EmptySource())
    assert isinstance(lookup, Lookup)
    assert lookup.key_header is None


def test_the_rule_refuses_other_names() -> None:
    with pytest.raises(ValueError, match="not a cache header: age"):
        Rule("/r", 10, cache_headers=("Age",))
    assert Rule("/r", 10).cache_headers == CACHE_HEADERS
    assert {name.lower() for name in ALL_CACHE_HEADERS} == CACHE_HEADERS


# -- configuration ----------------------------------------------------------------------------


def test_config_resolves_each_routes_list() -> None:
    settings = load_config(
        {
            "cache_headers": ["cache-status", "X-CACHE"],
            "routes": {"/a": {"ttl": 1}, "/b": {"ttl": 1, "cache_headers": []}},
        }
    )
    assert settings.cache_headers == ("X-Cache", "Cache-Status")
    assert [r.cache_headers for r in settings.routes] == [("X-Cache", "Cache-Status"), ()]
    assert load_config({}).cache_headers == ALL_CACHE_HEADERS
    assert load_config({"expose_key_header": False}).cache_headers == (
        "X-Cache",
        "X-Cache-TTL",
        "Cache-Status",
    )
    # An explicit `expose_key_header: true` does not stop a route leaving the key out.
    settings = load_config(
        {"expose_key_header": True, "routes": {"/a": {"ttl": 1, "cache_headers": ["X-Cache"]}}}
    )
    assert settings.routes[0].cache_headers == ("X-Cache",)


ALLOWED = "X-Cache, X-Cache-Key, X-Cache-TTL, Cache-Status"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"cache_headers": ["Age"]},
            f"<dict>: cache_headers: 'Age' is not a cache header (allowed: {ALLOWED}; Age, ETag "
            "and Cache-Control are always sent)",
        ),
        (
            {"routes": {"/a": {"ttl": 1, "cache_headers": ["X-Cache", "ETag"]}}},
            f"<dict>: routes./a.cache_headers: 'ETag' is not a cache header (allowed: {ALLOWED}; "
            "Age, ETag and Cache-Control are always sent)",
        ),
        (
            {"cache_headers": ["X-Cache", "x-cache"]},
            "<dict>: cache_headers: lists X-Cache twice",
        ),
        (
            {"cache_headers": "X-Cache"},
            f"<dict>: cache_headers: must be a list of header names among {ALLOWED} ([] for "
            "none), got 'X-Cache'",
        ),
        (
            {"routes": {"/a": {"ttl": 1, "cache_headers": None}}},
            f"<dict>: routes./a.cache_headers: must be a list of header names among {ALLOWED} "
            "([] for none), got None",
        ),
        (
            {"expose_key_header": False, "cache_headers": ["X-Cache-Key"]},
            "<dict>: cache_headers: lists X-Cache-Key, which expose_key_header: false leaves "
            "out; keep one of the two",
        ),
        (
            {
                "expose_key_header": False,
                "routes": {"/api/debug": {"ttl": 1, "cache_headers": ["x-cache-key"]}},
            },
            "<dict>: routes./api/debug.cache_headers: lists X-Cache-Key, which "
            "expose_key_header: false leaves out; keep one of the two",
        ),
        (
            {"expose_key_header": True, "cache_headers": []},
            "<dict>: cache_headers: leaves out X-Cache-Key, which expose_key_header: true asks "
            "for; keep one of the two",
        ),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == message


def test_check_reports_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    path = tmp_path / "cache.yaml"
    path.write_text(
        "expose_key_header: false\nroutes:\n  /api/feed: {ttl: 5, cache_headers: [X-Cache-Key]}\n"
    )
    assert cli_main(["check", str(path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: cache.yaml: routes./api/feed.cache_headers: lists X-Cache-Key, which "
        "expose_key_header: false leaves out; keep one of the two"
    )
    path.write_text("cache_headers: []\nroutes:\n  /api/feed: {ttl: 5, cache_headers: [X-Cache]}\n")
    assert cli_main(["check", str(path)]) == 0
