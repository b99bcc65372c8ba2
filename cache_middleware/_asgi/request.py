"""What the ASGI adapter reads of a request: the scope as the policy's `RequestSource`, the
raw target for the path guard, and a `receive` whose first message was peeked at."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._core.policy import RequestView

__all__ = [
    "HEADER_FRAMED",
    "AsgiRequest",
    "Message",
    "Peeked",
    "Receive",
    "Scope",
    "Send",
    "target_of",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# HTTP versions whose request body is announced by Content-Length or Transfer-Encoding (the
# guards read those); HTTP/2 and HTTP/3 send a body with neither.
HEADER_FRAMED = frozenset({"1.0", "1.1"})


def target_of(scope: Scope) -> str | None:
    """The raw request-target path (`raw_path`), for the path guard; None when not given."""
    raw = scope.get("raw_path")
    # ASGI's raw_path holds no query string; a `?` in it would be no oddity either.
    return raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else None


class Peeked:
    """`receive` with its first message already read, to see whether an HTTP/2 or HTTP/3
    request has a body (bytes, or more to come); the app still gets every message, that one
    first. A disconnect has no body and is handed on as it came."""

    __slots__ = ("first", "has_body", "receive")

    def __init__(self, first: Message | None, receive: Receive) -> None:
        self.first = first
        self.receive = receive
        self.has_body = first is not None and bool(
            first.get("body") or first.get("more_body", False)
        )

    async def __call__(self) -> Message:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        return await self.receive()


class AsgiRequest:
    """The `RequestSource` of an ASGI scope (made only for paths a route covers)."""

    __slots__ = ("_headers", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        # Built here: a request on a covered path always asks (the poisoning guards do).
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            # ASGI gives bytes; servers lower-case the names, but the spec does not bind all.
            # `_` read as `-`: uvicorn passes `X_Forwarded_Host` on, and a WSGI bridge (a2wsgi)
            # or Django's ASGI handler turn it into HTTP_X_FORWARDED_HOST (the guards' name).
            name = key.decode("latin-1").lower().replace("_", "-")
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        self._headers = headers

    def header(self, name: str) -> str | None:
        return self._headers.get(name)

    def has_any(self, names: frozenset[str]) -> bool:
        return not names.isdisjoint(self._headers)

    def default_user(self) -> str | None:
        # scope["user"] is set by Starlette's AuthenticationMiddleware, which must wrap this one.
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        for attr in ("identity", "username", "display_name"):
            try:
                value = getattr(user, attr, None)
            except NotImplementedError:
                continue
            if value:
                return str(value)
        return None

    def native(self) -> object:
        return self.scope

    def view(self) -> RequestView:
        return RequestView(
            method=self.scope["method"],
            path=self.scope["path"],
            query_string=self.scope.get("query_string", b"").decode("latin-1"),
            headers=dict(self._headers),
        )
