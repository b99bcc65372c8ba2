"""The request-side defences of docs/security.md (issue #17, weaknesses 1-5 and 9), attacked as
a stranger would: through Starlette's TestClient, Flask's test_client, Flask behind werkzeug's
ProxyFix, a Flask app bridged to ASGI by a2wsgi, and hand-built ASGI scopes (HTTP/2), on the
memory store and the real Redis. Each test fails without its defence: the attacker's input
reaches a later plain request, or one user's answer reaches another.

The real-server half (uvicorn's own parsing of underscored names and absolute-form targets)
is tests/test_security_uvicorn.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from a2wsgi import WSGIMiddleware
from flask import Flask, redirect, request, url_for
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.middleware.proxy_fix import ProxyFix

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.keys import build_key, entry_venue, in_venue, venue_patterns
from cache_middleware._core.rules import path_problem
from tests.helpers.origin_apps import Answer, asgi_origin, wsgi_origin

ROUTES: dict[str, Any] = {
    "/": {"ttl": 60},  # a shared route over everything: the `//api/me` trap
    "/p": {"ttl": 60, "statuses": [200, 301]},
    "/hello": {"ttl": 60},
    "/api/me": {"ttl": 60, "private": True},
    "/s": {"ttl": 60, "ignore_params": ["utm_*"]},
}
EVIL = "evil.example"

# Headers that rebuild the host, prefix, path or method: refused (BYPASS) unless trusted.
REFUSED = [
    "X-Forwarded-Host", "X-Forwarded-Server", "X-Host", "X-Original-Host", "X-Forwarded-Prefix",
    "X-Script-Name", "X-Forwarded-Path", "X-Forwarded-Uri", "X-Original-URL", "X-Original-URI",
    "X-Original-Path", "X-Rewrite-URL", "Forwarded", "X-HTTP-Method-Override",
    "X-Original-Method", "X-Forwarded-Method",
]  # fmt: skip
# Headers that rebuild the scheme or port: keyed, so a load balancer's constant value costs nothing.
KEYED = [
    "X-Forwarded-Proto", "X-Forwarded-Scheme", "X-Forwarded-Port", "X-Forwarded-Ssl",
    "Front-End-Https", "X-Url-Scheme", "X-Forwarded-Protocol",
]  # fmt: skip


def underscored(name: str) -> str:
    return name.replace("-", "_")


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, memory_url: str) -> dict[str, Any]:
    """The config's store and prefix: the memory store, and the real Redis."""
    if request.param == "memory":
        return {"redis_url": memory_url, "key_prefix": "sec"}
    url = request.getfixturevalue("redis_url")
    # A generous timeout: on a loaded machine a 100 ms write may fail open (not stored), and
    # these tests count HITs.
    return {"redis_url": url, "key_prefix": request.getfixturevalue("prefix"), "redis_timeout": 2}


def config(cache: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**cache, "routes": ROUTES, **extra}


# -- the apps -------------------------------------------------------------------------------------


def echo_headers(headers: Any) -> str:
    """What a proxy-aware page leaks: every request header but Host, one per line."""
    return "".join(f"{k}: {v}\n" for k, v in sorted(headers.items()) if k.lower() != "host")


class KeyAuth(AuthenticationBackend):
    """Authenticates from an API key header: an identity with neither Cookie nor
    Authorization, which the cache resolves from scope["user"] all the same."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        key = conn.headers.get("x-api-key")
        return None if key is None else (AuthCredentials(["authenticated"]), SimpleUser(key))


def starlette_app(settings: dict[str, Any]) -> Starlette:
    async def page(request: Request) -> Response:
        # Rails/nginx-style: an https site redirects what it believes is plain http.
        if request.headers.get("x-forwarded-scheme") == "http":
            return RedirectResponse("https://shop.example/p", status_code=301)
        return PlainTextResponse(f"page {request.query_params}\n{echo_headers(request.headers)}")

    async def hello(request: Request) -> Response:
        user = request.user.display_name if request.user.is_authenticated else "stranger"
        public = {"cache-control": "public, max-age=60"} if "public" in request.query_params else {}
        return PlainTextResponse(f"hello {user}", headers=public)

    async def search(request: Request) -> Response:
        return PlainTextResponse(f"results for {request.url.query}")

    async def echo(request: Request) -> Response:
        return PlainTextResponse(f"body={(await request.body())!r}")

    app = Starlette(
        routes=[
            Route("/p", page),
            Route("/hello", hello),
            Route("/s", search),
            Route("/echo", echo, methods=["GET", "HEAD"]),
        ],
        middleware=[Middleware(AuthenticationMiddleware, backend=KeyAuth())],
    )
    return app


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.get("/p")
    def page() -> Any:
        if request.headers.get("X-Forwarded-Scheme") == "http":
            return redirect("https://shop.example/p", 301)
        return f"page {url_for('page', _external=True)}\n{echo_headers(request.headers)}"

    @app.get("/hello")
    def hello() -> Any:
        user = request.environ.get("REMOTE_USER") or "stranger"
        headers = {"Cache-Control": "public, max-age=60"} if "public" in request.args else {}
        return f"hello {user}", 200, headers

    @app.get("/api/me")
    def me() -> Any:
        # Identified by a TLS-terminating proxy's header the cache knows nothing about.
        return f"token-of-{request.headers.get('X-Cert-User', 'nobody')}"

    @app.get("/")
    def home() -> Any:
        return "home"

    @app.get("/s")
    def search() -> Any:
        return f"results for {request.query_string.decode()}"

    return app


def behind_proxy_fix(app: Flask) -> Any:
    """werkzeug's ProxyFix trusting one proxy for every X-Forwarded-* it knows."""
    return ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)


