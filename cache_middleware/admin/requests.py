"""Validation of admin request bodies: a clear 400 message, and nothing done, on bad input.

`BodyLimit` stops reading a body at MAX_BODY bytes and answers 413: a declared Content-Length
over the limit is refused before any of the body is read, and a chunked body (no length) or one
longer than it said is cut off as soon as what arrived passes the limit, so a 64 MiB body costs
64 KiB of reading, not 64 MiB of memory.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BODY",
    "BadRequest",
    "BodyLimit",
    "InvalidateRequest",
    "parse_clear",
    "parse_invalidate",
    "parse_warm",
]

MAX_ITEMS = 100
MAX_LENGTH = 256
MAX_BODY = 64 * 1024
KINDS = ("patterns", "paths", "tags", "keys")


class BadRequest(ValueError):
    """The request body is not what the endpoint accepts; the message says why."""


@dataclass(frozen=True)
class InvalidateRequest:
    patterns: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    dry_run: bool = False


def _object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body over {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise BadRequest("body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return data


def _items(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise BadRequest(f"{name}: must be a list of strings")
    if len(value) > MAX_ITEMS:
        raise BadRequest(f"{name}: at most {MAX_ITEMS} items, got {len(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise BadRequest(f"{name}[{i}]: must be a non-empty string")
        if len(item) > MAX_LENGTH:
            raise BadRequest(f"{name}[{i}]: at most {MAX_LENGTH} characters, got {len(item)}")
        if any(unicodedata.category(c) == "Cc" for c in item):  # C0, DEL and C1 controls
            raise BadRequest(f"{name}[{i}]: control characters are not allowed")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in item):  # `\ud800` in JSON: not text
            raise BadRequest(f"{name}[{i}]: lone surrogates are not allowed")
    return list(value)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false")
    return value


def parse_invalidate(body: bytes) -> InvalidateRequest:
    data = _object(body, {*KINDS, "dry_run"})
    lists = {kind: _items(data, kind) for kind in KINDS}
    total = sum(len(items) for items in lists.values())
    if total == 0:
        raise BadRequest("nothing to invalidate: give patterns, paths, tags or keys")
    if total > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS} items in all, got {total}")
    for i, path in enumerate(lists["paths"]):
        if not path.startswith("/"):
            raise BadRequest(f"paths[{i}]: a request path starts with '/'")
    return InvalidateRequest(**lists, dry_run=_flag(data, "dry_run"))


def parse_warm(body: bytes) -> list[str]:
    data = _object(body, {"paths"})
    paths = _items(data, "paths")
    if not paths:
        raise BadRequest("paths: give at least one path to warm")
    for i, path in enumerate(paths):
        if not path.startswith("/") or path.startswith("//"):
            raise BadRequest(f"paths[{i}]: a request path starts with a single '/'")
    return paths


def parse_clear(body: bytes) -> None:
    data = _object(body, {"confirm"})
    if data.get("confirm") is not True:
        raise BadRequest('clearing removes every entry: send {"confirm": true}')


# -- the body limit -----------------------------------------------------------------------------

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    """Raised from `receive` once more than the limit has arrived: unwinds the handler."""


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length, when it has exactly one well-formed value."""
    values = [v for k, v in headers if k.lower() == b"content-length"]
    if len(values) != 1 or not values[0].strip().isdigit():
        return None  # absent, repeated or malformed: what arrives is counted all the same
    return int(values[0])


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, read no further than that.

    `app.add_middleware(BodyLimit)` on the admin app. The answer has the admin's error shape,
    `{"success": false, "error": "request body over 65536 bytes"}`, and `Cache-Control:
    no-store`."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(list(scope.get("headers", [])))
        if declared is not None and declared > self.limit:
            await self._refuse(send)  # not one byte of the body read
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not started:
                        refused = True
                        await self._refuse(send)
                    raise _TooLarge  # unwinds the endpoint: nothing more is read
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer (an error page from an outer layer is dropped)
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not refused:
                raise  # an endpoint answered before reading its body: nothing left to say

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"success": False, "error": f"request body over {self.limit} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
