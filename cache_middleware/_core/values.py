"""The cache manager's value codec: msgpack behind a magic prefix, bounded when unpacking.

msgpack, not pickle: a value read back from a shared Redis must never be able to run code.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .entry import unpack_bounded

__all__ = ["VALUE_MAGIC", "CorruptValue", "decode_value", "encode_value"]

VALUE_MAGIC = b"CMV\x01"


class CorruptValue(ValueError):
    """The bytes under a key are not a value this version wrote."""


def encode_value(value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"cache values must be msgpack-serializable (None, bool, int, float, str, bytes, "
            f"list, dict): {exc}"
        ) from exc
    return VALUE_MAGIC + packed


def decode_value(data: bytes) -> Any:
    if not data.startswith(VALUE_MAGIC):
        raise CorruptValue("not a cache-middleware value (bad magic or version)")
    size = len(data)
    return unpack_bounded(data, len(VALUE_MAGIC), CorruptValue, size, size)
