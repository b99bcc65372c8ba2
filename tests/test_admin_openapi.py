"""The admin API against its own OpenAPI document: schemathesis drives the live app.

What runs is the real thing: `create_admin_app` mounted at /admin/cache in a Starlette app, next
to a few cached routes, behind `CacheMiddleware` (added the README's way), on a real Redis,
served by uvicorn on a real port. The document is the one the app serves at /openapi.json.
For every operation schemathesis generates many requests that fit the document (positive) and,
for the operations with a body, many that do not (negative), all with a valid bearer token, and
checks every answer: never a 5xx; the status, content type, headers and body are the ones the
document lists; valid input is accepted and invalid input refused; a request without the token
is refused; an undocumented method gets a 405. A venue token is fuzzed the same way, and the
answers with Redis down (503) and with no middleware in the process (409) are checked too.

The Redis is a redis-server of this module's own (`tests/redis_process.py`), not the shared
127.0.0.1:6379: a whole-cache token's `patterns` and `keys` are Redis globs and key names that
are *not* confined to the key prefix (`{"patterns": ["*"]}` deletes every key in the database),
and the fuzzer generates exactly such inputs, so a unique prefix would not fence them in.

docs/openapi.json is the document as JSON; `UPDATE_OPENAPI_DOC=1` rewrites it.
`ADMIN_FUZZ_EXAMPLES` (default 100) sets the generated requests per operation and mode.
Needs schemathesis >= 4 (its `as_strategy` / `call_and_validate` API).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from hypothesis import HealthCheck, given, settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from cache_middleware import CacheMiddleware, create_admin_app
from cache_middleware.admin.openapi import OPENAPI
from cache_middleware.admin.operations import check_glob
from cache_middleware.admin.requests import MAX_LENGTH
from cache_middleware.registry import middlewares_for

from .conftest import _free_port
from .redis_process import RedisProcess

try:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        negative_data_rejection,
        positive_data_acceptance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
        unsupported_method,
    )
except ImportError as exc:  # schemathesis 3.x has another API
    if os.environ.get("CI"):
        raise
    pytest.skip(f"schemathesis >= 4 is needed: {exc}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "openapi.json"
MOUNT = "/admin/cache"
TOKEN = "openapi-test-token"
VENUE = "v1"
VENUE_TOKEN = "openapi-test-venue-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VENUE_AUTH = {"Authorization": f"Bearer {VENUE_TOKEN}"}
EXAMPLES = int(os.environ.get("ADMIN_FUZZ_EXAMPLES", "100"))

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
    unsupported_method,
]
# What an answer to a request built by hand (not generated) is judged on.
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

OPERATIONS = [
    (path, method.upper(), "requestBody" in operation)
    for path, item in OPENAPI["paths"].items()
    for method, operation in item.items()
]
FUZZED = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode}")
    for path, method, has_body in OPERATIONS
    for mode in ("positive", "negative")
    if mode == "positive" or has_body  # a request without a body or parameters has no wrong form
]

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def render_document() -> str:
    return json.dumps(OPENAPI, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- the live app


def _config(redis_url: str, prefix: str) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "venue_header": "X-Venue",
        "routes": {
            "/api/items": {"ttl": 300, "tags": ["items"]},
            "/api/items/{id}": {"ttl": 300, "tags": ["items", "item-{id}"]},
            "/api/search": {"ttl": 60, "vary_by": ["q"]},
        },
    }


def build_app(redis_url: str, prefix: str, *, middleware: bool = True) -> Starlette:
    """Cached routes and the admin sub-app, behind CacheMiddleware unless `middleware=False`."""
    config = _config(redis_url, prefix)
    admin = create_admin_app(config=config, token=TOKEN, venue_tokens={VENUE: VENUE_TOKEN})

    async def items(request: Request) -> Response:
        return JSONResponse({"items": [1, 2, 3]}, headers={"Cache-Tag": "catalog, front-page"})

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    async def search(request: Request) -> Response:
        return JSONResponse({"q": request.query_params.get("q")})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        stores = [admin.state.store, *(mw.store for mw in middlewares_for(prefix))]
        for store in {id(s): s for s in stores}.values():
            await store.aclose()

    app = Starlette(
        routes=[
            Route("/api/items", items),
            Route("/api/items/{id}", item),
            Route("/api/search", search),
            Mount(MOUNT, app=admin),
        ],
        lifespan=lifespan,
    )
    if middleware:
        app.add_middleware(CacheMiddleware, config=config)
    return app


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """`app` on a real uvicorn port, in a thread; yields the origin."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class Live:
    origin: str
    prefix: str
    schema: Any
    http: requests.Session

    def prime(self) -> None:
        """Real traffic, twice over (MISS then HIT), so there are entries, indexes and tags."""
        for _ in range(2):
            for venue in (None, VENUE, "v2"):
                headers = {"X-Venue": venue} if venue else {}
                for target in ("/api/items", "/api/items/1", "/api/items/2", "/api/search?q=a"):
                    answer = self.http.get(self.origin + target, headers=headers, timeout=10)
                    assert answer.status_code == 200


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisProcess()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    with serve(build_app(redis_url, prefix)) as origin, requests.Session() as http:
        schema = schemathesis.openapi.from_url(f"{origin}{MOUNT}/openapi.json", headers=AUTH)
        yield Live(origin, prefix, schema, http)


