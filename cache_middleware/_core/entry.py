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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "MAGIC",
    "CachedResponse",
    "CorruptEntry",
    "HeldEntry",
    "VaryRecord",
    "decode_entry",
    "encode_entry",
    "encode_vary",
]

MAGIC = b"CMR\x02"
VARY_MAGIC = b"CMY\x01"
MAX_HEADERS = 256


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


def _unpack(data: bytes, offset: int) -> Any:
    size = len(data)
    try:
        return msgpack.unpackb(
            memoryview(data)[offset:],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=size,
            max_str_len=size,
            max_array_len=MAX_HEADERS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise CorruptEntry(f"undecodable entry: {exc.__class__.__name__}") from exc


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
        raw = _unpack(data, len(VARY_MAGIC))
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
    raw = _unpack(data, len(MAGIC))
    if not isinstance(raw, list) or len(raw) != 7:
        raise CorruptEntry("entry has the wrong shape")
    status, headers, body, stored_at, ttl, swr, sie = raw
    if not (
        _is_int(status, 100, 999)
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
    for pair in headers:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], bytes)
            and isinstance(pair[1], bytes)
        ):
            raise CorruptEntry("header is not a pair of byte strings")
        pairs.append((pair[0], pair[1]))
    return CachedResponse(status, pairs, body, float(stored_at), ttl, swr, sie)
