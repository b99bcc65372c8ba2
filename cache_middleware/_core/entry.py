"""A stored response (or a Vary record) and its versioned msgpack codec.

Wire format: 4 magic bytes, then a msgpack array.

* `CMR\\x02` + `[status, [[name, value], ...], body, stored_at, ttl, swr, sie]`: a response,
  fresh for `ttl` seconds after `stored_at`, then usable stale for `swr` seconds while it is
  refreshed in the background and for `sie` seconds when the app fails (RFC 5861).
* `CMY\\x01` + `[[header-name, ...]]`: a Vary record. It sits at a response's primary key and
  names the request headers its variants are keyed by (RFC 9111 §4.1).

Anything else under a key (another program's value, a truncated write, an older or newer
format) decodes to `CorruptEntry`, which the adapters treat as a MISS and delete. Unpacking is
bounded: no byte string may claim more than the input holds, and lists are capped.

A record is also corrupt when it holds what this cache never writes, since replaying it would
serve everyone something no route could have stored (someone with write access to the store
forged it, or another program wrote there): a status outside `STANDARD_STATUSES` (a 1xx or a 101
would switch the client's connection to another protocol or is not a response at all, a 206 is a
part, a 304 has no body of its own); a header name that is not a lower-case RFC 9110 token
(names are stored lower-cased); a value with CR, LF or NUL (response splitting, RFC 9110 §5.5); a
hop-by-hop field, `Set-Cookie` or one of the headers the cache sets itself; a `Content-Length`
other than the body's (the client would read the rest of the body as the next response), or any
on a 204. The policy reads more strictly where only gateway routes could have written the
record: a status outside `STORABLE_STATUSES` is corrupt there too (`Reader.decoded`, `on_read`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from .headers import HOP_BY_HOP

__all__ = [
    "MAGIC",
    "STANDARD_STATUSES",
    "STORABLE_STATUSES",
    "CachedResponse",
    "CorruptEntry",
    "HeldEntry",
    "VaryRecord",
    "decode_entry",
    "encode_entry",
    "encode_vary",
    "unpack_bounded",
]

MAGIC = b"CMR\x02"
VARY_MAGIC = b"CMY\x01"
MAX_HEADERS = 256
# The statuses a gateway route can be configured to store (config's `statuses:` accepts exactly
# these: RFC 9110 §15.1's heuristically cacheable ones, 206 and 5xx but 501 never), and the ones
# a `mode: standard` route stores with heuristic freshness.
STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# What a `mode: standard` route stores when the app gives the response explicit freshness
# (RFC 9111 §3: any final status): every final status but 206 (a part) and 304 (no body of its
# own). No other status is ever written, so no other is ever replayed.
STANDARD_STATUSES = frozenset(range(200, 600)) - {206, 304}
# Fields a stored record never holds: connection-specific ones (Content-Length is written once,
# by the cache, from the body), a cookie (a response that sets one is not stored), and the
# headers the cache sets on every replay.
_NEVER_STORED = (HOP_BY_HOP - {b"content-length"}) | {
    b"set-cookie",
    b"x-cache",
    b"x-cache-key",
    b"x-cache-ttl",
    b"age",
    b"cache-status",
    b"cache-tag",
}
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_UNSAFE_VALUE = re.compile(rb"[\r\n\x00]")


class CorruptEntry(ValueError):
    """The bytes under a key are not a cache entry this version can read."""


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    ttl: int
    stale_while_revalidate: int = 0
    stale_if_error: int = 0


@dataclass(frozen=True, slots=True)
class VaryRecord:
    names: tuple[str, ...]


def encode_entry(entry: CachedResponse) -> bytes:
    packed: bytes = msgpack.packb(
        [
            entry.status,
            [list(pair) for pair in entry.headers],
            entry.body,
            entry.stored_at,
            entry.ttl,
            entry.stale_while_revalidate,
            entry.stale_if_error,
        ],
        use_bin_type=True,
    )
    return MAGIC + packed


def encode_vary(names: tuple[str, ...]) -> bytes:
    packed: bytes = msgpack.packb([list(names)], use_bin_type=True)
    return VARY_MAGIC + packed


def unpack_bounded(
    data: bytes, offset: int, corrupt: type[ValueError], max_items: int, max_pairs: int
) -> Any:
    """msgpack-decode `data[offset:]` so that no input makes it allocate more than the input
    holds: a string or byte string at most as long as `data`, a list of at most `max_items`,
    a map of at most `max_pairs`, no extension type. What does not decode raises `corrupt`."""
    size = len(data)
    try:
        return msgpack.unpackb(
            memoryview(data)[offset:],
            raw=False,
            strict_map_key=False,
            max_bin_len=size,
            max_str_len=size,
            max_array_len=max_items,
            max_map_len=max_pairs,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise corrupt(f"undecodable msgpack: {exc.__class__.__name__}") from exc


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


class HeldEntry(bytes):
    """Entry bytes that remember what they decode to. The near-cache keeps these, so a HIT
    served from it decodes nothing; the decoded values are immutable, so sharing them between
    requests (and threads) is safe."""

    decoded: CachedResponse | VaryRecord | None = None


def decode_entry(data: bytes) -> CachedResponse | VaryRecord:
    if type(data) is HeldEntry:
        decoded = data.decoded
        if decoded is None:
            decoded = data.decoded = _decode(data)  # a benign race: both decode alike
        return decoded
    return _decode(data)


def _decode(data: bytes) -> CachedResponse | VaryRecord:
    if data.startswith(VARY_MAGIC):
        raw = unpack_bounded(data, len(VARY_MAGIC), CorruptEntry, MAX_HEADERS, 0)
        if (
            isinstance(raw, list)
            and len(raw) == 1
            and isinstance(raw[0], list)
            and raw[0]
            and all(isinstance(name, str) and name for name in raw[0])
        ):
            return VaryRecord(tuple(raw[0]))
        raise CorruptEntry("vary record has the wrong shape")
    if not data.startswith(MAGIC):
        raise CorruptEntry("not a cache-middleware entry (bad magic or version)")
    raw = unpack_bounded(data, len(MAGIC), CorruptEntry, MAX_HEADERS, 0)
    if not isinstance(raw, list) or len(raw) != 7:
        raise CorruptEntry("entry has the wrong shape")
    status, headers, body, stored_at, ttl, swr, sie = raw
    if not (
        type(status) is int
        and status in STANDARD_STATUSES
        and isinstance(body, bytes)
        and type(stored_at) in (int, float)
        and math.isfinite(stored_at)
        and _is_int(ttl, 0, 2**31)
        and _is_int(swr, 0, 2**31)
        and _is_int(sie, 0, 2**31)
        and isinstance(headers, list)
    ):
        raise CorruptEntry("entry fields have the wrong types")
    pairs: list[tuple[bytes, bytes]] = []
    lengths = 0
    for pair in headers:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], bytes)
            and isinstance(pair[1], bytes)
        ):
            raise CorruptEntry("header is not a pair of byte strings")
        name, value = pair
        if name in _NEVER_STORED or not _FIELD_NAME.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise CorruptEntry("entry holds a header the cache never stores")
        if name == b"content-length":
            lengths += 1
            if status == 204 or lengths > 1 or value != b"%d" % len(body):
                raise CorruptEntry("entry's Content-Length is not its body's")
        pairs.append((name, value))
    return CachedResponse(status, pairs, body, float(stored_at), ttl, swr, sie)