def starlette_client(cache: dict[str, Any]) -> TestClient:
    settings = config(cache)
    return TestClient(CacheMiddleware(starlette_app(settings), config=settings))


def flask_client(cache: dict[str, Any]) -> Any:
    app = flask_app()
    app.wsgi_app = WSGICacheMiddleware(behind_proxy_fix(app), config=config(cache))  # type: ignore[method-assign]
    return app.test_client()


def bridged_client(cache: dict[str, Any]) -> TestClient:
    """Flask (behind ProxyFix) served as ASGI by a2wsgi, the ASGI cache in front."""
    app: Any = WSGIMiddleware(behind_proxy_fix(flask_app()))
    return TestClient(CacheMiddleware(app, config=config(cache)))


_CLIENTS = {"starlette": starlette_client, "flask": flask_client, "a2wsgi": bridged_client}


@pytest.fixture(params=list(_CLIENTS))
def client(request: pytest.FixtureRequest, cache: dict[str, Any]) -> Iterator[Any]:
    """Each way into the cache: the ASGI adapter, the WSGI adapter, and ASGI over a WSGI app."""
    made = _CLIENTS[request.param](cache)
    if isinstance(made, TestClient):
        with made:
            yield made
    else:
        yield made


def x_cache(response: Any) -> str:
    return str(response.headers.get("x-cache"))


def status_detail(response: Any) -> str:
    return str(response.headers.get("cache-status", ""))


# -- 1 and 4: forwarded headers, any spelling -----------------------------------------------------


@pytest.mark.parametrize("spelling", [str, underscored, str.lower])
def test_a_refused_forwarded_header_never_reaches_a_plain_request(
    client: Any, spelling: Any
) -> None:
    for n, name in enumerate(REFUSED):
        sent = spelling(name)
        value = f"host={EVIL}" if name == "Forwarded" else EVIL
        poisoned = client.get(f"/p?n={n}", headers={sent: value})
        assert x_cache(poisoned) == "BYPASS", (sent, poisoned.text)
        assert "untrusted-header" in status_detail(poisoned) or "method-override" in status_detail(
            poisoned
        )
        plain = client.get(f"/p?n={n}")
        assert EVIL not in plain.text, sent
        assert x_cache(plain) == "MISS"


@pytest.mark.parametrize("spelling", [str, underscored])
def test_a_scheme_header_is_keyed_not_refused(client: Any, spelling: Any) -> None:
    for n, name in enumerate(KEYED):
        sent = spelling(name)
        first = client.get(f"/p?n={n}", headers={sent: EVIL})
        assert x_cache(first) == "MISS", sent
        again = client.get(f"/p?n={n}", headers={sent: EVIL})
        assert x_cache(again) == "HIT", sent  # a load balancer's constant value: cached
        plain = client.get(f"/p?n={n}")
        assert x_cache(plain) == "MISS" and EVIL not in plain.text, sent


def test_a_redirect_provoked_by_a_scheme_header_is_not_served_to_others(client: Any) -> None:
    # statuses: [200, 301] on /p: the 301 is storable, but only under its own key.
    provoked = client.get("/p", headers={"X-Forwarded-Scheme": "http"}, follow_redirects=False)
    assert provoked.status_code == 301
    plain = client.get("/p", follow_redirects=False)
    assert plain.status_code == 200


def test_keyed_values_are_exact_not_case_folded(client: Any) -> None:
    client.get("/p?c=1", headers={"X-Forwarded-Proto": "HTTPS"})
    assert x_cache(client.get("/p?c=1", headers={"X-Forwarded-Proto": "https"})) == "MISS"