@pytest.fixture(scope="module")
def without_redis() -> Iterator[Live]:
    """The admin app over a Redis that does not answer, and no CacheMiddleware in front."""
    prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    app = build_app(f"redis://127.0.0.1:{_free_port()}/0", prefix, middleware=False)
    with serve(app) as origin, requests.Session() as http:
        schema = schemathesis.openapi.from_url(f"{origin}{MOUNT}/openapi.json", headers=AUTH)
        yield Live(origin, prefix, schema, http)


# --------------------------------------------------------------------------- the document


def test_served_document_is_the_module_and_the_docs_copy(live: Live) -> None:
    answer = live.http.get(f"{live.origin}{MOUNT}/openapi.json", headers=AUTH, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json() == OPENAPI
    refused = live.http.get(f"{live.origin}{MOUNT}/openapi.json", timeout=10)
    assert refused.status_code == 401

    if os.environ.get("UPDATE_OPENAPI_DOC"):
        DOC.write_text(render_document(), encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == render_document(), (
        "docs/openapi.json differs from cache_middleware/admin/openapi.py: rerun this test "
        "with UPDATE_OPENAPI_DOC=1"
    )


def test_document_lists_every_route_of_the_app() -> None:
    admin = create_admin_app(config={"redis_url": "memory://openapi-routes"}, token=TOKEN)
    served = {
        (route.path, method)
        for route in admin.routes
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
    }
    documented = {(path, method) for path, method, _ in OPERATIONS}
    assert served == documented


# --------------------------------------------------------------------------- fuzzing


def _total_items(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    return sum(len(v) for k, v in body.items() if k != "dry_run" and isinstance(v, list))


def _strategy(live: Live, path: str, method: str, mode: str, headers: dict[str, str]) -> Any:
    operation = live.schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode), headers=headers)
    if path == "/invalidate" and mode == "positive":
        # The one rule JSON Schema cannot state (it is in the operation's description): at
        # most 100 items in all, over the four lists.
        strategy = strategy.filter(lambda case: _total_items(case.body) <= 100)
        # Nor can it state the cache's namespaces (a whole-cache token touches only keys under
        # the key prefix or a declared manager namespace) or the glob's wildcard budget: the
        # generated keys and patterns are put under the prefix, and over-budget globs dropped.
        strategy = strategy.map(lambda case: _under_prefix(case, live.prefix)).filter(
            _within_glob_budget
        )
    return strategy


def _under_prefix(case: Any, prefix: str) -> Any:
    if isinstance(case.body, dict):
        for name in ("keys", "patterns"):
            if isinstance(case.body.get(name), list):
                case.body[name] = [f"{prefix}:{item}" for item in case.body[name]]
    return case


def _within_glob_budget(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    items = [*body.get("keys", []), *body.get("patterns", [])]
    if any(len(item) > MAX_LENGTH for item in items):
        return False
    try:
        for pattern in body.get("patterns", []):
            check_glob(pattern)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("path", "method", "mode"), FUZZED)
def test_every_answer_conforms(live: Live, path: str, method: str, mode: str) -> None:
    live.prime()
    statuses: set[int] = set()

    @FUZZ_SETTINGS
    @given(case=_strategy(live, path, method, mode, AUTH))
    def run(case: Any) -> None:
        answer = case.call_and_validate(session=live.http, checks=CHECKS)
        statuses.add(answer.status_code)

    run()
    # Valid input is done; invalid input is a 400 (nothing about it reaches the store).
    assert statuses <= ({200} if mode == "positive" else {400}), statuses


@pytest.mark.parametrize(
    ("path", "method"),
    [
        pytest.param(path, method, id=f"{method} {path}")
        for path, method, _ in OPERATIONS
        if path in ("/invalidate", "/warm", "/clear", "/optimize", "/stats", "/metrics")
    ],
)
def test_every_answer_to_a_venue_token_conforms(live: Live, path: str, method: str) -> None:
    live.prime()
    statuses: set[int] = set()

    @settings(FUZZ_SETTINGS, max_examples=max(10, EXAMPLES // 3))
    @given(case=_strategy(live, path, method, "positive", VENUE_AUTH))
    def run(case: Any) -> None:
        answer = case.call_and_validate(session=live.http, checks=CHECKS)
        statuses.add(answer.status_code)
        if path == "/stats":
            assert set(answer.json()["venues"]) <= {VENUE}
            assert answer.json()["routes"] == {}

    run()
    if path in ("/optimize", "/metrics"):  # the whole cache only
        assert statuses == {403}
    elif path != "/invalidate":  # a pattern or key outside the venue is a 403
        assert statuses == {200}


def _call(live: Live, path: str, method: str, body: Any = None) -> Any:
    """One request built by hand, its answer judged against the document (a 503 is a
    documented answer here, so not_a_server_error is left out; the caller checks the status)."""
    operation = live.schema[path][method]
    if body is None:
        case = operation.Case(headers=dict(AUTH))
    else:
        case = operation.Case(headers=dict(AUTH), body=body, media_type="application/json")
    return case.call_and_validate(session=live.http, checks=CONFORMANCE[1:])


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "error"),
    [
        ("/invalidate", "POST", {"tags": ["items"]}, 503, "cache store unavailable"),
        ("/invalidate", "POST", {"paths": ["/a"], "dry_run": True}, 503, "cache store"),
        ("/clear", "POST", {"confirm": True}, 503, "cache store unavailable"),
        ("/optimize", "POST", None, 503, "cache store unavailable"),
        ("/stats", "GET", None, 503, "cache store unavailable"),
        ("/metrics", "GET", None, 503, "cache store unavailable"),
        ("/warm", "POST", {"paths": ["/api/items"]}, 409, "no CacheMiddleware"),
        ("/", "GET", None, 200, None),
        ("/openapi.json", "GET", None, 200, None),
    ],
)
def test_answers_without_redis_or_middleware(
    without_redis: Live, path: str, method: str, body: Any, status: int, error: str | None
) -> None:
    answer = _call(without_redis, path, method, body)
    assert answer.status_code == status
    if error is not None:
        assert answer.json()["success"] is False
        assert error in answer.json()["error"]


# --------------------------------------------------------------------------- hand-made bodies

# Bodies a fuzzer rarely builds: each gets a documented answer (a 400), never a 500.
HOSTILE = [
    pytest.param("/invalidate", b'{"keys": ["\\ud800"]}', id="key-surrogate"),
    pytest.param("/invalidate", b'{"patterns": ["\\ud800*"]}', id="pattern-surrogate"),
    pytest.param(
        "/invalidate",
        b'{"patterns": ["\\ud800*"], "dry_run": true}',
        id="pattern-surrogate-dry-run",
    ),
    pytest.param("/warm", b'{"paths": ["/\\ud800"]}', id="warm-surrogate"),
    pytest.param("/invalidate", b"[" * 60_000, id="invalidate-nesting"),
    pytest.param("/warm", b"[" * 60_000, id="warm-nesting"),
    pytest.param("/clear", b"[" * 60_000, id="clear-nesting"),
    pytest.param("/invalidate", b'{"tags": ["\\ud800"]}', id="tag-surrogate"),
    pytest.param("/invalidate", b'{"paths": ["/\\ud800"]}', id="path-surrogate"),
    pytest.param("/invalidate", b"\xff\xfe{}", id="not-utf8"),
    pytest.param("/invalidate", b'{"keys": ["x"]}' + b" " * 70_000, id="over-64k"),
    pytest.param("/invalidate", b'{"keys": ["x"], "dry_run": NaN}', id="nan"),
    pytest.param("/invalidate", b'{"keys": ["x"], "keys": 1}', id="duplicate-name"),
    pytest.param("/invalidate", b'{"keys": [' + b'"1",' * 100 + b'"1"]}', id="101-items"),
    pytest.param("/warm", b'{"paths": ["/' + b"9" * 255 + b'"]}', id="longest-path"),
    pytest.param("/clear", b'{"confirm": 1}', id="confirm-1"),
    pytest.param("/clear", b"", id="empty"),
]


@pytest.mark.parametrize(("path", "body"), HOSTILE)
def test_hand_made_bodies_get_a_documented_answer(live: Live, path: str, body: bytes) -> None:
    answer = live.http.post(
        f"{live.origin}{MOUNT}{path}",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    # A 500 is logged by uvicorn's thread after the answer left; one more request is served
    # only once that is done. (On Python 3.11, formatting a traceback in two threads at once
    # can break pytest's own report: the `ast` module's recursion counter is shared.)
    live.http.get(f"{live.origin}/api/items", timeout=10)
    documented = {int(s) for s in OPENAPI["paths"][path]["post"]["responses"]}
    assert answer.status_code in documented - {401, 403, 503}, (answer.status_code, answer.text)
    if answer.status_code != 200:
        assert answer.json()["success"] is False and answer.json()["error"]
