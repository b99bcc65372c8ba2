"""Range requests answered from a stored full response (RFC 9110 §14).

A stored 200 holds the whole representation, so a `Range: bytes=...` request is answered from
it: 206 with `Content-Range` for one satisfiable range, 206 `multipart/byteranges` for several,
416 with `Content-Range: bytes */length` when none is satisfiable. An `If-Range` that does not
match the stored validator strongly (§13.1.5) gets the whole 200, as does any Range the cache
does not understand (another unit, bad syntax: §14.2 says ignore it). A response to a Range
request is never stored: only a full 200 from a request without one is.

Bounded: more than `MAX_RANGES` ranges, or ranges that would send more than twice the
representation (overlapping or many small ranges, §14.2's denial-of-service note), get the
whole 200 instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .headers import get_header, parse_http_date

__all__ = ["MAX_RANGES", "parse_ranges", "ranged_response"]

MAX_RANGES = 16
_DROPPED = frozenset({b"content-length", b"content-range"})

Headers = list[tuple[bytes, bytes]]


def parse_ranges(value: str, length: int) -> list[tuple[int, int]] | None:
    """The satisfiable byte ranges of a `Range` value, as (first, last) inclusive, in request
    order; [] when none is satisfiable; None when the value is not a bytes range set the cache
    understands (then the Range is ignored)."""
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    found: list[tuple[int, int]] = []
    specs = spec.split(",")
    if len(specs) > MAX_RANGES:
        return None
    for part in specs:
        first_text, dash, last_text = part.strip().partition("-")
        if not dash:
            return None
        first_text, last_text = first_text.strip(), last_text.strip()
        if first_text:
            if not first_text.isdigit() or (last_text and not last_text.isdigit()):
                return None
            first = int(first_text)
            last = int(last_text) if last_text else length - 1
            if last_text and last < first:
                return None  # §14.1.1: invalid, so the whole header is ignored
            if first >= length:
                continue  # unsatisfiable on its own
            found.append((first, min(last, length - 1)))
        else:
            if not last_text.isdigit():
                return None
            suffix = int(last_text)
            if suffix == 0:
                continue  # §14.1.3: a zero-length suffix is unsatisfiable
            found.append((max(length - suffix, 0), length - 1))
    if not specs:
        return None
    return found


def ranged_response(
    range_value: str | None,
    if_range: str | None,
    status: int,
    headers: Headers,
    body: bytes,
) -> tuple[int, Headers, bytes]:
    """The replay of a stored response to a request with `Range` (and `If-Range`): 206 or 416,
    or the response unchanged when the Range does not apply."""
    if range_value is None or status != 200:
        return status, headers, body
    if if_range is not None and not _if_range_matches(if_range.strip(), headers):
        return status, headers, body  # §13.1.5: the representation changed: send it whole
    length = len(body)
    ranges = parse_ranges(range_value, length)
    if ranges is None:
        return status, headers, body
    kept = [(name, value) for name, value in headers if name.lower() not in _DROPPED]
    if not ranges:
        kept.append((b"content-range", b"bytes */%d" % length))
        kept.append((b"content-length", b"0"))
        return 416, kept, b""
    if sum(last - first + 1 for first, last in ranges) > 2 * length + 80:
        return status, headers, body  # §14.2: not worth it, and a way to amplify: whole
    if len(ranges) == 1:
        first, last = ranges[0]
        kept.append((b"content-range", b"bytes %d-%d/%d" % (first, last, length)))
        part = body[first : last + 1]
        kept.append((b"content-length", str(len(part)).encode()))
        return 206, kept, part
    return _multipart(ranges, kept, body)


def _multipart(
    ranges: Sequence[tuple[int, int]], headers: Headers, body: bytes
) -> tuple[int, Headers, bytes]:
    """RFC 9110 §14.6: one part per range, each with the representation's Content-Type."""
    content_type = get_header(headers, b"content-type")
    # The same boundary for the same stored body: replays stay byte-identical.
    boundary = hashlib.sha256(body).hexdigest()[:32].encode()
    chunks: list[bytes] = []
    for first, last in ranges:
        chunks.append(b"\r\n--" + boundary + b"\r\n")
        if content_type is not None:
            chunks.append(b"content-type: " + content_type + b"\r\n")
        chunks.append(b"content-range: bytes %d-%d/%d\r\n\r\n" % (first, last, len(body)))
        chunks.append(body[first : last + 1])
    chunks.append(b"\r\n--" + boundary + b"--\r\n")
    payload = b"".join(chunks)
    out = [(name, value) for name, value in headers if name.lower() != b"content-type"]
    out.append((b"content-type", b"multipart/byteranges; boundary=" + boundary))
    out.append((b"content-length", str(len(payload)).encode()))
    return 206, out, payload


def _if_range_matches(if_range: str, headers: Headers) -> bool:
    """§13.1.5: an entity tag matches the stored one strongly (never a weak tag); a date
    matches the stored Last-Modified exactly."""
    if if_range.startswith('"'):
        etag = get_header(headers, b"etag")
        return etag is not None and etag.strip() == if_range.encode("latin-1")
    if if_range.startswith("W/"):
        return False
    wanted = parse_http_date(if_range.encode("latin-1"))
    stored = parse_http_date(get_header(headers, b"last-modified"))
    return wanted is not None and stored is not None and wanted == stored
