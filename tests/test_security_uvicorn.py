"""The request-side defences where the server's own parsing matters, through a real uvicorn
process (both its HTTP parsers, h11 and httptools) and raw socket requests: an underscored
`X_Forwarded_Host` (uvicorn passes it on; a2wsgi turns it into HTTP_X_FORWARDED_HOST, which
werkzeug's ProxyFix believes), an absolute-form target (`GET http://evil.example/p`), and a
path with repeated slashes. On the memory store and the real Redis.

The app is built in the server process by `app_from_env` (uvicorn's `--factory`) from the
JSON in SEC_CONFIG and the kind in SEC_APP: a Starlette page that echoes the forwarding
headers, or a Flask app behind ProxyFix bridged to ASGI by a2wsgi.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVIL = "evil.example"
ROUTES = {"/": {"ttl": 60}, "/p": {"ttl": 60}}


def app_from_env() -> Any:
    """The ASGI app of the server process (see the module docstring)."""
    from cache_middleware import CacheMiddleware

    settings = json.loads(os.environ["SEC_CONFIG"])
    if os.environ["SEC_APP"] == "flask":
        from a2wsgi import WSGIMiddleware
        from flask import Flask, request, url_for
        from werkzeug.middleware.proxy_fix import ProxyFix

        flask = Flask(__name__)

        @flask.get("/p")
        def page() -> str:
            return f"page {url_for('page', _external=True)} {request.headers.get('X-Cert-User')}"

        proxied = ProxyFix(flask.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
        inner: Any = WSGIMiddleware(proxied)  # type: ignore[arg-type]
    else:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def echo(request: Request) -> PlainTextResponse:
            seen = {k: v for k, v in request.headers.items() if k not in ("host", "connection")}
            return PlainTextResponse(f"page {request.url} {request.scope['raw_path']!r} {seen}")

        inner = Starlette(routes=[Route("/p", echo)])
    return CacheMiddleware(inner, config=settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_request(port: int, head: str) -> tuple[dict[str, str], str]:
    """Send `head` (request line and headers) as written; (lower-case headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header_block, _, body = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")[1:]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body.decode("latin-1")


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, memory_url: str) -> dict[str, Any]:
    if request.param == "memory":
        return {"redis_url": memory_url, "key_prefix": "sec"}
    return {
        "redis_url": request.getfixturevalue("redis_url"),
        "key_prefix": request.getfixturevalue("prefix"),
        "redis_timeout": 2,
    }


@pytest.fixture(params=["starlette-h11", "starlette-httptools", "flask-h11", "flask-httptools"])
def server(request: pytest.FixtureRequest, cache: dict[str, Any]) -> Iterator[int]:
    """A uvicorn process serving the app; yields its port."""
    kind, parser = request.param.split("-")
    port = _free_port()
    # The config's store, not one CACHE_REDIS_URL would impose.
    env = {name: value for name, value in os.environ.items() if name != "CACHE_REDIS_URL"}
    env.update(SEC_APP=kind, SEC_CONFIG=json.dumps({**cache, "routes": ROUTES}))
    command = [
        sys.executable, "-m", "uvicorn", "tests.test_security_uvicorn:app_from_env", "--factory",
        "--port", str(port), "--http", parser, "--log-level", "warning", "--no-proxy-headers",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_underscored_forwarded_host_is_refused(server: int) -> None:
    headers, body = raw_request(server, f"GET /p HTTP/1.1\nHost: shop\nX_Forwarded_Host: {EVIL}\n")
    assert headers["x-cache"] == "BYPASS", body
    assert "detail=untrusted-header" in headers["cache-status"]
    headers, body = raw_request(server, "GET /p HTTP/1.1\nHost: shop\n")
    assert EVIL not in body and headers["x-cache"] == "MISS"
    # With the entry stored, the plain GET's short way does not take it for a plain one either.
    headers, body = raw_request(server, f"GET /p HTTP/1.1\nHost: shop\nX_Forwarded_Host: {EVIL}\n")
    assert headers["x-cache"] == "BYPASS"


def test_an_underscored_scheme_header_is_keyed(server: int) -> None:
    head = "GET /p?k=1 HTTP/1.1\nHost: shop\nX_Forwarded_Proto: https\n"
    assert raw_request(server, head)[0]["x-cache"] == "MISS"
    assert raw_request(server, head)[0]["x-cache"] == "HIT"
    assert raw_request(server, "GET /p?k=1 HTTP/1.1\nHost: shop\n")[0]["x-cache"] == "MISS"


def test_an_absolute_form_target_never_reaches_a_plain_request(server: int) -> None:
    """What uvicorn makes of `GET http://evil/p` (it passes even without the path guard: the
    server, not the cache, keeps Host; the guard's own test is the WSGI one, where gunicorn
    gives RAW_URI in absolute form: tests/test_security_requests.py)."""
    headers, body = raw_request(server, f"GET http://{EVIL}/p HTTP/1.1\nHost: shop\n")
    # h11 hands the whole URL over as the path (no route covers it); httptools the path alone.
    assert headers.get("x-cache") != "HIT"
    headers, body = raw_request(server, "GET /p HTTP/1.1\nHost: shop\n")
    assert EVIL not in body


def test_repeated_slashes_bypass(server: int) -> None:
    headers, body = raw_request(server, "GET //p HTTP/1.1\nHost: shop\nX-Cert-User: alice\n")
    assert headers["x-cache"] == "BYPASS" and "detail=path" in headers["cache-status"]
    headers, body = raw_request(server, "GET //p HTTP/1.1\nHost: shop\n")
    assert "alice" not in body