def test_trusted_headers_lift_the_refusal(cache: dict[str, Any]) -> None:
    settings = config(cache, trusted_headers=["X-Forwarded-Prefix"])
    with TestClient(CacheMiddleware(starlette_app(settings), config=settings)) as client:
        first = client.get("/p", headers={"X-Forwarded-Prefix": "/shop"})
        assert x_cache(first) == "MISS"
        # ... any spelling of it
        assert x_cache(client.get("/p", headers={"X_Forwarded_Prefix": "/shop"})) == "HIT"
        # and no other header
        assert x_cache(client.get("/p", headers={"X-Forwarded-Host": EVIL})) == "BYPASS"


def test_proxy_fix_builds_no_url_from_a_header_it_was_not_keyed_on(cache: dict[str, Any]) -> None:
    client = flask_client(cache)
    attacked = client.get("/p", headers={"X-Forwarded-Host": EVIL})
    assert f"http://{EVIL}/p" in attacked.text  # ProxyFix believed it: the app is exposed
    plain = client.get("/p")
    assert f"http://{EVIL}" not in plain.text and "http://localhost/p" in plain.text
    proto = client.get("/p", headers={"X-Forwarded-Proto": "https"})
    assert "https://localhost/p" in proto.text and x_cache(proto) == "MISS"
    assert "http://localhost/p" in client.get("/p").text


# -- 2: an identity the cache resolves is a credential on a shared route --------------------------


def test_an_authenticated_scope_user_is_not_stored_for_everyone(cache: dict[str, Any]) -> None:
    settings = config(cache)
    with TestClient(CacheMiddleware(starlette_app(settings), config=settings)) as client:
        alice = client.get("/hello", headers={"X-Api-Key": "alice"})
        assert alice.text == "hello alice"
        assert x_cache(alice) == "BYPASS" and "detail=credentials" in status_detail(alice)
        anonymous = client.get("/hello")
        assert anonymous.text == "hello stranger"
        # RFC 9111 §3.5: a response that says `public` may be stored all the same.
        client.get("/hello?public", headers={"X-Api-Key": "alice"})
        assert x_cache(client.get("/hello?public")) == "HIT"


def test_a_scope_user_set_outside_the_cache_is_not_stored_for_everyone(
    cache: dict[str, Any],
) -> None:
    """AuthenticationMiddleware wrapping the cache (the CONTRACT's order): the user is known
    when the request is planned."""
    settings = config(cache)
    inner = CacheMiddleware(starlette_app(settings), config=settings)
    app = AuthenticationMiddleware(inner, backend=KeyAuth())
    with TestClient(app) as client:
        alice = client.get("/hello?n=2", headers={"X-Api-Key": "alice"})
        assert x_cache(alice) == "BYPASS" and "detail=credentials" in status_detail(alice)
        assert client.get("/hello?n=2").text == "hello stranger"


def test_remote_user_is_not_stored_for_everyone(cache: dict[str, Any]) -> None:
    app = flask_app()
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config(cache))  # type: ignore[method-assign]
    client = app.test_client()
    alice = client.get("/hello", environ_overrides={"REMOTE_USER": "alice"})
    assert alice.text == "hello alice" and x_cache(alice) == "BYPASS"
    assert client.get("/hello").text == "hello stranger"


def test_a_user_header_is_not_stored_for_everyone(cache: dict[str, Any]) -> None:
    app = flask_app()

    @app.get("/hello-gw")
    def hello_gw() -> Any:
        return f"hello {request.headers.get('X-User-Id', 'stranger')}"

    settings = config(cache, user_header="X-User-Id")
    settings["routes"] = {**ROUTES, "/hello-gw": {"ttl": 60}}
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=settings)  # type: ignore[method-assign]
    client = app.test_client()
    assert x_cache(client.get("/hello-gw", headers={"X-User-Id": "alice"})) == "BYPASS"
    assert client.get("/hello-gw").text == "hello stranger"


# -- 3: the path the framework routes -------------------------------------------------------------

ODD_PATHS = ["//api/me", "/api//me", "/./api/me", "/x/../api/me", "/api/me/.", "/api\\me"]


@pytest.mark.parametrize("path", ODD_PATHS)
def test_path_problem_names_every_non_canonical_path(path: str) -> None:
    assert path_problem(path) == "path"
    assert path_problem("/api/me") == ""


@pytest.mark.parametrize(
    "target", ["/api%2Fme", "/api%2fme", "/%2e%2e/api/me", "/api%5Cme", "/api/me%00", "http://x/p"]
)
def test_path_problem_names_every_odd_raw_target(target: str) -> None:
    assert path_problem("/api/me", target) == "path"


