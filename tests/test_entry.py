"""The stored record: versioned, bounded, and every foreign value is a clean CorruptEntry."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_middleware._core.entry import (
    MAGIC,
    CachedResponse,
    CorruptEntry,
    VaryRecord,
    decode_entry,
    encode_entry,
    encode_vary,
)

ENTRY = CachedResponse(200, [(b"content-type", b"application/json")], b'{"a":1}', 1700000000.5, 600)


def test_round_trip() -> None:
    assert decode_entry(encode_entry(ENTRY)) == ENTRY
    stale = CachedResponse(404, [], b"", 1.0, 30, stale_while_revalidate=5, stale_if_error=60)
    assert decode_entry(encode_entry(stale)) == stale
    assert decode_entry(encode_vary(("accept-language", "origin"))) == VaryRecord(
        ("accept-language", "origin")
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b'{"json": true}',
        MAGIC,
        MAGIC + b"\xc1",
        MAGIC + msgpack.packb([200, [], b"x", 1.0]),
        MAGIC + msgpack.packb([200, [], b"x", 1.0, 5]),  # format 1's shape under format 2
        MAGIC + msgpack.packb([200, [], b"x", 1.0, 5, -1, 0]),
        b"CMR\x01" + msgpack.packb([200, [], b"x", 1.0, 5]),  # an older format: a MISS
        b"CMY\x01" + msgpack.packb([["ok", 3]]),
        b"CMY\x01" + msgpack.packb([[]]),
        b"CMY\x01" + msgpack.packb([["a"]]) + b"trailing",
        MAGIC + msgpack.packb(["200", [], b"x", 1.0, 5]),
        MAGIC + msgpack.packb([200, [["a", "b"]], b"x", 1.0, 5]),
        MAGIC + msgpack.packb([200, [[b"a"]], b"x", 1.0, 5]),
        MAGIC + msgpack.packb([200, {}, b"x", 1.0, 5]),
        # No map of any size or key type is read: an entry holds none.
        MAGIC + msgpack.packb([200, [], b"x", 1.0, 5, 0, {1: 2}]),
        MAGIC + msgpack.packb([200, [], b"x", 1.0, 5, 0, {"a": 2}]),
        MAGIC + msgpack.packb([99, [], b"x", 1.0, 5]),
        MAGIC + msgpack.packb([200, [], "text", 1.0, 5]),
        b"CMR\x02" + msgpack.packb([200, [], b"x", 1.0, 5]),
        # A header claiming 4 GiB must be refused without allocating it.
        MAGIC + b"\x95\xcc\xc8\x90\xc6\xff\xff\xff\xff",
        encode_entry(ENTRY)[:-3],
    ],
)
def test_foreign_or_corrupt_values_are_rejected(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(CorruptEntry):
        decode_entry(MAGIC + data)
