"""Revalidation (RFC 9111 §4.3): a stored response past its freshness, asked about again.

Instead of fetching it whole, the cache sends the app a conditional request with the stored
validators (§4.3.1: `If-None-Match` with the stored `ETag`, `If-Modified-Since` with the stored
`Last-Modified`). A 304 means the stored response is still good: its headers are updated with
the 304's (§4.3.4) and it is stored again and served, its body never sent by the app. Any other
answer is a new response, handled as a MISS.

The adapters do the I/O: they add `conditional_headers` to the request they pass the app, and
turn a 304 that `revalidated` accepts into the stored response with the merged headers, which
then goes through the MISS recording like any answer (stored under the fill lease, replayed to
the client). Used in `mode: standard` only: a gateway route refetches, as it always has.
"""

from __future__ import annotations

from .entry import CachedResponse
from .headers import HOP_BY_HOP, get_header, weak_match
from .storing import body_etag

__all__ = [
    "CONDITIONAL_REQUEST_FIELDS",
    "conditional_headers",
    "has_validator",
    "head_freshened",
    "revalidated",
]

# The client's own preconditions are not passed on with ours: the answer is for the cache
# (§4.3.1), and a client's If-None-Match is answered from the refreshed entry afterwards.
CONDITIONAL_REQUEST_FIELDS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)
# Fields a 304 never changes in the stored response (RFC 9111 §3.2: Content-Length describes
# the stored body, not the 304's; hop-by-hop fields are the connection's; the cache's own fields
# are set on replay). The 304's Age is kept: it is the upstream age of the refreshed response.
_KEPT_FROM_STORE = HOP_BY_HOP | {
    b"content-length",
    b"x-cache",
    b"x-cache-key",
    b"x-cache-ttl",
    b"cache-status",
}


def _app_etag(entry: CachedResponse) -> bytes | None:
    """The stored ETag if the app sent it (not the one the cache derived from the body, which
    the app cannot know)."""
    etag = get_header(entry.headers, b"etag")
    if etag is None or etag == body_etag(entry.body):
        return None
    return etag


def has_validator(entry: CachedResponse) -> bool:
    """Whether the app gave the stored response a validator a conditional request can use."""
    return _app_etag(entry) is not None or get_header(entry.headers, b"last-modified") is not None


def conditional_headers(entry: CachedResponse) -> list[tuple[bytes, bytes]]:
    """The precondition fields of the revalidation request (§4.3.1)."""
    out: list[tuple[bytes, bytes]] = []
    etag = _app_etag(entry)
    if etag is not None:
        out.append((b"if-none-match", etag))
    modified = get_header(entry.headers, b"last-modified")
    if modified is not None:
        out.append((b"if-modified-since", modified))
    return out


def revalidated(
    entry: CachedResponse, status: int, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]] | None:
    """The stored response's headers updated by the app's 304 (§4.3.4), or None when the answer
    is not a 304 that selects the stored response (§4.3.3: a 304 naming another strong
    validator is about another representation)."""
    if status != 304:
        return None
    new_etag = get_header(headers, b"etag")
    stored_etag = get_header(entry.headers, b"etag")
    if new_etag is not None and stored_etag is not None and not weak_match(new_etag, stored_etag):
        return None
    return _merged(entry, headers)


def head_freshened(
    entry: CachedResponse, status: int, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]] | None:
    """RFC 9111 §4.3.5: the stored GET response's headers updated by the app's 200 to a HEAD,
    or None when that answer is not about the stored representation (its `ETag`,
    `Last-Modified` or `Content-Length` differs from the stored one: the entry is then left to
    its own fate, refetched when next asked for)."""
    if status != 200:
        return None
    for name in (b"etag", b"last-modified", b"content-length"):
        new, stored = get_header(headers, name), get_header(entry.headers, name)
        if new is not None and stored is not None and new.strip() != stored.strip():
            return None
    return _merged(entry, headers)


def _merged(entry: CachedResponse, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 9111 §3.2: the stored fields, each one the new answer carries replaced by its
    value(s), but for those a 304 or HEAD never changes (`_KEPT_FROM_STORE`)."""
    updated = {name.lower() for name, _ in headers} - _KEPT_FROM_STORE
    merged = [(name, value) for name, value in entry.headers if name.lower() not in updated]
    merged.extend((name.lower(), value) for name, value in headers if name.lower() in updated)
    return merged
