"""Header helpers named for the HTTP job they do (in the spirit of django.utils.cache).

Headers are ASGI-style lists of (name, value) byte pairs with lower-case names; the WSGI adapter
converts at its edge. Parsing is tolerant: garbage never raises, it only fails to grant caching.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "HeaderList",
    "connection_listed",
    "delta_seconds",
    "get_header",
    "has_header",
    "parse_cache_control",
    "parse_etag_list",
    "parse_http_date",
    "vary_names",
    "weak_match",
]

HeaderList = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: connection-specific fields are never stored or replayed.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",  # recomputed from the stored body, so it is always right
    }
)


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """All values of `name`, joined by `, ` as RFC 9110 §5.3 allows, or None."""
    found: list[bytes] = []
    for key, value in headers:
        if key.lower() == name:
            found.append(value)
    if not found:
        return None
    return found[0] if len(found) == 1 else b", ".join(found)


def has_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _split_list(value: bytes) -> list[bytes]:
    """Split a comma-separated field value, keeping quoted strings whole."""
    items: list[bytes] = []
    current = bytearray()
    quoted = False
    escaped = False
    for byte in value:
        char = bytes((byte,))
        if escaped:
            current += char
            escaped = False
        elif quoted and char == b"\\":
            current += char
            escaped = True
        elif char == b'"':
            current += char
            quoted = not quoted
        elif char == b"," and not quoted:
            items.append(bytes(current).strip())
            current.clear()
        else:
            current += char
    items.append(bytes(current).strip())
    return [item for item in items if item]


def parse_cache_control(value: bytes | None) -> dict[str, str | None]:
    """RFC 9111 §5.2: directive names are case-insensitive; arguments may be quoted.

    Returns {directive: argument-or-None}; the first occurrence of a directive wins. Never raises.
    """
    if not value:
        return {}
    directives: dict[str, str | None] = {}
    for item in _split_list(value):
        name, sep, arg = item.partition(b"=")
        key = name.strip().lower().decode("latin-1")
        if not key or key in directives:
            continue
        if not sep:
            directives[key] = None
            continue
        text = arg.strip().decode("latin-1")
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1].replace('\\"', '"')
        directives[key] = text
    return directives


def vary_names(value: bytes | None) -> list[bytes]:
    """Normalized (lower-case, stripped) field names listed by a Vary header."""
    if not value:
        return []
    return [item.lower() for item in _split_list(value)]


def connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Field names a `Connection` header lists: hop-by-hop as well (RFC 9110 §7.6.1)."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.lower() for token in _split_list(value))
    return listed


def parse_etag_list(value: bytes | None) -> list[bytes] | None:
    """An If-None-Match value as a list of entity-tags; `[b"*"]` for `*`; None when absent.

    Tags keep their quotes; the weak prefix is kept so callers can compare weakly.
    """
    if value is None:
        return None
    return [item for item in _split_list(value) if item]


def weak_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: opaque tags equal, weakness ignored."""
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def parse_http_date(value: bytes | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as a POSIX timestamp, or None when absent or invalid."""
    if not value:
        return None
    from email.utils import parsedate_to_datetime

    try:
        parsed = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None  # RFC 9110 dates are always GMT; a date without a zone is not one
    return parsed.timestamp()


def delta_seconds(value: str | None) -> int | None:
    """A Cache-Control delta-seconds argument (RFC 9111 §1.2.2), or None when unusable.

    Digits only; values too large for 31 bits are capped at 2**31 as the RFC says; a negative,
    empty, quoted-garbage or non-ASCII value is unusable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    return min(int(value[:12]), 2**31)
