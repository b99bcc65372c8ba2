"""The admin dashboard in a real headless Chromium (Debian's `chromium`), driven by Playwright.

The page is served over a real uvicorn port and loaded the way an operator would: token typed in,
stats polled, tables sorted, an invalidation dry-run submitted, the cache cleared after a confirm.
Every request the browser makes is recorded (and anything not on 127.0.0.1 is aborted), so the
page is proven to work offline; console errors (CSP violations among them) fail the test.

What is served comes from ONE fixture, `admin_target`: the real `create_admin_app(...)` mounted
at /admin/cache in a Starlette shop app behind a real CacheMiddleware (venue header `X-Venue`) on
the real Redis (a key prefix of its own). Before any page opens, `prime` sends real traffic
through the middleware, from several venues including one named like an XSS payload, and flushes
the middleware's counters into the shared tally; expectations are read from the `GET stats` body
the page received.

Needs `/usr/bin/chromium` (or `CHROMIUM_BIN`) and the `playwright` Python package; browsers are
never downloaded. Missing either, the tests skip with the reason, except when `CI` is set, where
they fail. `UPDATE_DASHBOARD_SCREENSHOT=1` rewrites docs/dashboard.png (1280x900).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from cache_middleware import CacheMiddleware, create_admin_app
from cache_middleware.registry import middlewares_for

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "dashboard.png"
PREFIX = "/admin/cache"
TOKEN = "dashboard-test-token"
XSS_VENUE = "<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WAIT_MS = 5_000


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set: {message}")
    pytest.skip(message)


# --------------------------------------------------------------------------- what is served


@dataclass
class AdminTarget:
    """An ASGI app whose dashboard is at `prefix + "/"`, next to `stats`, `invalidate`, `clear`.

    `GET stats` must list at least one route and a venue named `XSS_VENUE`; `prime`, if given,
    is called with the live origin (e.g. "http://127.0.0.1:41234") before any page is opened,
    to make that traffic through the real middleware.
    """

    app: ASGIApp
    token: str
    prefix: str = PREFIX
    prime: Callable[[str], None] | None = None


# Requests per venue: (path, times), one per round. Uneven, so sorting the tables means something.
ROUNDS = 12
TRAFFIC = {
    "lisbon-chiado": [("/api/products", 12), ("/api/products/1", 9), ("/api/search?q=tea", 5)],
    "porto-ribeira": [("/api/products", 8), ("/api/products/2", 6), ("/api/categories", 4)],
    "madrid-centro": [("/api/products/3", 5), ("/api/search?q=cups", 3), ("/api/cart", 4)],
    XSS_VENUE: [("/api/products", 2), ("/api/categories", 1)],
}


def _real_app(redis_url: str, key_prefix: str) -> tuple[Starlette, dict[str, Any]]:
    """A shop with cached routes, the admin sub-app at PREFIX, behind CacheMiddleware."""
    config: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "venue_header": "X-Venue",
        "routes": {
            "/api/products": {"ttl": 600, "tags": ["products"]},
            "/api/products/{id}": {"ttl": 600, "tags": ["products", "product-{id}"]},
            "/api/categories": {"ttl": 3600},
            "/api/search": {"ttl": 60, "vary_by": ["q"]},
            "/api/cart": {"ttl": 60, "private": True},  # no user here: always a BYPASS
        },
    }
    loop: dict[str, asyncio.AbstractEventLoop] = {}

    async def products(request: Request) -> Response:
        return JSONResponse({"products": [1, 2, 3]}, headers={"Cache-Tag": "catalog"})

    async def product(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["id"]})

    async def categories(request: Request) -> Response:
        return JSONResponse({"categories": ["tea", "cups"]})

    async def search(request: Request) -> Response:
        return JSONResponse({"q": request.query_params.get("q"), "results": []})

    async def cart(request: Request) -> Response:
        return JSONResponse({"items": []})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop["server"] = asyncio.get_running_loop()
        yield
        stores = [admin.state.store, *(mw.store for mw in middlewares_for(key_prefix))]
        for store in {id(s): s for s in stores}.values():
            await store.aclose()

    admin = create_admin_app(config=config, token=TOKEN)
    app = Starlette(
        routes=[
            Route("/api/products", products),
            Route("/api/products/{id}", product),
            Route("/api/categories", categories),
            Route("/api/search", search),
            Route("/api/cart", cart),
            Mount(PREFIX, app=admin),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(CacheMiddleware, config=config)
    app.state.loop = loop
    return app, config


@pytest.fixture(scope="module")
def admin_target(redis_server: str) -> Iterator[AdminTarget]:
    """What the browser is pointed at: the real admin sub-app over real traffic on Redis."""
    key_prefix = f"cmtest:{uuid.uuid4().hex[:12]}"
    app, _ = _real_app(redis_server, key_prefix)

    def flush_to_shared_tally() -> None:
        # Each process adds its counters to `{prefix}:STATS` every 5 s; this one does it now.
        (middleware,) = middlewares_for(key_prefix)
        flush = asyncio.run_coroutine_threadsafe(middleware.flush_stats(), app.state.loop["server"])
        flush.result(timeout=10)

    def prime(origin: str) -> None:
        # Real traffic through the middleware in rounds (MISSes first, then HITs), the hostile
        # venue among it; `GET stats` after each round, as a polling dashboard would, so the
        # admin's history has points to chart.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=origin, timeout=10) as client:
            for round_ in range(ROUNDS):
                for venue, requests in TRAFFIC.items():
                    for target, times in requests:
                        if round_ < times:
                            answer = client.get(target, headers={"X-Venue": venue})
                            assert answer.status_code == 200
                            assert answer.headers["x-cache"] in ("MISS", "HIT", "BYPASS")
                if round_ == 0:
                    flush_to_shared_tally()
                    tally = redis.Redis.from_url(redis_server)
                    try:
                        field = f"venue|{XSS_VENUE}|misses"
                        assert tally.hget(f"{key_prefix}:STATS", field) is not None
                    finally:
                        tally.close()
                assert client.get(f"{PREFIX}/stats", headers=auth).status_code == 200
                time.sleep(0.05)
        flush_to_shared_tally()

    try:
        yield AdminTarget(app=app, token=TOKEN, prime=prime)
    finally:
        client = redis.Redis.from_url(redis_server)
        for key in client.scan_iter(match=f"{key_prefix}:*", count=500):
            client.unlink(key)
        client.close()


# --------------------------------------------------------------------------- server and browser


@pytest.fixture(scope="module")
def origin(admin_target: AdminTarget) -> Iterator[str]:
    """The target on a real uvicorn port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(admin_target.app, log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    if admin_target.prime is not None:
        admin_target.prime(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        _unavailable(f"no Chromium at {executable} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Session:
    page: Any
    origin: str
    token: str
    prefix: str
    requests: list[Any] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    dialogs: list[tuple[str, str]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    confirm_answers: list[bool] = field(default_factory=list)
    expected_console: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.origin}{self.prefix}/"

    def api_requests(self, name: str, method: str = "GET") -> list[Any]:
        path = f"{self.prefix}/{name}"
        return [r for r in self.requests if urlsplit(r.url).path == path and r.method == method]

    def rendered_stats(self) -> dict[str, Any]:
        """The `GET stats` body the page last received (what it must be showing)."""
        done = [r for r in self.api_requests("stats") if r.response() is not None]
        assert done, "the page never received stats"
        data: dict[str, Any] = done[-1].response().json()
        return data

    def connect(self, token: str | None = None) -> None:
        self.page.goto(self.url)
        self.page.fill("#token", self.token if token is None else token)
        self.page.click("#token-save")


@pytest.fixture()
def session(browser: Any, origin: str, admin_target: AdminTarget) -> Iterator[Session]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-US", color_scheme="light"
    )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    s = Session(page=page, origin=origin, token=admin_target.token, prefix=admin_target.prefix)

    def route(route: Any) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            s.blocked.append(route.request.url)
            route.abort()

    def on_dialog(dialog: Any) -> None:
        s.dialogs.append((dialog.type, dialog.message))
        if dialog.type == "confirm" and s.confirm_answers and s.confirm_answers.pop(0):
            dialog.accept()
        else:
            dialog.dismiss()

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            s.console_errors.append(msg.text)

    context.route("**/*", route)
    page.on("request", lambda request: s.requests.append(request))
    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: s.console_errors.append(f"pageerror: {exc}"))
    try:
        yield s
        # Nothing left the machine, no script ran from data, nothing broke the CSP.
        outside = [r.url for r in s.requests if urlsplit(r.url).hostname not in LOCAL_HOSTS]
        assert outside == [] and s.blocked == [], f"requests left localhost: {outside or s.blocked}"
        assert [d for d in s.dialogs if d[0] == "alert"] == []
        errors = [e for e in s.console_errors if not any(x in e for x in s.expected_console)]
        assert errors == []
    finally:
        context.close()


def _expect(target: Any) -> Any:
    from playwright.sync_api import expect

    return expect(target)


def _wait_text(page: Any, selector: str, pattern: str) -> None:
    """Wait (without eval, which the page's CSP forbids) until the element's text matches."""
    _expect(page.locator(selector)).to_have_text(re.compile(pattern), timeout=WAIT_MS)


def _cell_texts(page: Any, table: str, column: int = 0) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        f"{table} tbody tr td:nth-child({column + 1})", "cells => cells.map(c => c.textContent)"
    )
    return texts