def test_werkzeug_merged_slashes_never_reach_a_shared_entry(cache: dict[str, Any]) -> None:
    app = flask_app()
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config(cache))  # type: ignore[method-assign]
    client = app.test_client()
    overrides = {"PATH_INFO": "//api/me", "REQUEST_URI": "//api/me", "RAW_URI": "//api/me"}
    alice = client.get("/", headers={"X-Cert-User": "alice"}, environ_overrides=overrides)
    assert alice.text == "token-of-alice"  # werkzeug routed it to the private view
    assert x_cache(alice) == "BYPASS" and "detail=path" in status_detail(alice)
    anonymous = client.get("/", environ_overrides=overrides)
    assert anonymous.text == "token-of-nobody"


@pytest.mark.parametrize("path", ODD_PATHS)
def test_odd_paths_bypass_in_the_wsgi_adapter(cache: dict[str, Any], path: str) -> None:
    app = flask_app()
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config(cache))  # type: ignore[method-assign]
    response = app.test_client().get("/", environ_overrides={"PATH_INFO": path})
    assert "detail=path" in status_detail(response)


def test_an_encoded_slash_in_the_raw_uri_bypasses_in_the_wsgi_adapter(
    cache: dict[str, Any],
) -> None:
    app = flask_app()
    app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=config(cache))  # type: ignore[method-assign]
    response = app.test_client().get(
        "/",
        environ_overrides={
            "PATH_INFO": "/api/me",
            "REQUEST_URI": "/api%2Fme?x=1",
            "RAW_URI": "/api%2Fme?x=1",
        },
    )
    assert "detail=path" in status_detail(response)


def call_asgi(
    app: Any, path: str, *, raw_path: bytes | None = None, http_version: str = "1.1",
    body: list[dict[str, Any]] | None = None, headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request through an ASGI app with a hand-built scope (what a server would give)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": http_version,
        "method": "GET", "scheme": "https", "path": path, "root_path": "",
        "raw_path": path.encode() if raw_path is None else raw_path, "query_string": b"",
        "headers": [(b"host", b"shop.example"), *(headers or [])],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 443),
    }  # fmt: skip
    messages = list(body or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    names = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], names, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("path", ODD_PATHS)
def test_odd_paths_bypass_in_the_asgi_adapter(cache: dict[str, Any], path: str) -> None:
    settings = config(cache)
    app = CacheMiddleware(starlette_app(settings), config=settings)
    _, headers, _ = call_asgi(app, path)
    assert "detail=path" in headers["cache-status"]


def test_a_flask_app_bridged_by_a2wsgi_routes_no_slash_trick_to_a_shared_entry(
    cache: dict[str, Any],
) -> None:
    with bridged_client(cache) as client:
        # In full: httpx would read `//api` as a host.
        alice = client.get("http://testserver//api/me", headers={"X-Cert-User": "alice"})
        assert alice.text == "token-of-alice"
        assert x_cache(alice) == "BYPASS"
        assert client.get("http://testserver//api/me").text == "token-of-nobody"


def test_an_encoded_slash_bypasses_in_the_asgi_adapter(cache: dict[str, Any]) -> None:
    settings = config(cache)
    app = CacheMiddleware(starlette_app(settings), config=settings)
    _, headers, _ = call_asgi(app, "/hello", raw_path=b"/hel%2Flo")
    assert "detail=path" in headers["cache-status"]


# An unsafe method on a non-canonical path: the framework may have run the canonical one.
UNSAFE_ODD = ["//items/1", "/items//1", "/./items/1", "/x/../items/1", "/items\\1"]
ITEM_ROUTES = {"/items": {"ttl": 60}}


def _any_path(request: dict[str, Any]) -> Answer:
    """A framework that normalises before routing (as werkzeug merges `//`): answers any path."""
    method = request.get("method") or request["REQUEST_METHOD"]
    return 200, [("Content-Type", "text/plain")], f"{method} item".encode()


normalising_wsgi_app = wsgi_origin(_any_path)
normalising_asgi_app = asgi_origin(_any_path)


@pytest.mark.parametrize("odd", UNSAFE_ODD)
def test_a_write_to_a_non_canonical_path_invalidates_the_canonical_entry_wsgi(
    cache: dict[str, Any], odd: str
) -> None:
    app = WSGICacheMiddleware(normalising_wsgi_app, config={**cache, "routes": ITEM_ROUTES})
    client = Flask(__name__).test_client()
    client.application.wsgi_app = app  # type: ignore[method-assign]
    assert x_cache(client.get("/items/1")) == "MISS"
    assert x_cache(client.get("/items/1")) == "HIT"
    client.post("/", environ_overrides={"PATH_INFO": odd, "REQUEST_URI": odd})
    assert x_cache(client.get("/items/1")) == "MISS"


