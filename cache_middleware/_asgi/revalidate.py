"""Revalidation under ASGI (RFC 9111 §4.3, decided by `_core/revalidation.py`): the request
the app gets carries the stored validators instead of the client's preconditions, and a 304
that selects the stored response reaches the MISS recorder as that response, its headers
updated; any other answer passes as it came."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._core.entry import CachedResponse
from .._core.revalidation import CONDITIONAL_REQUEST_FIELDS, conditional_headers, revalidated
from .request import Message, Receive, Scope, Send

__all__ = ["conditional_scope", "revalidating"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def conditional_scope(scope: Scope, entry: CachedResponse) -> Scope:
    """`scope` with the stored validators as its only preconditions."""
    headers = [
        (name, value)
        for name, value in scope["headers"]
        if bytes(name).decode("latin-1").lower() not in CONDITIONAL_REQUEST_FIELDS
    ]
    return {**scope, "headers": [*headers, *conditional_headers(entry)]}


def revalidating(app: ASGIApp, entry: CachedResponse) -> ASGIApp:
    """`app`, whose 304 for `entry` is answered as `entry` with the 304's headers merged in."""

    async def asked(scope: Scope, receive: Receive, send: Send) -> None:
        swapped = False

        async def swap(message: Message) -> None:
            nonlocal swapped
            kind = message["type"]
            if kind == "http.response.start":
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                merged = revalidated(entry, message["status"], headers)
                if merged is not None:
                    swapped = True
                    message = {"type": kind, "status": entry.status, "headers": merged}
            elif swapped and kind == "http.response.body":
                if message.get("more_body", False):
                    return  # a 304 has no content: whatever the app sends is dropped
                message = {"type": kind, "body": entry.body, "more_body": False}
            await send(message)

        await app(scope, receive, swap)

    return asked
