"""Header helpers named for the HTTP job they do (in the spirit of django.utils.cache).

Headers are ASGI-style lists of (name, value) byte pairs with lower-case names; the WSGI adapter
converts at its edge. Parsing is tolerant: garbage never raises, it only fails to grant caching.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "HeaderList",
    "get_header",
    "has_header",
    "parse_cache_control",
    "vary_names",
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
