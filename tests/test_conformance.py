"""RFC 9111 shared-cache conformance: one table, one row per rule, both adapters, every backend.

In the spirit of the public cache-tests suite (cache-tests.fyi) and hishel's per-clause tests.
Each `Row` cites the clause it checks, the route configuration it runs under, the request it
sends, the response the app gives, and the outcome expected:

* ``stored``: the response is a MISS, and the identical request next is a HIT that does not
  call the app (with `prime_*`, a first request is stored before, under another key, and is
  still a HIT at the end: the two requests do not share an entry);
* ``not-stored``: the response goes out as BYPASS, and so does the identical request next,
  which calls the app again; a plain request afterwards finds nothing stored;
* ``bypass``: a plain request is stored first; the row's request is not even looked up (BYPASS,
  the app is called), nor stored (the plain request is still the first one's HIT);
* ``hit``: a plain request is stored first; the row's request is answered from it (200);
* ``304``: a plain request is stored first; the row's conditional request gets a 304 from it;
* ``stale``: a plain request is stored, the clock passes its freshness, and the row's request
  is answered from the stale entry (X-Cache STALE); a stale-while-revalidate refresh calls the
  app exactly once in the background;
* ``not-stale``: as ``stale``, but the stale entry must not be used: the app answers;
* ``refreshed``: request no-cache honoured: the app answers and its response replaces the entry;
* ``invalidates`` / ``keeps``: an unsafe method drops the path's GET entries (all query
  variants), or leaves them.

The test app answers what the request asks for: `X-Respond-Status`, `X-Respond-Headers` (a
JSON list of [name, value]) and optionally `X-Respond-Body` / `X-Respond-Error: raise`. Request
headers are used because the query string is part of the key. Time is moved by replacing the
adapters' view of `time.time` (the stores keep real time), so no row sleeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time as real_time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from cache_middleware import CacheMiddleware, ConfigError, WSGICacheMiddleware, load_config
from tests.conftest import AdapterClock as Clock

USER = "alice-7f3a9c"  # a private route's user id: must never appear in Cache-Status
NOW = real_time.time()
DATE_NOW = formatdate(NOW, usegmt=True)
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
BEFORE_LM = "Tue, 20 Oct 2015 07:28:00 GMT"
AFTER_LM = "Thu, 22 Oct 2015 07:28:00 GMT"
ALL_STATUSES = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]

Headers = tuple[tuple[str, str], ...]


# -- the app: answers what the request asks for ---------------------------------------------------


class AppState:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()  # a WSGI refresh runs on another thread


def respond(
    state: AppState, method: str, path: str, query: str, headers: Mapping[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    with state.lock:
        state.calls += 1
        call = state.calls
    if headers.get("x-respond-error") == "raise":
        raise RuntimeError("the app failed")
    status = int(headers.get("x-respond-status", "200"))
    out = [("content-type", "text/plain")]
    out += [(str(n), str(v)) for n, v in json.loads(headers.get("x-respond-headers", "[]"))]
    if status in (204, 304):
        body = b""
    elif "x-respond-body" in headers:
        body = headers["x-respond-body"].encode()
    else:
        body = f"call={call} {method} {path}?{query}\n".encode()
    return status, out, body


def make_asgi_app(state: AppState) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, out, body = respond(
            state, scope["method"], scope["path"], scope["query_string"].decode(), headers
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def make_wsgi_app(state: AppState) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        status, out, body = respond(
            state,
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ.get("QUERY_STRING", ""),
            headers,
        )
        start_response(f"{status} Whatever", out)

        def stream() -> Iterator[bytes]:
            yield body

        return stream()

    return app


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("x-cache")

    @property
    def call(self) -> int | None:
        text = self.body.decode("latin-1")
        return int(text.split("call=")[1].split()[0]) if text.startswith("call=") else None


class Client:
    """One middleware (ASGI or WSGI) around the test app, and an httpx client for it."""

    def __init__(self, kind: str, config: dict[str, Any], backend: dict[str, Any]) -> None:
        self.kind = kind
        self.state = AppState()
        config = {"redis_url": backend["url"], **config}
        if kind == "asgi":
            middleware: Any = CacheMiddleware(
                make_asgi_app(self.state), config=config, store=backend["async_store"]
            )
            self.async_client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=middleware), base_url="http://t"
            )
        else:
            middleware = WSGICacheMiddleware(
                make_wsgi_app(self.state), config=config, store=backend["sync_store"]
            )
            self.client = httpx.Client(
                transport=httpx.WSGITransport(app=middleware), base_url="http://t"
            )

    @property
    def calls(self) -> int:
        return self.state.calls

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        if self.kind == "asgi":
            self.async_client.cookies.clear()
            response = await self.async_client.request(
                method, target, headers=dict(headers), content=body or None
            )
        else:
            self.client.cookies.clear()
            response = self.client.request(
                method, target, headers=dict(headers), content=body or None
            )
        return Reply(response.status_code, response.headers, response.content)

    async def wait_calls(self, n: int, timeout: float = 3.0) -> None:
        """Wait for a background refresh (an asyncio task or a thread) to call the app."""
        deadline = real_time.monotonic() + timeout
        while self.calls < n and real_time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        if self.kind == "asgi":
            await self.async_client.aclose()
        else:
            self.client.close()


@pytest.fixture
def clock(adapter_clock: Clock) -> Clock:
    """The adapters' clock (conftest.py), moved by the rows."""
    return adapter_clock


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    clause: str
    expect: str
    status: int = 200  # what the app answers (X-Respond-Status)
    headers: Headers = ()  # what the app adds to its response (X-Respond-Headers)
    request: Mapping[str, str] = field(default_factory=dict)  # the row's own request headers
    route: Mapping[str, Any] = field(default_factory=dict)  # overrides of {"ttl": 60}
    settings: Mapping[str, Any] = field(default_factory=dict)  # top-level config overrides
    method: str = "GET"
    target: str = "/c/x"
    body: bytes = b""  # the row's request body
    prime_target: str | None = None  # the request stored first (stored/bypass/hit/304/stale)
    prime_request: Mapping[str, str] | None = None
    advance: float = 0.0  # seconds the clock moves between the prime and the row's request
    expire_after: float | None = None  # stored: past this many seconds, no longer a HIT
    refresh: bool = False  # stale: a background refresh must call the app exactly once
    x_cache: str = "MISS"  # not-stale: the X-Cache of the app's answer
    hit_headers: Mapping[str, Any] = field(default_factory=dict)  # on the HIT; None: absent
    cache_status: str | None = None  # a substring of the HIT's (or BYPASS's) Cache-Status
    bug: str | None = None  # a known implementation bug: strict xfail
    bug_on: tuple[str, ...] = ()  # only under these "adapter-backend" params (empty: all)


