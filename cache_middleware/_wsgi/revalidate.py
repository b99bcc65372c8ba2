"""Revalidation under WSGI (RFC 9111 §4.3, decided by `_core/revalidation.py`): the environ
the app gets carries the stored validators instead of the client's preconditions, and a 304
that selects the stored response reaches the MISS recorder as that response, its headers
updated; any other answer passes as it came."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .._core.entry import CachedResponse
from .._core.revalidation import CONDITIONAL_REQUEST_FIELDS, conditional_headers, revalidated
from .request import (
    Environ,
    ExcInfo,
    StartResponse,
    WSGIApp,
    environ_name,
    status_code,
    status_line,
    to_bytes,
    to_str,
)

__all__ = ["conditional_environ", "revalidating"]

_PRECONDITIONS = frozenset(environ_name(name) for name in CONDITIONAL_REQUEST_FIELDS)


def conditional_environ(environ: Environ, entry: CachedResponse) -> Environ:
    """A copy of `environ` with the stored validators as its only preconditions."""
    asked = {k: v for k, v in environ.items() if k not in _PRECONDITIONS}
    for name, value in conditional_headers(entry):
        asked[environ_name(name.decode("latin-1"))] = value.decode("latin-1")
    return asked


def revalidating(app: WSGIApp, entry: CachedResponse) -> WSGIApp:
    """`app`, whose 304 for `entry` is answered as `entry` with the 304's headers merged in."""

    def asked(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        swapped = False

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal swapped
            merged = revalidated(entry, status_code(status), to_bytes(headers))
            if merged is None or exc_info is not None:
                return start_response(status, headers, exc_info)
            swapped = True
            return start_response(status_line(entry.status), to_str(merged))

        result = app(environ, start)

        def body() -> Iterator[bytes]:
            try:
                for chunk in result:
                    if not swapped:
                        yield chunk  # the app's own answer, chunk by chunk
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if swapped:
                yield entry.body  # a 304 has no content: the stored body is the answer's

        return body()

    return asked