@pytest.mark.parametrize("odd", UNSAFE_ODD)
def test_a_write_to_a_non_canonical_path_invalidates_the_canonical_entry_asgi(
    cache: dict[str, Any], odd: str
) -> None:
    app = CacheMiddleware(normalising_asgi_app, config={**cache, "routes": ITEM_ROUTES})

    async def server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """What a server hands over for the odd target (httpx would normalise it away)."""
        if scope["type"] == "http" and scope["method"] == "POST":
            scope = {**scope, "path": odd, "raw_path": odd.encode()}
        await app(scope, receive, send)

    with TestClient(server) as client:
        assert x_cache(client.get("/items/1")) == "MISS"
        assert x_cache(client.get("/items/1")) == "HIT"
        assert client.post("/items/1").status_code == 200
        assert x_cache(client.get("/items/1")) == "MISS"


# -- 5: a GET body over HTTP/2 and HTTP/3 ---------------------------------------------------------


@pytest.mark.parametrize("version", ["2", "3"])
def test_a_get_body_over_http2_is_detected_and_kept_for_the_app(
    cache: dict[str, Any], version: str
) -> None:
    settings = config(cache)
    app = CacheMiddleware(starlette_app(settings), config=settings)
    body = [{"type": "http.request", "body": b"evil", "more_body": False}]
    _, headers, sent = call_asgi(app, "/echo", http_version=version, body=body)
    assert sent == b"body=b'evil'"  # the app read the body the cache peeked at
    assert headers["x-cache"] == "BYPASS" and "detail=request-body" in headers["cache-status"]
    # A body still to come (an empty first frame) is a body too.
    chunks = [
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"evil", "more_body": False},
    ]
    _, headers, sent = call_asgi(app, "/echo", http_version=version, body=chunks)
    assert sent == b"body=b'evil'" and headers["x-cache"] == "BYPASS"
    # Without a body: cached as usual, the plain request never sees the attacker's.
    _, headers, sent = call_asgi(app, "/echo", http_version=version)
    assert headers["x-cache"] == "MISS" and sent == b"body=b''"
    _, headers, sent = call_asgi(app, "/echo", http_version=version)
    assert headers["x-cache"] == "HIT" and sent == b"body=b''"


# -- 9: an ignored parameter never fills the entry ------------------------------------------------


def test_an_ignored_parameter_is_answered_from_the_entry_but_never_fills_it(client: Any) -> None:
    cloaked = client.get("/s?q=rock&utm_content=<script>")
    assert "script" in cloaked.text  # the app read it
    assert x_cache(cloaked) == "BYPASS" and "detail=ignored-param" in status_detail(cloaked)
    plain = client.get("/s?q=rock")
    assert "script" not in plain.text and x_cache(plain) == "MISS"
    # Once the entry exists, tracking parameters are served from it.
    again = client.get("/s?q=rock&utm_source=mail")
    assert x_cache(again) == "HIT" and again.text == plain.text


# -- keys: a query value reading `venue` ----------------------------------------------------------


def test_in_venue_reads_components_in_pairs() -> None:
    p = "pre"
    own = build_key(p, "GET", "/x", [("q", "1")], None, "lisbon")
    assert in_venue(own, "lisbon", p) and entry_venue(own, p) == "lisbon"
    assert in_venue(f"{own}:vary:accept:%-", "lisbon", p)
    # `?a=venue&lisbon=vary`: a venue-less key that holds `:venue:lisbon:vary:`
    cloak = build_key(p, "GET", "/x", [("a", "venue"), ("lisbon", "vary"), ("b", "1")], None, None)
    assert ":venue:lisbon:vary:" in cloak
    assert not in_venue(cloak, "lisbon", p) and entry_venue(cloak, p) is None
    # The exact venue glob matches only keys ending in the venue's pair; the `:vary:` one
    # over-matches, which is why its matches are checked with in_venue.
    assert not cloak.endswith(":venue:lisbon") and venue_patterns(p, "lisbon")[0].endswith(
        ":venue:lisbon"
    )


def test_the_forwarded_segment_cannot_be_posed_by_a_parameter() -> None:
    keyed = build_key("p", "GET", "/x", [], None, None, "http://h", "x-forwarded-proto=https")
    posed = build_key(
        "p", "GET", "/x", [("fwd", "x-forwarded-proto=https")], None, None, "http://h"
    )
    assert keyed != posed and ":%66wd:" in posed