def cc(value: str) -> Headers:
    return (("Cache-Control", value),)


AUTH = {"Authorization": "Bearer token-1"}
COOKIE = {"Cookie": "session=s1"}
ETAG_LM: Headers = (("ETag", '"v1"'), ("Last-Modified", LAST_MODIFIED))
HOP: Headers = (
    ("Connection", "close, X-Foo"),
    ("X-Foo", "bar"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Transfer-Encoding", "chunked"),
    ("X-Kept", "yes"),
)
STALE_ROUTE = {"ttl": 1, "stale_while_revalidate": 30}
SIE_ROUTE = {"ttl": 1, "stale_if_error": 30}
VARY_LANG: Headers = (("Vary", "Accept-Language"),)
FR = {"Accept-Language": "fr"}
DE = {"Accept-Language": "de"}

ROWS: list[Row] = [
    # -- statuses (RFC 9111 §3, RFC 9110 §15.1 heuristically cacheable) ---------------------------
    Row("status-200-stored", "RFC 9111 §3; RFC 9110 §15.3.1", "stored"),
    *(
        Row(
            f"status-{s}-stored-when-listed",
            "RFC 9111 §3; RFC 9110 §15.1",
            "stored",
            status=s,
            route={"statuses": [200, s]},
        )
        for s in (203, 204, 300, 301, 308, 404, 405, 410, 414, 501)
    ),
    Row(
        "status-204-hit-has-no-content-length",
        "RFC 9110 §8.6: no Content-Length in a 204",
        "stored",
        status=204,
        route={"statuses": [200, 204]},
        hit_headers={"content-length": None},
    ),
    Row("status-404-not-listed", "RFC 9111 §3", "not-stored", status=404, cache_status="status"),
    Row("status-301-not-listed", "RFC 9111 §3", "not-stored", status=301, cache_status="status"),
    Row("status-203-not-listed", "RFC 9111 §3", "not-stored", status=203, cache_status="status"),
    *(
        Row(
            f"status-{s}-never",
            "RFC 9111 §3.3-3.4 (206); RFC 9110 §15.6 (5xx)",
            "not-stored",
            status=s,
            route={"statuses": ALL_STATUSES},
            cache_status="status",
        )
        for s in (206, 500, 502, 503)
    ),
    Row(
        "negative-ttl-404",
        "route negative_ttl shortens a 404's lifetime",
        "stored",
        status=404,
        route={"statuses": [200, 404], "negative_ttl": 1},
        cache_status="ttl=1",
        expire_after=1.5,
    ),
    Row(
        "negative-ttl-410",
        "route negative_ttl shortens a 410's lifetime",
        "stored",
        status=410,
        route={"statuses": [200, 410], "negative_ttl": 1},
        cache_status="ttl=1",
        expire_after=1.5,
    ),
    Row(
        "negative-ttl-not-for-200",
        "route negative_ttl applies to 404/410 only",
        "stored",
        route={"statuses": [200, 404], "negative_ttl": 1},
        cache_status="ttl=60",
    ),
    Row(
        "route-ttl-expires",
        "RFC 9111 §4.2: a stale entry is not served without validation",
        "stored",
        route={"ttl": 2},
        cache_status="ttl=2",
        expire_after=2.5,
    ),
    # -- Cache-Control (RFC 9111 §5.2) ------------------------------------------------------------
    Row("cc-no-store", "RFC 9111 §5.2.2.5", "not-stored", headers=cc("no-store")),
    Row(
        "cc-no-store-uppercase",
        "RFC 9111 §5.2: directive names are case-insensitive",
        "not-stored",
        headers=cc("NO-STORE"),
        cache_status="no-store",
    ),
    Row(
        "cc-no-store-second-field-line",
        "RFC 9110 §5.3: field lines combine",
        "not-stored",
        headers=(("Cache-Control", "public"), ("Cache-Control", "no-store")),
        cache_status="no-store",
    ),
    Row(
        "cc-private-shared-route",
        "RFC 9111 §5.2.2.7",
        "not-stored",
        headers=cc("private"),
        cache_status="private",
    ),
    Row(
        "cc-private-mixed-case",
        "RFC 9111 §5.2.2.7; §5.2 case-insensitive",
        "not-stored",
        headers=cc("Private, max-age=60"),
        cache_status="private",
    ),
    Row(
        "cc-private-on-private-route",
        "RFC 9111 §5.2.2.7: private caches may store",
        "stored",
        headers=cc("private, max-age=60"),
        route={"private": True},
        request={"X-User": USER},
    ),
    Row(
        "private-route-keyed-per-user",
        "private route: one entry per user; RFC 9211 Cache-Status without the user id",
        "stored",
        route={"private": True},
        request={"X-User": USER},
        prime_request={"X-User": "bob-41"},
    ),
    Row("cc-no-cache", "RFC 9111 §5.2.2.4", "not-stored", headers=cc("no-cache")),
    Row("cc-no-cache-mixed-case", "RFC 9111 §5.2.2.4", "not-stored", headers=cc("No-Cache")),
    Row(
        "cc-max-age-shortens",
        "RFC 9111 §5.2.2.1; the route ttl is an upper bound",
        "stored",
        headers=cc("max-age=5"),
        cache_status="ttl=5",
    ),
    Row(
        "cc-max-age-quoted",
        "RFC 9111 §5.2: quoted-string argument accepted",
        "stored",
        headers=cc('max-age="30"'),
        cache_status="ttl=30",
    ),
    Row(
        "cc-max-age-uppercase",
        "RFC 9111 §5.2: case-insensitive",
        "stored",
        headers=cc("MAX-AGE=30"),
        cache_status="ttl=30",
    ),
    Row(
        "cc-max-age-huge-capped",
        "RFC 9111 §1.2.2: delta-seconds overflow -> 2^31, capped by route ttl",
        "stored",
        headers=cc("max-age=99999999999999"),
        cache_status="ttl=60",
    ),
    Row(
        "cc-max-age-negative",
        "RFC 9111 §1.2.2 / §4.2.1: invalid -> stale",
        "not-stored",
        headers=cc("max-age=-1"),
    ),
    Row("cc-max-age-garbage", "RFC 9111 §4.2.1", "not-stored", headers=cc("max-age=abc")),
    Row("cc-max-age-fraction", "RFC 9111 §1.2.2", "not-stored", headers=cc("max-age=1.5")),
    Row("cc-max-age-empty", "RFC 9111 §1.2.2", "not-stored", headers=cc("max-age=")),
    Row(
        "cc-max-age-zero",
        "RFC 9111 §5.2.2.1",
        "not-stored",
        headers=cc("max-age=0"),
        cache_status="max-age",
    ),
    Row(
        "cc-s-maxage-over-max-age",
        "RFC 9111 §5.2.2.10: a shared cache prefers s-maxage",
        "stored",
        headers=cc("max-age=0, s-maxage=30"),
        cache_status="ttl=30",
    ),
    Row(
        "cc-s-maxage-zero-over-max-age",
        "RFC 9111 §5.2.2.10",
        "not-stored",
        headers=cc("s-maxage=0, max-age=30"),
    ),
    # -- Expires (RFC 9111 §5.3, §4.2.1) ----------------------------------------------------------
    Row(
        "expires-past-with-date",
        "RFC 9111 §5.3 / §4.2.1",
        "not-stored",
        headers=(("Date", DATE_NOW), ("Expires", formatdate(NOW - 60, usegmt=True))),
    ),
    Row(
        "expires-past-without-date",
        "RFC 9111 §4.2.1: no Date -> the time received",
        "not-stored",
        headers=(("Expires", LAST_MODIFIED),),
    ),
    Row(
        "expires-invalid",
        "RFC 9111 §5.3: an invalid Expires means already expired",
        "not-stored",
        headers=(("Expires", "0"),),
    ),
    Row(
        "expires-future-with-date",
        "RFC 9111 §4.2.1: Expires - Date",
        "stored",
        headers=(("Date", DATE_NOW), ("Expires", formatdate(NOW + 30, usegmt=True))),
        cache_status="ttl=30",
    ),
    Row(
        "max-age-overrides-expires",
        "RFC 9111 §5.3: max-age wins over Expires",
        "stored",
        headers=(("Cache-Control", "max-age=30"), ("Expires", LAST_MODIFIED)),
        cache_status="ttl=30",
    ),
    # -- Set-Cookie, Vary --------------------------------------------------------------------------
    Row(
        "set-cookie",
        "RFC 9111 §7.3 (privacy); a session is never replayed",
        "not-stored",
        headers=(("Set-Cookie", "a=b"),),
        cache_status="set-cookie",
    ),
    Row(
        "vary-star",
        "RFC 9111 §4.1: Vary * never matches",
        "not-stored",
        headers=(("Vary", "*"),),
        cache_status="vary-star",
    ),
    Row(
        "vary-star-in-list",
        "RFC 9111 §4.1",
        "not-stored",
        headers=(("Vary", "Accept-Language, *"),),
    ),
    Row(
        "vary-same-value-hit",
        "RFC 9111 §4.1",
        "hit",
        headers=VARY_LANG,
        request=FR,
        prime_request=FR,
    ),
    Row(
        "vary-field-name-case-insensitive",
        "RFC 9111 §4.1; RFC 9110 §5.1",
        "hit",
        headers=(("Vary", "ACCEPT-LANGUAGE"),),
        request={"accept-language": "fr"},
        prime_request=FR,
    ),
    Row(
        "vary-other-value-own-entry",
        "RFC 9111 §4.1",
        "stored",
        headers=VARY_LANG,
        request=DE,
        prime_request=FR,
    ),
    Row(
        "vary-absent-header-own-entry",
        "RFC 9111 §4.1: absent is a value of its own",
        "stored",
        headers=VARY_LANG,
        prime_request=FR,
    ),
    # -- request Cache-Control (RFC 9111 §5.2.1) ---------------------------------------------------
    Row(
        "request-no-store",
        "RFC 9111 §5.2.1.5",
        "not-stored",
        request={"Cache-Control": "no-store"},
        cache_status="request-no-store",
    ),
    Row(
        "request-no-store-mixed-case",
        "RFC 9111 §5.2.1.5; §5.2",
        "not-stored",
        request={"Cache-Control": "No-Store"},
    ),
    Row(
        "request-no-cache-ignored-by-default",
        "RFC 9111 §5.2.1.4 (a cache may be configured to ignore it)",
        "hit",
        request={"Cache-Control": "no-cache"},
    ),
    Row(
        "request-no-cache-honoured",
        "RFC 9111 §5.2.1.4; honor_request_no_cache",
        "refreshed",
        request={"Cache-Control": "no-cache"},
        settings={"honor_request_no_cache": True},
    ),
    Row(
        "request-max-age-0-honoured",
        "RFC 9111 §5.2.1.1; honor_request_no_cache",
        "refreshed",
        request={"Cache-Control": "max-age=0"},
        settings={"honor_request_no_cache": True},
    ),
    # -- credentials (RFC 9111 §3.5) ---------------------------------------------------------------
    Row(
        "authorization-not-stored",
        "RFC 9111 §3.5",
        "not-stored",
        request=AUTH,
        cache_status="credentials",
    ),
    Row(
        "cookie-not-stored",
        "RFC 9111 §3.5 (cookies as credentials)",
        "not-stored",
        request=COOKIE,
        cache_status="credentials",
    ),
    Row("authorization-public", "RFC 9111 §3.5", "stored", request=AUTH, headers=cc("public")),
    Row(
        "authorization-s-maxage",
        "RFC 9111 §3.5",
        "stored",
        request=AUTH,
        headers=cc("s-maxage=30"),
        cache_status="ttl=30",
    ),
    Row(
        "authorization-must-revalidate",
        "RFC 9111 §3.5",
        "stored",
        request=AUTH,
        headers=cc("must-revalidate"),
    ),
    Row("cookie-public", "RFC 9111 §3.5", "stored", request=COOKIE, headers=cc("public")),
    Row(
        "authorization-on-private-route",
        "RFC 9111 §3.5 applies to shared caches only",
        "stored",
        request={**AUTH, "X-User": USER},
        route={"private": True},
    ),
    # -- conditional requests (RFC 9110 §13, RFC 9111 §4.3.2) -------------------------------------
    Row(
        "inm-match",
        "RFC 9110 §13.1.2; §15.4.5",
        "304",
        headers=ETAG_LM,
        request={"If-None-Match": '"v1"'},
        hit_headers={"etag": '"v1"', "last-modified": None},
    ),
    Row(
        "inm-weak-request",
        "RFC 9110 §13.1.2: weak comparison",
        "304",
        headers=ETAG_LM,
        request={"If-None-Match": 'W/"v1"'},
    ),
    Row(
        "inm-weak-stored",
        "RFC 9110 §13.1.2: weak comparison",
        "304",
        headers=(("ETag", 'W/"v1"'),),
        request={"If-None-Match": '"v1"'},
        hit_headers={"etag": 'W/"v1"'},
    ),
    Row(
        "inm-list",
        "RFC 9110 §13.1.2: a list of entity-tags",
        "304",
        headers=ETAG_LM,
        request={"If-None-Match": '"a", "v1"'},
    ),
    Row(
        "inm-list-no-space",
        "RFC 9110 §13.1.2",
        "304",
        headers=ETAG_LM,
        request={"If-None-Match": '"a","v1","b"'},
    ),
    Row("inm-star", "RFC 9110 §13.1.2: *", "304", headers=ETAG_LM, request={"If-None-Match": "*"}),
    Row(
        "inm-mismatch",
        "RFC 9110 §13.1.2",
        "hit",
        headers=ETAG_LM,
        request={"If-None-Match": '"other", W/"v2"'},
    ),
    Row(
        "inm-generated-etag",
        "RFC 9110 §8.8.3: the cache's own strong validator",
        "304",
        request={"If-None-Match": "{etag}"},
    ),
    Row(
        "inm-304-keeps-vary-date",
        "RFC 9110 §15.4.5: Vary, Date, ETag, Cache-Control on a 304",
        "304",
        headers=(*ETAG_LM, *VARY_LANG, ("Date", DATE_NOW)),
        request={**FR, "If-None-Match": '"v1"'},
        prime_request=FR,
        hit_headers={"vary": "Accept-Language", "date": DATE_NOW, "etag": '"v1"'},
    ),
    Row(
        "ims-equal",
        "RFC 9110 §13.1.3",
        "304",
        headers=ETAG_LM,
        request={"If-Modified-Since": LAST_MODIFIED},
    ),
    Row(
        "ims-later",
        "RFC 9110 §13.1.3",
        "304",
        headers=ETAG_LM,
        request={"If-Modified-Since": AFTER_LM},
    ),
    Row(
        "ims-earlier",
        "RFC 9110 §13.1.3",
        "hit",
        headers=ETAG_LM,
        request={"If-Modified-Since": BEFORE_LM},
    ),
    Row(
        "ims-invalid-date",
        "RFC 9110 §13.1.3: an invalid date is ignored",
        "hit",
        headers=ETAG_LM,
        request={"If-Modified-Since": "yesterday-ish"},
    ),
    Row(
        "inm-mismatch-wins-over-ims",
        "RFC 9110 §13.2.2: If-None-Match first, If-Modified-Since ignored",
        "hit",
        headers=ETAG_LM,
        request={"If-None-Match": '"other"', "If-Modified-Since": AFTER_LM},
    ),
    Row(
        "inm-match-wins-over-ims",
        "RFC 9110 §13.2.2",
        "304",
        headers=ETAG_LM,
        request={"If-None-Match": '"v1"', "If-Modified-Since": BEFORE_LM},
    ),
    Row(
        "inm-ignored-on-404-entry",
        "RFC 9110 §13.2.1: preconditions apply to 2xx answers only",
        "hit",
        status=404,
        route={"statuses": [200, 404]},
        headers=(("ETag", '"v1"'),),
        request={"If-None-Match": '"v1"'},
    ),
    Row(
        "app-etag-kept",
        "RFC 9111 §3: the stored validator is the origin's",
        "stored",
        headers=(("ETag", '"app-1"'),),
        hit_headers={"etag": '"app-1"'},
    ),
    # -- replayed headers (RFC 9111 §3.1, §5.1; RFC 9110 §7.6.1) ---------------------------------
    Row(
        "hop-by-hop-not-replayed",
        "RFC 9110 §7.6.1; RFC 9111 §3.1",
        "stored",
        headers=HOP,
        hit_headers={
            "connection": None,
            "x-foo": None,
            "keep-alive": None,
            "proxy-connection": None,
            "transfer-encoding": None,
            "x-kept": "yes",
        },
    ),
    Row(
        "upstream-age-counted",
        "RFC 9111 §4.2.3 / §5.1: Age is the current age, the upstream age included",
        "stored",
        headers=(("Age", "100"),),
        hit_headers={"age": "100"},
    ),
    Row(
        "age-grows",
        "RFC 9111 §5.1 / §4.2.3",
        "hit",
        advance=42.3,
        hit_headers={"age": "42"},
        cache_status="ttl=18",
    ),
    # -- poisoning guards: not looked up, not stored -----------------------------------------------
    Row("get-with-body", "RFC 9110 §9.3.1", "bypass", body=b"x", cache_status="request-body"),
    Row(
        "get-with-empty-body",
        "RFC 9110 §9.3.1: Content-Length 0 is no content",
        "hit",
        request={"Content-Length": "0"},
    ),
    Row(
        "private-route-without-user",
        "private route: nobody to key the entry by",
        "not-stored",
        route={"private": True},
        cache_status="no-user",
    ),
    Row(
        "get-with-transfer-encoding",
        "RFC 9110 §9.3.1",
        "bypass",
        request={"Transfer-Encoding": "chunked"},
        cache_status="request-body",
    ),
    *(
        Row(
            f"method-override-{name.lower()}",
            "method override: not the GET the key says",
            "bypass",
            request={name: "POST"},
            cache_status="method-override",
        )
        for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
    ),
    Row(
        "range-not-stored",
        "RFC 9111 §3.4: the answer to a Range request is never stored",
        "not-stored",
        request={"Range": "bytes=0-1"},
        cache_status="range",
    ),
    Row(
        "range-from-stored",
        "RFC 9110 §14 / RFC 9111 §3.4: a Range answered from the stored whole",
        "range",
        request={"Range": "bytes=0-1"},
    ),
    *(
        Row(
            f"unkeyed-{name.lower()}",
            "unkeyed routing header (cache poisoning)",
            "bypass",
            request={name: value},
            cache_status="untrusted-header",
        )
        for name, value in (
            ("X-Forwarded-Host", "evil.example"),
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("Forwarded", "host=evil.example"),
        )
    ),
    Row(
        "trusted-x-forwarded-host",
        "trusted_headers: set by our own proxy",
        "hit",
        request={"X-Forwarded-Host": "www.example"},
        settings={"trusted_headers": ["X-Forwarded-Host"]},
    ),
    Row(
        "trusted-forwarded",
        "trusted_headers: set by our own proxy",
        "hit",
        request={"Forwarded": "host=www.example"},
        settings={"trusted_headers": ["Forwarded"]},
    ),
    Row(
        "unlisted-param-with-vary-by",
        "unkeyed parameter (cache poisoning)",
        "bypass",
        route={"vary_by": ["q"]},
        prime_target="/c/x?q=1",
        target="/c/x?q=1&page=2",
        cache_status="unlisted-param",
    ),
    Row(
        "ignored-param-glob",
        "ignore_params: tracking parameters share the entry",
        "hit",
        route={"vary_by": ["q"], "ignore_params": ["utm_*"]},
        prime_target="/c/x?q=1",
        target="/c/x?q=1&utm_source=news&utm_medium=mail",
    ),
    Row(
        "ignored-param-glob-anchored",
        "ignore_params globs match whole names",
        "bypass",
        route={"vary_by": ["q"], "ignore_params": ["utm_*"]},
        prime_target="/c/x?q=1",
        target="/c/x?q=1&xutm_source=news",
        cache_status="unlisted-param",
    ),
    Row(
        "ignored-param-without-vary-by",
        "ignore_params without vary_by",
        "hit",
        route={"ignore_params": ["utm_*"]},
        prime_target="/c/x?a=1",
        target="/c/x?utm_campaign=z&a=1",
    ),
    Row(
        "semicolon-not-a-separator",
        "RFC 9111 §4.1 key: `;` is not `&`",
        "stored",
        prime_target="/c/x?a=1&b=2",
        target="/c/x?a=1;b=2",
    ),
    Row(
        "percent-encoded-ampersand",
        "key: `%26` is not `&`",
        "stored",
        prime_target="/c/x?a=1&b=2",
        target="/c/x?a=1%26b=2",
    ),
    Row(
        "percent-encoded-equals",
        "key: `%3D` is not `=`",
        "stored",
        prime_target="/c/x?a=b=1",
        target="/c/x?a%3Db=1",
    ),
    Row(
        "duplicate-params-by-order",
        "key: repeated parameters keep their order",
        "stored",
        prime_target="/c/x?a=1&a=2",
        target="/c/x?a=2&a=1",
    ),
    Row(
        "duplicate-params-by-order-vary-by",
        "key: repeated parameters keep their order",
        "stored",
        route={"vary_by": ["a"]},
        prime_target="/c/x?a=1&a=2",
        target="/c/x?a=2&a=1",
    ),
    Row(
        "post-200-invalidates-vary-variants",
        "RFC 9111 §4.4: every stored response for the target URI",
        "invalidates",
        method="POST",
        headers=VARY_LANG,
        request={**FR, "X-Respond-Status": "200"},
        prime_request=FR,
    ),
    Row(
        "post-200-invalidates-private-entries",
        "RFC 9111 §4.4",
        "invalidates",
        method="POST",
        route={"private": True},
        request={"X-User": USER, "X-Respond-Status": "200"},
        prime_request={"X-User": USER},
    ),
    # -- stale-while-revalidate (RFC 5861 §3) -----------------------------------------------------
    Row(
        "swr-route",
        "RFC 5861 §3",
        "stale",
        route=STALE_ROUTE,
        advance=1.5,
        refresh=True,
    ),
    Row(
        "swr-response-directive",
        "RFC 5861 §3",
        "stale",
        headers=cc("max-age=1, stale-while-revalidate=30"),
        advance=1.5,
        refresh=True,
    ),
    Row(
        "swr-outside-window",
        "RFC 5861 §3",
        "not-stale",
        route={"ttl": 1, "stale_while_revalidate": 2},
        advance=5,
    ),
    *(
        Row(
            f"swr-not-with-{name}",
            "RFC 9111 §5.2.2.2 / §5.2.2.8 / §5.2.2.10",
            "not-stale",
            headers=cc(value),
            route=STALE_ROUTE,
            advance=1.5,
        )
        for name, value in (
            ("must-revalidate", "must-revalidate"),
            ("proxy-revalidate", "proxy-revalidate"),
            ("s-maxage", "s-maxage=1"),
        )
    ),
    # -- stale-if-error (RFC 5861 §4) --------------------------------------------------------------
    *(
        Row(
            f"sie-route-{status}",
            "RFC 5861 §4",
            "stale",
            route=SIE_ROUTE,
            request={"X-Respond-Status": str(status)},
            advance=1.5,
        )
        for status in (500, 502, 503, 504)
    ),
    Row(
        "sie-app-raises",
        "RFC 5861 §4",
        "stale",
        route=SIE_ROUTE,
        request={"X-Respond-Error": "raise"},
        advance=1.5,
    ),
    Row(
        "sie-response-directive",
        "RFC 5861 §4",
        "stale",
        headers=cc("max-age=1, stale-if-error=30"),
        request={"X-Respond-Status": "500"},
        advance=1.5,
    ),
    Row(
        "sie-outside-window",
        "RFC 5861 §4",
        "not-stale",
        route={"ttl": 1, "stale_if_error": 2},
        request={"X-Respond-Status": "500"},
        advance=5,
        x_cache="BYPASS",
    ),
    Row(
        "sie-not-with-must-revalidate",
        "RFC 9111 §5.2.2.2",
        "not-stale",
        headers=cc("must-revalidate"),
        route=SIE_ROUTE,
        request={"X-Respond-Status": "500"},
        advance=1.5,
        x_cache="BYPASS",
    ),
    Row(
        "sie-success-replaces",
        "RFC 5861 §4: only an error uses the stale entry",
        "not-stale",
        route=SIE_ROUTE,
        advance=1.5,
    ),
    Row(
        "sie-404-is-not-an-error",
        "RFC 5861 §4: 500, 502, 503, 504 are errors",
        "not-stale",
        route={**SIE_ROUTE, "statuses": [200, 404]},
        request={"X-Respond-Status": "404"},
        advance=1.5,
    ),
    # -- unsafe methods (RFC 9111 §4.4) ------------------------------------------------------------
    *(
        Row(
            f"{method.lower()}-{status}-invalidates",
            "RFC 9111 §4.4: a non-error response invalidates",
            "invalidates",
            method=method,
            request={"X-Respond-Status": str(status)},
        )
        for method, status in (
            ("POST", 200),
            ("POST", 201),
            ("PUT", 204),
            ("PATCH", 200),
            ("DELETE", 200),
            ("POST", 303),
        )
    ),
    *(
        Row(
            f"{method.lower()}-{status}-keeps",
            "RFC 9111 §4.4: an error response changes nothing",
            "keeps",
            method=method,
            request={"X-Respond-Status": str(status)},
        )
        for method, status in (("POST", 400), ("DELETE", 404), ("PUT", 409), ("PATCH", 500))
    ),
]


def _param(row: Row) -> Any:
    bug = row.bug and not row.bug_on
    marks = [pytest.mark.xfail(strict=True, reason=f"bug: {row.bug}")] if bug else []
    return pytest.param(row, id=row.id, marks=marks)


# -- the runner -----------------------------------------------------------------------------------


def spec(row: Row) -> dict[str, str]:
    """The request headers that tell the app what to answer."""
    return {
        "X-Respond-Status": str(row.status),
        "X-Respond-Headers": json.dumps([list(h) for h in row.headers]),
    }


def check(reply: Reply, where: str, upstream_age: str | None = None) -> None:
    """What every answer on a cached route must satisfy (`upstream_age`: the Age the app
    sends, if any)."""
    status_field = reply.headers.get("cache-status", "")
    assert status_field.startswith("cache-middleware"), f"{where}: Cache-Status {status_field!r}"
    assert USER not in status_field, f"{where}: the user id leaks into Cache-Status"
    assert len(reply.headers.get_list("x-cache")) == 1, where
    assert len(reply.headers.get_list("age")) <= 1, f"{where}: Age twice"
    if reply.x_cache in ("MISS", "BYPASS"):
        # RFC 9111 §5.1: the app's own Age (the upstream age) passed on as it came, or none.
        assert reply.headers.get("age") == upstream_age, f"{where}: Age on a {reply.x_cache}"
    if reply.x_cache in ("HIT", "STALE") and reply.status not in (204, 304):
        assert reply.headers.get("content-length") == str(len(reply.body)), where


def check_headers(reply: Reply, expected: Mapping[str, Any], where: str) -> None:
    for name, value in expected.items():
        got = reply.headers.get(name)
        if isinstance(value, tuple):
            assert got in value, f"{where}: {name}: {got!r} not in {value!r}"
        else:
            assert got == value, f"{where}: {name}: {got!r} != {value!r}"


async def run_row(row: Row, c: Client, clock: Clock) -> None:
    base = spec(row)
    probe = {**base, **row.request}
    prime = {**base, **(row.prime_request or {})}
    prime_target = row.prime_target or row.target
    explicit_prime = row.prime_target is not None or row.prime_request is not None
    upstream_age = next((v for k, v in row.headers if k.lower() == "age"), None)

    async def send(target: str, headers: Mapping[str, str], body: bytes = b"") -> Reply:
        reply = await c.request(row.method, target, headers, body)
        check(reply, f"{row.id}: {row.method} {target}", upstream_age)
        return reply

    async def get(target: str, headers: Mapping[str, str]) -> Reply:
        reply = await c.request("GET", target, headers)
        check(reply, f"{row.id}: GET {target}", upstream_age)
        return reply

    async def store_prime() -> Reply:
        first = await get(prime_target, prime)
        assert (first.status, first.x_cache, c.calls) == (row.status, "MISS", 1), "prime"
        return first

    expect = row.expect
    if expect == "stored":
        first = await store_prime() if explicit_prime else None
        before = c.calls
        miss = await send(row.target, probe)
        assert (miss.status, miss.x_cache, c.calls) == (row.status, "MISS", before + 1)
        assert "fwd=uri-miss; stored" in miss.headers["cache-status"]
        hit = await send(row.target, probe)
        assert (hit.status, hit.x_cache, c.calls) == (row.status, "HIT", before + 1)
        assert hit.body == miss.body
        assert hit.call == miss.call
        check_headers(hit, row.hit_headers, "HIT")
        if row.cache_status:
            assert row.cache_status in hit.headers["cache-status"]
        if first is not None:
            again = await get(prime_target, prime)
            assert (again.x_cache, again.body, c.calls) == ("HIT", first.body, before + 1)
        if row.expire_after is not None:
            clock.offset += row.expire_after
            late = await send(row.target, probe)
            assert (late.status, late.x_cache, c.calls) == (row.status, "MISS", before + 2)
    elif expect == "not-stored":
        one = await send(row.target, probe, row.body)
        assert (one.status, one.x_cache, c.calls) == (row.status, "BYPASS", 1)
        assert "fwd=bypass" in one.headers["cache-status"]
        if row.cache_status:
            assert f"detail={row.cache_status}" in one.headers["cache-status"]
        two = await send(row.target, probe, row.body)
        assert (two.status, two.x_cache, c.calls, two.call) == (row.status, "BYPASS", 2, 2)
        plain = await get(row.target, base)
        assert plain.x_cache != "HIT" and c.calls == 3, "nothing was stored"
    elif expect == "bypass":
        first = await store_prime()
        by = await send(row.target, probe, row.body)
        assert (by.status, by.x_cache, c.calls, by.call) == (row.status, "BYPASS", 2, 2)
        assert "fwd=bypass" in by.headers["cache-status"]
        if row.cache_status:
            assert f"detail={row.cache_status}" in by.headers["cache-status"]
        again = await get(prime_target, prime)
        assert (again.x_cache, again.body, c.calls) == ("HIT", first.body, 2), "not stored"
    elif expect == "range":
        first = await store_prime()
        part = await send(row.target, probe, row.body)
        assert (part.status, part.x_cache, c.calls) == (206, "HIT", 1)
        assert part.body == first.body[:2]
        assert part.headers["content-range"] == f"bytes 0-1/{len(first.body)}"
    elif expect == "hit":
        first = await store_prime()
        clock.offset += row.advance
        hit = await send(row.target, probe, row.body)
        assert (hit.status, hit.x_cache, c.calls) == (row.status, "HIT", 1)
        assert hit.body == first.body
        check_headers(hit, row.hit_headers, "HIT")
        if row.cache_status:
            assert row.cache_status in hit.headers["cache-status"]
    elif expect == "304":
        first = await store_prime()
        if any("{etag}" in v for v in probe.values()):
            # The cache's own ETag is in the stored entry, so the first HIT shows it.
            shown = await get(prime_target, prime)
            assert shown.x_cache == "HIT" and c.calls == 1
            etag = shown.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
            probe = {k: v.replace("{etag}", etag) for k, v in probe.items()}
        nm = await send(row.target, probe)
        assert (nm.status, nm.x_cache, c.calls, nm.body) == (304, "HIT", 1, b"")
        assert "etag" in nm.headers and "cache-control" in nm.headers
        assert "content-type" not in nm.headers
        check_headers(nm, row.hit_headers, "304")
        # The same request without its validators still gets the whole stored response.
        full = await get(prime_target, prime)
        assert (full.status, full.x_cache, full.body) == (row.status, "HIT", first.body)
    elif expect in ("stale", "not-stale"):
        first = await store_prime()
        clock.offset += row.advance
        reply = await send(row.target, probe)
        if expect == "not-stale":
            status = int(probe["X-Respond-Status"])
            assert (reply.status, reply.x_cache, c.calls) == (status, row.x_cache, 2)
            assert reply.call == 2 or status == 204
            return
        assert (reply.status, reply.x_cache, reply.body) == (row.status, "STALE", first.body)
        assert "fwd=stale" in reply.headers["cache-status"]
        if not row.refresh:
            assert c.calls == 2, "stale-if-error: the app was asked, and failed"
            return
        # RFC 5861 §3: the refresh runs behind the answer, once however many stale answers.
        again = await send(row.target, probe)
        assert again.x_cache in ("STALE", "HIT") and again.status == row.status
        await c.wait_calls(2)
        await asyncio.sleep(0.05)
        assert c.calls == 2, "exactly one background refresh"
        fresh = await send(row.target, probe)
        assert (fresh.x_cache, fresh.call, c.calls) == ("HIT", 2, 2)
    elif expect == "refreshed":
        first = await store_prime()
        miss = await send(row.target, probe)
        assert (miss.status, miss.x_cache, c.calls, miss.call) == (row.status, "MISS", 2, 2)
        assert "fwd=request" in miss.headers["cache-status"]
        after = await get(prime_target, prime)
        assert (after.x_cache, after.call, c.calls) == ("HIT", 2, 2)
        assert after.body != first.body
    elif expect in ("invalidates", "keeps"):
        one = await get("/c/x", prime)
        two = await get("/c/x?page=2", prime)
        other = await get("/c/y", prime)
        assert (one.x_cache, two.x_cache, other.x_cache, c.calls) == ("MISS",) * 3 + (3,)
        status = int(probe["X-Respond-Status"])
        unsafe = await send(row.target, probe)
        assert (unsafe.status, unsafe.x_cache, c.calls) == (status, "BYPASS", 4)
        again = [await get(t, prime) for t in ("/c/x", "/c/x?page=2", "/c/y")]
        if expect == "invalidates":
            assert [r.x_cache for r in again] == ["MISS", "MISS", "HIT"]
            assert [r.call for r in again] == [5, 6, 3]
        else:
            assert [r.x_cache for r in again] == ["HIT", "HIT", "HIT"]
            assert [r.call for r in again] == [1, 2, 3]
    else:
        raise AssertionError(f"unknown expectation {expect!r}")


def config_for(row: Row, prefix: str) -> dict[str, Any]:
    return {
        "key_prefix": prefix,
        "user_header": "X-User",
        "routes": {"/c": {"ttl": 60, **row.route}},
        **row.settings,
    }


@pytest.mark.parametrize("row", [_param(row) for row in ROWS])
async def test_conformance(
    row: Row,
    adapter: str,
    backend: dict[str, Any],
    prefix: str,
    clock: Clock,
    request: pytest.FixtureRequest,
) -> None:
    where = f"{adapter}-{request.node.callspec.params['backend']}"
    if row.bug and where in row.bug_on:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"bug: {row.bug}"))
    c = Client(adapter, config_for(row, prefix), backend)
    try:
        await run_row(row, c, clock)
    finally:
        await c.aclose()


