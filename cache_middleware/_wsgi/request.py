"""What the WSGI adapter reads of a request (the environ as the policy's `RequestSource`, its
path and raw target, an HTTP/2 body with no length) and the header and status conversions
between PEP 3333's str pairs and the core's lower-case byte pairs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from .._core.policy import RequestView

__all__ = [
    "STREAM_FRAMED",
    "Environ",
    "ExcInfo",
    "Prefixed",
    "StartResponse",
    "WSGIApp",
    "WsgiRequest",
    "environ_name",
    "has_unframed_body",
    "request_path",
    "status_code",
    "status_line",
    "target_of",
    "to_bytes",
    "to_str",
]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def status_line(status: int) -> str:
    return STATUS_LINES.get(status) or f"{status} Unknown"


def to_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def to_str(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


@functools.lru_cache(maxsize=256)
def environ_name(header: str) -> str:
    """`x-forwarded-host` -> `HTTP_X_FORWARDED_HOST` (PEP 3333), CONTENT_* without the prefix."""
    if header in ("content-type", "content-length"):
        return header.upper().replace("-", "_")
    return "HTTP_" + header.upper().replace("-", "_")


def request_path(environ: Environ) -> str:
    # PEP 3333 hands PATH_INFO over as latin-1-decoded bytes; decode it as werkzeug does, so the
    # key is built from the same path the app's router matches.
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        return raw.encode("latin-1").decode("utf-8", "replace") or "/"
    except UnicodeEncodeError:  # a server that already decoded it (not PEP 3333, but seen)
        return str(raw) or "/"


def target_of(environ: Environ) -> str | None:
    """The raw request-target path (gunicorn's RAW_URI, else REQUEST_URI: werkzeug, uWSGI and
    mod_wsgi set it), for the path guard; None when the server gives neither."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw.partition("?")[0] if isinstance(raw, str) else None


# HTTP/2 and HTTP/3 frame a body by the stream, not by Content-Length or Transfer-Encoding: a
# bridge (a2wsgi) passes such a body in wsgi.input with no CONTENT_LENGTH at all.
STREAM_FRAMED = frozenset({"HTTP/2", "HTTP/2.0", "HTTP/3", "HTTP/3.0"})


def has_unframed_body(environ: Environ) -> bool:
    """Whether an HTTP/2 or HTTP/3 request without a Content-Length has body bytes. One byte is
    read to know; it is put back in front of the rest, so the app still reads the whole body.
    The stream's own end frames the input (no wait beyond the request), unlike HTTP/1.x, where
    only the headers are read."""
    if environ.get("CONTENT_LENGTH"):
        return False  # a declared length is checked with the other headers by plan()
    stream = environ.get("wsgi.input")
    if stream is None:
        return False
    first = stream.read(1)
    if not first:
        return False
    environ["wsgi.input"] = Prefixed(first, stream)
    return True


class Prefixed:
    """A wsgi.input whose first byte was read already: it comes back first."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def read(self, size: int | None = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.read() if size is None else self._rest.read(size))
        if size == 0:
            return b""
        head = self._take_head()
        more = -1 if size is None or size < 0 else size - len(head)
        return head + bytes(self._rest.read(more) if more != 0 else b"")

    def readline(self, size: int = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.readline(size))
        head = self._take_head()
        if head.endswith(b"\n") or size == len(head):
            return head
        return head + bytes(self._rest.readline(size - len(head) if size > 0 else -1))

    def __iter__(self) -> Iterator[bytes]:
        line = self.readline()
        while line:
            yield line
            line = self.readline()


class WsgiRequest:
    __slots__ = ("environ",)

    def __init__(self, environ: Environ) -> None:
        self.environ = environ

    def header(self, name: str) -> str | None:
        if not name:
            return None
        if name == "content-type":
            value = self.environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = self.environ.get("CONTENT_LENGTH")
        else:
            value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value if isinstance(value, str) else None

    def has_any(self, names: frozenset[str]) -> bool:
        environ = self.environ
        return any(environ_name(name) in environ for name in names)

    def default_user(self) -> str | None:
        user = self.environ.get("REMOTE_USER")
        return user if isinstance(user, str) and user else None

    def native(self) -> object:
        return self.environ

    def view(self) -> RequestView:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in self.environ.items()
            if key.startswith("HTTP_") and isinstance(value, str)
        }
        # PEP 3333 keeps these two out of HTTP_*; the ASGI view has them, so this one must too.
        for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
            value = self.environ.get(key)
            if isinstance(value, str) and value:
                headers[name] = value
        return RequestView(
            method=self.environ.get("REQUEST_METHOD", "GET"),
            path=request_path(self.environ),
            query_string=self.environ.get("QUERY_STRING", ""),
            headers=headers,
        )


def status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0
