"""Bare origin apps for adapter tests: one answer function, served as ASGI and as WSGI.

`answer(request)` gets the ASGI scope or the WSGI environ and returns (status, headers, body)
with str header pairs. The ASGI app answers the lifespan protocol (so a TestClient used as a
context manager starts and stops it) and sends header names lower-cased, as ASGI servers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Answer = tuple[int, list[tuple[str, str]], bytes]


def asgi_origin(answer: Callable[[dict[str, Any]], Answer]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        status, headers, body = answer(scope)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_origin(answer: Callable[[dict[str, Any]], Answer]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, headers, body = answer(environ)
        start_response(f"{status} X", headers)
        return [body]

    return app
