"""RESP2, the little of it the lean Redis connections speak (pipelined_get.py for the event
loop, direct_get.py for threads): encoding a command, parsing one reply, the handshake.

Replies are length-checked and bounded, so a confused server cannot make a caller allocate
without limit; anything unexpected raises ConnectionError, and the caller drops the connection.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GET_COMMAND",
    "OK",
    "ReplyError",
    "encode_arg",
    "encode_command",
    "handshake_commands",
    "parse_reply",
]

_MAX_BULK = 512 * 1024 * 1024  # Redis' own proto-max-bulk-len default
_MAX_ITEMS = 1024 * 1024  # elements of one array reply
_MAX_DEPTH = 4  # nesting of array replies (our scripts return flat values)
OK = object()  # a status reply (+OK, +QUEUED...)


class ReplyError(Exception):
    """Redis answered with an error reply (-ERR ...)."""


def encode_arg(value: Any) -> bytes:
    """A command argument as redis-py's encoder would send it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def handshake_commands(db: int, username: str | None, password: str | None) -> list[bytes]:
    """AUTH and SELECT, as a new connection sends them before its first command."""
    handshake: list[bytes] = []
    if password is not None:
        auth = (username.encode(), password.encode()) if username else (password.encode(),)
        handshake.append(encode_command(b"AUTH", *auth))
    if db:
        handshake.append(encode_command(b"SELECT", str(db).encode()))
    return handshake


def parse_reply(buf: bytearray, pos: int = 0, depth: int = 0) -> tuple[Any, int] | None:
    """One RESP2 reply at `pos`: (value, position after it), or None when incomplete. Bulk
    strings, statuses, errors, integers and (script results) arrays, bounded in size and depth."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 0x24:  # $: bulk string
        length = _length(buf, pos, end)
        if length < 0:
            return None, end + 2
        if length > _MAX_BULK:
            raise ConnectionError("oversized reply from Redis")
        nxt = end + 2 + length + 2
        if len(buf) < nxt:
            return None
        return bytes(buf[end + 2 : end + 2 + length]), nxt
    if kind == 0x3A:  # :: integer
        return _length(buf, pos, end), end + 2
    if kind == 0x2B:  # +: status (AUTH, SELECT, SCRIPT LOAD...)
        return OK, end + 2
    if kind == 0x2D:  # -: error reply
        return ReplyError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    if kind == 0x2A:  # *: array
        count = _length(buf, pos, end)
        if count < 0:
            return None, end + 2
        if count > _MAX_ITEMS or depth >= _MAX_DEPTH:
            raise ConnectionError("oversized or too deeply nested reply from Redis")
        items: list[Any] = []
        nxt = end + 2
        for _ in range(count):
            parsed = parse_reply(buf, nxt, depth + 1) if nxt < len(buf) else None
            if parsed is None:
                return None
            item, nxt = parsed
            items.append(item)
        return items, nxt
    raise ConnectionError(f"unexpected reply type {chr(kind)!r} from Redis")


def _length(buf: bytearray, pos: int, end: int) -> int:
    try:
        return int(buf[pos + 1 : end])
    except ValueError:
        raise ConnectionError("malformed length from Redis") from None


# `encode_command(b"GET", key)` as a template, `GET_COMMAND % (len(key), key)`: every HIT on
# Redis sends one, and the template spares it the call and the loop.
GET_COMMAND = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"


def encode_command(*parts: bytes) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)
