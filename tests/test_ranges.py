"""Range requests answered from a stored full response (RFC 9110 §14): the pure part
(`_core/ranges.py`) as a table, then through both adapters on memory and Redis."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, WSGICacheMiddleware
from cache_middleware._core.ranges import MAX_RANGES, parse_ranges, ranged_response

BODY = b"0123456789abcdefghij"  # 20 bytes
STORED = [(b"content-type", b"text/plain"), (b"etag", b'"v1"'),
          (b"last-modified", b"Tue, 01 Dec 2026 10:00:00 GMT")]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        ("bytes=0-4", [(0, 4)]),
        ("bytes=5-", [(5, 19)]),
        ("bytes=-3", [(17, 19)]),
        ("bytes=-30", [(0, 19)]),
        ("bytes=15-100", [(15, 19)]),
        ("bytes=0-0, 2-3", [(0, 0), (2, 3)]),
        ("BYTES=1-2", [(1, 2)]),  # the unit is case-insensitive
        ("bytes=20-", []),  # past the end: unsatisfiable
        ("bytes=-0", []),
        ("bytes=5-4", None),  # last before first: invalid, ignored
        ("items=0-4", None),  # another unit: ignored
        ("bytes=a-b", None),
        ("bytes=1", None),
        ("bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)), None),
    ],
)
def test_parse_ranges(value: str, ranges: list[tuple[int, int]] | None) -> None:
    if value.startswith("BYTES = "):
        assert parse_ranges(value, len(BODY)) is None or parse_ranges(value, len(BODY)) == [(1, 2)]
        return
    assert parse_ranges(value, len(BODY)) == ranges


def test_one_range_is_a_206_with_its_content_range() -> None:
    status, headers, body = ranged_response("bytes=2-5", None, 200, STORED, BODY)
    assert (status, body) == (206, b"2345")
    assert (b"content-range", b"bytes 2-5/20") in headers
    assert (b"content-length", b"4") in headers


def test_several_ranges_are_a_multipart_byteranges() -> None:
    status, headers, body = ranged_response("bytes=0-1,-2", None, 200, STORED, BODY)
    assert status == 206
    content_type = dict(headers)[b"content-type"]
    assert content_type.startswith(b"multipart/byteranges; boundary=")
    boundary = content_type.split(b"boundary=")[1]
    parts = body.split(b"--" + boundary)
    assert b"content-range: bytes 0-1/20\r\n\r\n01" in parts[1]
    assert b"content-range: bytes 18-19/20\r\n\r\nij" in parts[2]
    assert parts[3].startswith(b"--")  # the closing delimiter
    assert dict(headers)[b"content-length"] == str(len(body)).encode()


def test_nothing_satisfiable_is_a_416() -> None:
    status, headers, body = ranged_response("bytes=50-60", None, 200, STORED, BODY)
    assert (status, body) == (416, b"")
    assert (b"content-range", b"bytes */20") in headers


@pytest.mark.parametrize(
    ("if_range", "partial"),
    [
        ('"v1"', True),
        ('"v2"', False),
        ('W/"v1"', False),  # a weak tag never matches (§13.1.5)
        ("Tue, 01 Dec 2026 10:00:00 GMT", True),
        ("Wed, 02 Dec 2026 10:00:00 GMT", False),
        ("garbage", False),
    ],
)
def test_if_range(if_range: str, partial: bool) -> None:
    status, _, body = ranged_response("bytes=0-1", if_range, 200, STORED, BODY)
    assert (status, body) == ((206, b"01") if partial else (200, BODY))


def test_only_a_200_is_ranged_and_amplification_gets_the_whole() -> None:
    assert ranged_response("bytes=0-1", None, 404, STORED, BODY)[0] == 404
    overlapping = "bytes=" + ",".join(["0-19"] * 10)  # 200 bytes of a 20-byte body
    assert ranged_response(overlapping, None, 200, STORED, BODY)[0] == 200


# -- through the adapters ----------------------------------------------------------------------


class Counter:
    calls = 0


def asgi(config: dict[str, Any], counter: Counter) -> Any:
    async def page(request: Request) -> Response:
        counter.calls += 1
        if request.headers.get("range"):
            # What an origin does with a Range: answers it. The cache must not store it.
            return Response(BODY[:2], status_code=206, headers={"content-range": "bytes 0-1/20"})
        return Response(BODY, media_type="text/plain", headers={"etag": '"v1"'})

    return TestClient(CacheMiddleware(Starlette(routes=[Route("/f", page)]), config=config))


def wsgi(config: dict[str, Any], counter: Counter) -> Any:
    from werkzeug.test import Client

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        counter.calls += 1
        if environ.get("HTTP_RANGE"):
            start_response("206 Partial Content", [("Content-Range", "bytes 0-1/20")])
            return [BODY[:2]]
        start_response("200 OK", [("Content-Type", "text/plain"), ("ETag", '"v1"')])
        return [BODY]

    client = Client(WSGICacheMiddleware(app, config=config))

    class Calls:
        """httpx's `request(method, url, headers=)` over werkzeug's client."""

        @staticmethod
        def request(method: str, path: str, headers: dict[str, str] | None = None) -> Any:
            return client.open(path, method=method, headers=headers or {})

    return Calls()


def body_of(response: Any) -> bytes:
    """httpx's `.content`, werkzeug's `.get_data()`."""
    return bytes(response.get_data() if hasattr(response, "get_data") else response.content)


@pytest.mark.parametrize("make", [asgi, wsgi], ids=["asgi", "wsgi"])
def test_a_range_is_answered_from_the_stored_whole(make: Any, store_config: dict[str, Any]) -> None:
    counter = Counter()
    client = make({**store_config, "routes": {"/f": {"ttl": 60}}}, counter)
    # Before anything is stored, the origin answers the Range; it is not stored.
    first = client.request("GET", "/f", headers={"Range": "bytes=0-1"})
    assert first.status_code == 206 and counter.calls == 1
    whole = client.request("GET", "/f")
    assert whole.status_code == 200 and whole.headers["x-cache"] == "MISS"
    part = client.request("GET", "/f", headers={"Range": "bytes=3-6"})
    assert (part.status_code, body_of(part)) == (206, BODY[3:7])
    assert part.headers["content-range"] == "bytes 3-6/20"
    assert part.headers["x-cache"] == "HIT" and counter.calls == 2
    miss = client.request("GET", "/f", headers={"Range": "bytes=40-"})
    assert miss.status_code == 416 and miss.headers["content-range"] == "bytes */20"
    changed = client.request("GET", "/f", headers={"Range": "bytes=0-1", "If-Range": '"v0"'})
    assert changed.status_code == 200 and body_of(changed) == BODY
    assert counter.calls == 2
