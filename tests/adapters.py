"""One test app, built for both ASGI and WSGI, and one client face for both adapters.

The app answers according to its path (status, headers, body shape) and numbers its calls, so
an expectation can say which call produced the body a client received.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from cache_middleware import CacheMiddleware, WSGICacheMiddleware

BIG = 4096  # bytes per chunk of /api/big: 3 chunks, over the tables' max_body_bytes of 10000


@dataclass
class AppState:
    calls: int = 0
    methods: list[str] = field(default_factory=list)


def respond(
    state: AppState, method: str, path: str, query: str, user: str | None
) -> tuple[int, list[tuple[str, str]], list[bytes]]:
    state.calls += 1
    state.methods.append(method)
    body = f"{method} {path}?{query} user={user} call={state.calls}\n".encode()
    headers = [("content-type", "text/plain")]
    status = 200
    tail = path.rsplit("/", 1)[-1]
    if tail == "cookie":
        headers.append(("set-cookie", "session=abc"))
    elif tail == "nostore":
        headers.append(("cache-control", "no-store"))
    elif tail == "private-cc":
        headers.append(("cache-control", "private, max-age=60"))
    elif tail == "own-cc":
        headers.append(("cache-control", "public, max-age=5"))
    elif tail == "zero-age":
        headers.append(("cache-control", "max-age=0"))
    elif tail == "vary-star":
        headers.append(("vary", "*"))
    elif tail == "vary-lang":
        headers.append(("vary", "Accept-Language"))
    elif tail == "upstream":
        headers += [("age", "100"), ("x-cache", "HIT"), ("x-cache-ttl", "9")]
    elif tail == "sse":
        headers[0] = ("content-type", "text/event-stream")
    elif tail == "missing":
        status = 404
    elif tail == "boom":
        status = 500
    elif tail == "created":
        status = 201
    elif tail == "fragile" and method not in ("GET", "HEAD"):
        status = 409  # a write the app refuses: nothing changed
    if tail == "big":
        return status, headers, [body, b"x" * BIG, b"y" * BIG, b"z" * BIG]
    return status, headers, [body]


def make_asgi_app(state: AppState) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        user = scope.get("user")
        status, headers, chunks = respond(
            state,
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            getattr(user, "username", None),
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers],
            }
        )
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )

    return app


def make_wsgi_app(state: AppState) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status, headers, chunks = respond(
            state,
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ.get("QUERY_STRING", ""),
            environ.get("REMOTE_USER"),
        )
        start_response(f"{status} Whatever", headers)

        def stream() -> Iterator[bytes]:
            yield from chunks

        return stream()

    return app


class _User:
    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.username = name


def asgi_auth(app: Any) -> Any:
    """Stands in for AuthenticationMiddleware: `X-Test-User` becomes scope["user"]."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for key, value in scope.get("headers", []):
            if key == b"x-test-user":
                scope["user"] = _User(value.decode())
        await app(scope, receive, send)

    return wrapper


def wsgi_auth(app: Any) -> Any:
    """Stands in for the server's authentication: `X-Test-User` becomes REMOTE_USER."""

    def wrapper(environ: dict[str, Any], start_response: Any) -> Any:
        if "HTTP_X_TEST_USER" in environ:
            environ["REMOTE_USER"] = environ["HTTP_X_TEST_USER"]
        return app(environ, start_response)

    return wrapper


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
        return int(text.split("call=")[1].split()[0]) if "call=" in text else None


class Harness:
    """The same requests through either adapter; `kind` is "asgi" or "wsgi"."""

    def __init__(
        self, kind: str, config: dict[str, Any], backend: dict[str, Any], **kwargs: Any
    ) -> None:
        self.kind = kind
        self.state = AppState()
        config = {"redis_url": backend["url"], **config}
        if backend["url"].startswith("redis://"):
            # Semantics, not timing: on a loaded 2-core CI machine a real Redis call now and
            # then takes longer than the 100 ms default, and a BYPASS would fail the row (the
            # fail-open tests set their own timeout).
            config.setdefault("redis_timeout", 0.5)
        if kind == "asgi":
            self.middleware: Any = CacheMiddleware(
                make_asgi_app(self.state), config=config, store=backend["async_store"], **kwargs
            )
            transport: Any = httpx.ASGITransport(app=asgi_auth(self.middleware))
            self.async_client = httpx.AsyncClient(transport=transport, base_url="http://t")
        else:
            self.middleware = WSGICacheMiddleware(
                make_wsgi_app(self.state), config=config, store=backend["sync_store"], **kwargs
            )
            self.client = httpx.Client(
                transport=httpx.WSGITransport(app=wsgi_auth(self.middleware)), base_url="http://t"
            )

    async def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        # Each step is its own request: no cookie jar carries a Set-Cookie into the next one.
        if self.kind == "asgi":
            self.async_client.cookies.clear()
            response = await self.async_client.request(
                method, target, headers=headers, content=body or None
            )
        else:
            self.client.cookies.clear()
            response = self.client.request(method, target, headers=headers, content=body or None)
        return Reply(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        if self.kind == "asgi":
            await self.async_client.aclose()
        else:
            self.client.close()
