"""Revalidation (RFC 9111 §4.3) in `mode: standard`, through both adapters on the memory store
and the real Redis: a stored response past its freshness is asked about with its validators,
and the app's 304 refreshes it (headers merged, §4.3.4) without its body being sent again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from werkzeug.test import Client

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.entry import CachedResponse
from cache_middleware._core.revalidation import conditional_headers, has_validator, revalidated
from cache_middleware._core.storing import body_etag
from tests.conftest import AdapterClock
from tests.helpers.origin_apps import Answer, asgi_origin, wsgi_origin

# -- the decisions ---------------------------------------------------------------------------


def entry(*headers: tuple[bytes, bytes], body: bytes = b"body") -> CachedResponse:
    return CachedResponse(200, [(b"content-type", b"text/plain"), *headers], body, 0.0, 10)


def test_only_the_apps_validators_are_sent() -> None:
    assert conditional_headers(entry((b"etag", b'"v1"'))) == [(b"if-none-match", b'"v1"')]
    lm = (b"last-modified", b"Tue, 01 Dec 2026 10:00:00 GMT")
    assert conditional_headers(entry(lm)) == [(b"if-modified-since", lm[1])]
    # The ETag the cache derived from the body is not the app's: the app could not match it.
    derived = entry((b"etag", body_etag(b"body")))
    assert conditional_headers(derived) == [] and not has_validator(derived)


def test_a_304_merges_its_headers_into_the_stored_ones() -> None:
    stored = entry((b"etag", b'"v1"'), (b"x-a", b"1"), (b"content-length", b"4"))
    merged = revalidated(stored, 304, [(b"X-A", b"2"), (b"cache-control", b"max-age=60"),
                                       (b"content-length", b"0")])  # fmt: skip
    assert merged is not None
    assert (b"x-a", b"2") in merged and (b"x-a", b"1") not in merged
    assert (b"cache-control", b"max-age=60") in merged
    assert (b"content-length", b"4") in merged  # the stored body's, not the 304's (§3.2)


def test_only_a_304_for_the_stored_response_revalidates() -> None:
    stored = entry((b"etag", b'"v1"'))
    assert revalidated(stored, 200, []) is None
    assert revalidated(stored, 304, [(b"etag", b'"v2"')]) is None  # another representation
    assert revalidated(stored, 304, [(b"etag", b'W/"v1"')]) is not None


# -- through the adapters ----------------------------------------------------------------------


class Origin:
    """max-age=10 with ETag "v1"; answers 304 to If-None-Match "v1" (counting it)."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.version = "v1"

    def answer(self, if_none_match: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        self.asked.append(if_none_match)
        headers = [("Cache-Control", "max-age=10"), ("ETag", f'"{self.version}"'),
                   ("X-Served", str(len(self.asked)))]  # fmt: skip
        if if_none_match == f'"{self.version}"':
            return 304, headers, b""
        return 200, [("Content-Type", "text/plain"), *headers], f"body {self.version}".encode()


def asgi(config: dict[str, Any], origin: Origin) -> Iterator[Any]:
    def answer(scope: dict[str, Any]) -> Answer:
        inm = dict(scope["headers"]).get(b"if-none-match")
        return origin.answer(inm.decode() if inm else None)

    app = asgi_origin(answer)
    with TestClient(CacheMiddleware(app, config=config)) as client:
        yield lambda headers=None: client.get("/r", headers=headers)


def wsgi(config: dict[str, Any], origin: Origin) -> Iterator[Any]:
    app = wsgi_origin(lambda environ: origin.answer(environ.get("HTTP_IF_NONE_MATCH")))
    client = Client(WSGICacheMiddleware(app, config=config))
    yield lambda headers=None: client.get("/r", headers=headers or {})


def text(response: Any) -> str:
    return str(response.text)


@pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_an_expired_entry_is_revalidated_and_refreshed_by_a_304(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    config = {**store_config, "mode": "standard", "routes": {"/r": {}}}
    for send in make(config, origin):
        first = send()
        assert first.headers["x-cache"] == "MISS" and text(first) == "body v1"
        assert send().headers["x-cache"] == "HIT"
        adapter_clock.offset = 30  # 20 s past its freshness
        again = send()
        # Asked with its validator; the 304 refreshed it: the stored body, the new headers.
        assert origin.asked == [None, '"v1"']
        assert again.status_code == 200 and text(again) == "body v1"
        assert again.headers["x-served"] == "2"
        assert again.headers["content-length"] == str(len("body v1"))
        hit = send()
        assert hit.headers["x-cache"] == "HIT" and hit.headers["x-served"] == "2"
        assert len(origin.asked) == 2


@pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_a_changed_resource_answers_whole_and_replaces_the_entry(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    config = {**store_config, "mode": "standard", "routes": {"/r": {}}}
    for send in make(config, origin):
        send()
        adapter_clock.offset = 30
        origin.version = "v2"
        changed = send()
        assert origin.asked == [None, '"v1"']
        assert changed.status_code == 200 and text(changed) == "body v2"
        assert text(send()) == "body v2" and len(origin.asked) == 2


@pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_the_clients_own_preconditions_are_not_passed_on(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    config = {**store_config, "mode": "standard", "routes": {"/r": {}}}
    for send in make(config, origin):
        send()
        adapter_clock.offset = 30
        send({"If-None-Match": '"something-else"'})
        assert origin.asked == [None, '"v1"']


@pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_a_gateway_route_refetches(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = Origin()
    config = {**store_config, "routes": {"/r": {"ttl": 10}}}
    for send in make(config, origin):
        send()
        adapter_clock.offset = 30
        send()
        assert origin.asked == [None, None]


# -- a HEAD's 200 refreshes the stored GET response (RFC 9111 §4.3.5) ----------------------------


class HeadOrigin:
    """GET: max-age=10, `X-V: 1`, a body. HEAD: `head_headers`, no body."""

    def __init__(self, head_headers: list[tuple[str, str]]) -> None:
        self.head_headers = head_headers
        self.methods: list[str] = []

    def answer(self, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        self.methods.append(method)
        if method == "HEAD":
            return 200, list(self.head_headers), b""
        return 200, [("Cache-Control", "max-age=10"), ("X-V", "1"), ("ETag", '"v1"')], b"page"


def head_asgi(config: dict[str, Any], origin: HeadOrigin) -> Iterator[Any]:
    app = asgi_origin(lambda scope: origin.answer(scope["method"]))
    with TestClient(CacheMiddleware(app, config=config)) as client:
        yield lambda method: client.request(method, "/r")


def head_wsgi(config: dict[str, Any], origin: HeadOrigin) -> Iterator[Any]:
    app = wsgi_origin(lambda environ: origin.answer(environ["REQUEST_METHOD"]))
    client = Client(WSGICacheMiddleware(app, config=config))
    yield lambda method: client.open("/r", method=method)


@pytest.mark.parametrize("make", [head_asgi, head_wsgi], ids=["asgi", "wsgi"])
def test_a_head_200_refreshes_the_stored_response(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = HeadOrigin([("Cache-Control", "max-age=1000"), ("X-V", "2"), ("ETag", '"v1"')])
    config = {**store_config, "mode": "standard", "routes": {"/r": {}}}
    for send in make(config, origin):
        assert send("GET").headers["x-cache"] == "MISS"
        adapter_clock.offset = 30  # stale, kept
        head = send("HEAD")
        assert head.status_code == 200 and origin.methods == ["GET", "HEAD"]
        hit = send("GET")
        assert hit.headers["x-cache"] == "HIT" and hit.headers["x-v"] == "2"
        assert text(hit) == "page" and origin.methods == ["GET", "HEAD"]


@pytest.mark.parametrize("make", [head_asgi, head_wsgi], ids=["asgi", "wsgi"])
def test_a_head_about_another_representation_refreshes_nothing(
    make: Any, store_config: dict[str, Any], adapter_clock: AdapterClock
) -> None:
    origin = HeadOrigin([("Cache-Control", "max-age=1000"), ("ETag", '"v2"')])
    config = {**store_config, "mode": "standard", "routes": {"/r": {}}}
    for send in make(config, origin):
        send("GET")
        adapter_clock.offset = 30
        send("HEAD")
        assert send("GET").headers["x-cache"] != "HIT"  # still stale: asked again
        assert origin.methods[:2] == ["GET", "HEAD"] and len(origin.methods) == 3