# --------------------------------------------------------------------------- tests


def test_dashboard_shows_stats_and_runs_a_dry_run(session: Session) -> None:
    page = session.page
    response = page.goto(session.url)
    assert response is not None and response.status == 200
    headers = response.headers
    assert headers["content-type"].startswith("text/html")
    assert "no-store" in headers.get("cache-control", "")
    assert "default-src 'none'" in headers.get("content-security-policy", "")

    page.fill("#token", session.token)
    page.click("#token-save")
    _wait_text(page, "#updated", r"^Updated")
    stats = session.rendered_stats()

    # The token went as a bearer header, lives in sessionStorage only, never in the URL.
    sent = session.api_requests("stats")
    assert sent and sent[0].headers.get("authorization") == f"Bearer {session.token}"
    assert page.evaluate("sessionStorage.getItem('cache-admin-token')") == session.token
    assert page.evaluate("localStorage.length") == 0
    assert session.token not in page.url
    assert page.is_hidden("#auth-msg")

    # Chart: an SVG polyline with one vertex and one marker per point.
    n_points = int(page.get_attribute("#chart", "data-points") or 0)
    expected = min(60, len(stats.get("history") or [])) or 1
    assert n_points == expected
    vertices = (page.get_attribute("#chart polyline", "points") or "").split()
    assert len(vertices) == n_points
    assert page.locator("#chart circle").count() == n_points

    # Headline figures.
    assert page.text_content('[data-stat="hits"]') == f"{stats['hits']:,}"
    assert page.text_content('[data-stat="hit_ratio"]') == f"{stats['hit_ratio'] * 100:.1f}%"
    breaker = stats["backend"]["breaker"] or "n/a"
    assert page.text_content('[data-stat="breaker"]') == breaker

    # Routes table, sorted by hits (desc) first, then by clicking headers.
    routes = stats["routes"]
    by_hits = sorted(routes, key=lambda r: (-routes[r]["hits"], r))
    assert _cell_texts(page, "#routes-table") == by_hits
    page.click("#routes-table th[data-key=name] button")
    assert _cell_texts(page, "#routes-table") == sorted(routes)
    assert page.get_attribute("#routes-table th[data-key=name]", "aria-sort") == "ascending"
    page.click("#routes-table th[data-key=name] button")
    assert _cell_texts(page, "#routes-table") == sorted(routes, reverse=True)
    page.click("#routes-table th[data-key=misses] button")
    by_misses = sorted(routes, key=lambda r: (-routes[r]["misses"], r))
    assert _cell_texts(page, "#routes-table") == by_misses

    # Both tables: the same figures after the row's name, one cell per header.
    figures = ["Hits", "Misses", "Hit ratio", "Stores", "Bypasses"]
    for table, name in (("#routes-table", "Route"), ("#venues-table", "Venue")):
        heads = page.eval_on_selector_all(f"{table} th", "ths => ths.map(t => t.textContent)")
        assert heads == [name, *figures]
        cells = page.eval_on_selector_all(
            f"{table} tbody tr", "rows => rows.map(r => r.cells.length)"
        )
        assert cells and set(cells) == {len(heads)}
    page.click("#venues-table th[data-key=name] button")
    assert page.get_attribute("#venues-table th[data-key=name]", "aria-sort") == "ascending"
    assert _cell_texts(page, "#venues-table") == sorted(stats["venues"])

    # Venues: a name from a request header is text, never markup.
    assert page.is_visible("#venues-section")
    assert XSS_VENUE in stats["venues"]
    assert XSS_VENUE in _cell_texts(page, "#venues-table")
    assert page.locator("img").count() == 0
    assert page.evaluate("document.body.innerHTML.includes('<img')") is False

    # Invalidate form, dry run.
    page.fill("#inv-items", "/api/products\n\n  /api/search  \n")
    page.select_option("#inv-kind", "paths")
    assert page.is_checked("#inv-dry")
    with page.expect_request(lambda r: r.url.endswith(f"{session.prefix}/invalidate")) as info:
        page.click("#inv-submit")
    posted = info.value
    assert posted.method == "POST"
    assert posted.headers.get("authorization") == f"Bearer {session.token}"
    assert json.loads(posted.post_data or "null") == {
        "paths": ["/api/products", "/api/search"],
        "dry_run": True,
    }
    _wait_text(page, "#inv-status", r"^Dry run:")
    result = posted.response().json()
    assert result["success"] is True and result["dry_run"] is True
    status = page.text_content("#inv-status") or ""
    noun = "entry" if result["invalidated"] == 1 else "entries"
    assert f"Dry run: {result['invalidated']:,} {noun} would be invalidated" in status

    shot = page.screenshot(path=None, full_page=False)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DASHBOARD_SCREENSHOT"):
        page.fill("#inv-items", "/api/products\n/api/search")
        page.click("#routes-table th[data-key=hits] button")
        page.evaluate("window.scrollTo(0, 0)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=False)


def test_missing_and_wrong_token_are_reported(session: Session) -> None:
    page = session.page
    page.goto(session.url)
    assert "token required" in (page.text_content("#auth-msg") or "").lower()
    assert session.api_requests("stats") == []  # nothing is asked without a token
    assert _cell_texts(page, "#routes-table") == ["No data yet"]
    assert page.get_attribute("#routes-table td.empty", "colspan") == "6"  # the whole row

    session.connect(token="not-the-token")
    _wait_text(page, "#auth-msg", r"invalid")
    sent = session.api_requests("stats")
    assert len(sent) == 1 and sent[0].headers.get("authorization") == "Bearer not-the-token"
    assert sent[0].response().status == 401
    assert page.text_content('[data-stat="hits"]') == "—"
    # The browser logs the 401 response itself; that console line is expected here.
    session.expected_console.append("status of 401")

    session.connect()
    _wait_text(page, "#updated", r"^Updated")
    assert page.is_hidden("#auth-msg")


def test_stats_are_polled_every_five_seconds(session: Session) -> None:
    page = session.page
    page.clock.install()
    session.connect()
    _wait_text(page, "#updated", r"^Updated")
    assert len(session.api_requests("stats")) == 1
    page.clock.run_for(4_000)
    assert len(session.api_requests("stats")) == 1
    with page.expect_request(lambda r: r.url.endswith(f"{session.prefix}/stats")):
        page.clock.run_for(1_500)
    _expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")


def test_clear_asks_for_confirmation(session: Session) -> None:
    page = session.page
    session.connect()
    _wait_text(page, "#updated", r"^Updated")

    session.confirm_answers.append(False)
    page.click("#clear-btn")
    _wait_text(page, "#clear-status", r".")
    assert page.text_content("#clear-status") == "Clear cancelled."
    assert session.api_requests("clear", "POST") == []

    session.confirm_answers.append(True)
    with page.expect_request(lambda r: r.url.endswith(f"{session.prefix}/clear")) as info:
        page.click("#clear-btn")
    assert json.loads(info.value.post_data or "null") == {"confirm": True}
    assert info.value.headers.get("authorization") == f"Bearer {session.token}"
    _wait_text(page, "#clear-status", r"^Cache cleared")
    assert [d[0] for d in session.dialogs] == ["confirm", "confirm"]