def test_row_ids_are_unique_and_cite_a_clause() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))
    assert all(row.clause for row in ROWS)


# -- beyond the table -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [206, 500, 502, 503, 504, 201, 302, 304])
def test_config_refuses_statuses_a_shared_cache_must_not_store(status: int) -> None:
    with pytest.raises(ConfigError, match="statuses"):
        load_config({"routes": {"/c": {"ttl": 60, "statuses": [200, status]}}})


def test_config_negative_ttl_needs_a_negative_status() -> None:
    with pytest.raises(ConfigError, match="negative_ttl"):
        load_config({"routes": {"/c": {"ttl": 60, "negative_ttl": 5}}})


async def test_generated_etag_is_stable_across_instances(
    adapter: str, backend: dict[str, Any], prefix: str
) -> None:
    """RFC 9110 §8.8.3: the ETag the cache adds is derived from the body, so two processes
    (two middleware instances, here on separate key prefixes) agree on it."""
    headers = {"X-Respond-Body": "same bytes"}
    tags = []
    clients = [Client(adapter, {**config_for(ROWS[0], f"{prefix}:{n}")}, backend) for n in "ab"]
    try:
        for c in clients:
            assert (await c.request("GET", "/c/x", headers)).x_cache == "MISS"
            hit = await c.request("GET", "/c/x", headers)
            assert (hit.x_cache, hit.body, c.calls) == ("HIT", b"same bytes", 1)
            tags.append(hit.headers["etag"])
        assert tags[0] == tags[1]
        assert tags[0].startswith('"') and tags[0].endswith('"')
        # The other instance answers the first one's validator with a 304.
        nm = await clients[1].request("GET", "/c/x", {**headers, "If-None-Match": tags[0]})
        assert (nm.status, nm.x_cache, clients[1].calls) == (304, "HIT", 1)
        # Another body, another tag.
        other = {"X-Respond-Body": "other bytes"}
        await clients[0].request("GET", "/c/y", other)
        hit = await clients[0].request("GET", "/c/y", other)
        assert hit.x_cache == "HIT" and hit.headers["etag"] != tags[0]
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize("where", ["same-prefix", "other-prefix"])
async def test_invalidating_another_path_keeps_a_fill_in_flight(
    where: str, backend: dict[str, Any], prefix: str
) -> None:
    """RFC 9111 §4.4 invalidates the target URI: a POST to /c/z while GET /c/x is being
    answered has nothing to do with /c/x, whose response must still be stored."""
    other_prefix = prefix if where == "same-prefix" else f"{prefix}:other"
    writer = Client("asgi", config_for(ROWS[0], other_prefix), backend)
    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        if scope["method"] == "GET":
            posted = await writer.request("POST", "/c/z", {})
            assert (posted.status, posted.x_cache) == (200, "BYPASS")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    config = {"redis_url": backend["url"], **config_for(ROWS[0], prefix)}
    middleware = CacheMiddleware(app, config=config, store=backend["async_store"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://t"
    ) as client:
        try:
            first = await client.get("/c/x")
            second = await client.get("/c/x")
        finally:
            await writer.aclose()
    assert (first.headers["x-cache"], second.headers["x-cache"], calls) == ("MISS", "HIT", 1)
