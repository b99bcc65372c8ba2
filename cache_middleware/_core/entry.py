"""A stored response and its versioned msgpack codec.

Wire format: the 4 magic bytes `CMR\\x01` (format version 1), then a msgpack array
`[status, [[name, value], ...], body, stored_at, ttl]`. Anything else under a key (another
program's value, a truncated write, a future format) decodes to `CorruptEntry`, which the
adapters treat as a MISS and delete. Unpacking is bounded: no container or byte string may
claim more than the input holds, and the header list is capped.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

__all__ = ["MAGIC", "CachedResponse", "CorruptEntry", "decode_entry", "encode_entry"]

MAGIC = b"CMR\x01"
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


def encode_entry(entry: CachedResponse) -> bytes:
    packed: bytes = msgpack.packb(
        [
            entry.status,
            [list(pair) for pair in entry.headers],
            entry.body,
            entry.stored_at,
            entry.ttl,
        ],
        use_bin_type=True,
    )
    return MAGIC + packed


def decode_entry(data: bytes) -> CachedResponse:
    if not data.startswith(MAGIC):
        raise CorruptEntry("not a cache-middleware entry (bad magic or version)")
    size = len(data)
    try:
        raw = msgpack.unpackb(
            memoryview(data)[len(MAGIC) :],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=size,
            max_str_len=size,
            max_array_len=max(MAX_HEADERS, 8),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise CorruptEntry(f"undecodable entry: {exc.__class__.__name__}") from exc
    try:
        status, headers, body, stored_at, ttl = raw
        if not (
            type(status) is int
            and 100 <= status <= 999
            and isinstance(body, bytes)
            and isinstance(stored_at, (int, float))
            and type(ttl) is int
            and isinstance(headers, list)
        ):
            raise CorruptEntry("entry fields have the wrong types")
        pairs: list[tuple[bytes, bytes]] = []
        for pair in headers:
            name, value = pair
            if not (isinstance(name, bytes) and isinstance(value, bytes)):
                raise CorruptEntry("header is not a pair of byte strings")
            pairs.append((name, value))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CorruptEntry):
            raise
        raise CorruptEntry("entry has the wrong shape") from exc
    return CachedResponse(status, pairs, body, float(stored_at), ttl)
