"""Header helpers named for the HTTP job they do (in the spirit of django.utils.cache).

Headers are ASGI-style lists of (name, value) byte pairs with lower-case names; the WSGI adapter
converts at its edge. Parsing is tolerant: garbage never raises, it only fails to grant caching.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "HeaderList",
    "age_seconds",
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
    found: bytes | None = None  # no list: most fields come once, and most lookups find none
    for key, value in headers:
        if key.lower() == name:
            found = value if found is None else found + b", " + value
    return found


def has_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bool:
    for key, _ in headers:  # noqa: SIM110 (a loop, not any(): no generator on every MISS)
        if key.lower() == name:
            return True
    return False


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


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LONG_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# RFC 9110 §5.6.7: the three forms a recipient MUST accept, and nothing else. Names compare
# case-insensitively (as every published cache does); spacing, separators and digit counts do not
# bend: `... UTC`, a two-digit year in IMF-fixdate, `18-Aug-2050`, `02.01.18` are invalid.
_IMF_FIXDATE = re.compile(
    rb"([A-Za-z]{3}), (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) ([Gg][Mm][Tt])"
)
_RFC850_DATE = re.compile(
    rb"([A-Za-z]{6,9}), (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) ([Gg][Mm][Tt])"
)
_ASCTIME_DATE = re.compile(
    rb"([A-Za-z]{3}) ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})"
)


def _rfc850_year(two_digits: int, now: float | None) -> int:
    """RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is the most recent past one."""
    this_year = time.gmtime(time.time() if now is None else now).tm_year
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        year -= 100
    return year


def parse_http_date(value: bytes | None, *, now: float | None = None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as a POSIX timestamp, or None when absent or invalid.

    Accepts IMF-fixdate, the obsolete RFC 850 form and asctime's; anything else is invalid (an
    invalid `Expires` means already expired, RFC 9111 §5.3, which the caller decides).
    """
    if not value:
        return None
    text = value.strip()
    if match := _IMF_FIXDATE.fullmatch(text):
        weekday, day, month, year, hour, minute, second, _ = match.groups()
        if weekday.lower().decode() not in _WEEKDAYS:
            return None
        year_number = int(year)
    elif match := _RFC850_DATE.fullmatch(text):
        weekday, day, month, year, hour, minute, second, _ = match.groups()
        if weekday.lower().decode() not in _LONG_WEEKDAYS:
            return None
        year_number = _rfc850_year(int(year), now)
    elif match := _ASCTIME_DATE.fullmatch(text):
        weekday, month, day, hour, minute, second, year = match.groups()
        if weekday.lower().decode() not in _WEEKDAYS:
            return None
        year_number = int(year)
    else:
        return None
    month_name = month.lower().decode()
    if month_name not in _MONTHS:
        return None
    fields = (int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[0] <= 31 and fields[1] < 24 and fields[2] < 60 and fields[3] <= 60):
        return None
    try:
        moment = datetime.datetime(
            year_number,
            _MONTHS.index(month_name) + 1,
            fields[0],
            fields[1],
            fields[2],
            min(fields[3], 59),
            tzinfo=datetime.timezone.utc,
        )
    except ValueError:  # 31 Feb, year 0
        return None
    return moment.timestamp()


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


def age_seconds(line: bytes) -> int | None:
    """The `Age` an upstream cache sent (RFC 9111 §5.1), from its first field line: the first
    member of a list (`Age: 7200, 0` is 7200), or None when that member is not delta-seconds
    (negative, fractional, garbage), which a cache ignores."""
    return delta_seconds(line.split(b",", 1)[0].decode("latin-1"))


# -- targeted cache-control fields (RFC 9213, Edge Architecture 1.0) ----------------------------

# This cache's own fields, most specific first (RFC 9213 §2.1: the first with valid content wins,
# and Cache-Control and Expires are then ignored by this cache).
TARGETED_FIELDS = (b"cdn-cache-control", b"surrogate-control")
# RFC 9213 §2.1: the directives whose value type this cache checks (a wrong type makes the
# whole field invalid, as an unparsable one does); the others are kept by name only.
_SF_INTEGER_DIRECTIVES = frozenset(
    {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"}
)
_SF_BOOLEAN_DIRECTIVES = frozenset(
    {
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "must-understand",
    }
)
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_SF_STRING = re.compile(r'"(?:[ !#-\[\]-~]|\\["\\])*"')
_SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:")


class _SFError(ValueError):
    pass


def _sf_bare_item(text: str, pos: int) -> tuple[object, int]:
    """RFC 8941 §4.2.3.1: one bare item at `pos`; returns (value, next position). Integers as
    int, decimals as float, strings as str, tokens and byte sequences as _Other, booleans."""
    if pos >= len(text):
        raise _SFError("empty item")
    char = text[pos]
    if char == "-" or char.isdigit():
        found = _SF_NUMBER.match(text, pos)
        if found is None:
            raise _SFError("number")
        raw = found.group()
        return (float(raw) if "." in raw else int(raw)), found.end()
    if char == '"':
        found = _SF_STRING.match(text, pos)
        if found is None:
            raise _SFError("string")
        return found.group()[1:-1].replace('\\"', '"').replace("\\\\", "\\"), found.end()
    if char == ":":
        found = _SF_BYTES.match(text, pos)
        if found is None:
            raise _SFError("byte sequence")
        return _SFOther(found.group()), found.end()
    if char == "?":
        if text[pos + 1 : pos + 2] in ("0", "1"):
            return text[pos + 1] == "1", pos + 2
        raise _SFError("boolean")
    found = _SF_TOKEN.match(text, pos)
    if found is None:
        raise _SFError("unknown item type")
    return _SFOther(found.group()), found.end()


class _SFOther(str):
    """A token or byte sequence: neither a string nor a number for the type checks."""


def _sf_parameters(text: str, pos: int) -> int:
    """Skips `;key[=bare-item]` parameters (validated, their values unused)."""
    while pos < len(text) and text[pos] == ";":
        pos += 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
        key = _SF_KEY.match(text, pos)
        if key is None:
            raise _SFError("parameter key")
        pos = key.end()
        if pos < len(text) and text[pos] == "=":
            _, pos = _sf_bare_item(text, pos + 1)
    return pos


def parse_sf_dictionary(value: str) -> dict[str, object] | None:
    """An RFC 8941 §4.2.2 Dictionary as {key: value} (a key without value is True, an inner
    list is a tuple, parameters are checked and dropped; the last duplicate wins), or None when
    the text is not a valid Dictionary."""
    text = value.strip(" \t")
    out: dict[str, object] = {}
    pos = 0
    try:
        while pos < len(text):
            key = _SF_KEY.match(text, pos)
            if key is None:
                raise _SFError("key")
            pos = key.end()
            item: object = True
            if pos < len(text) and text[pos] == "=":
                pos += 1
                if pos < len(text) and text[pos] == "(":
                    members: list[object] = []
                    pos += 1
                    while True:
                        while pos < len(text) and text[pos] == " ":
                            pos += 1
                        if pos < len(text) and text[pos] == ")":
                            pos += 1
                            break
                        member, pos = _sf_bare_item(text, pos)
                        members.append(member)
                        pos = _sf_parameters(text, pos)
                        if pos >= len(text) or text[pos] not in " )":
                            raise _SFError("inner list")
                    item = tuple(members)
                else:
                    item, pos = _sf_bare_item(text, pos)
            pos = _sf_parameters(text, pos)
            out[key.group()] = item
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if pos >= len(text):
                break
            if text[pos] != ",":
                raise _SFError("separator")
            pos += 1
            while pos < len(text) and text[pos] in " \t":
                pos += 1
            if pos >= len(text):
                raise _SFError("trailing comma")
    except _SFError:
        return None
    return out


def cdn_cache_control(lines: Sequence[bytes]) -> dict[str, str | None] | None:
    """A `CDN-Cache-Control` value (its lines joined) as `parse_cache_control` would give it,
    or None when it is not valid content (RFC 9213 §2.1: not a Dictionary, or a known directive
    of the wrong type: a non-negative Integer for the delta-seconds ones, `true` for the
    others); then the field is ignored and Cache-Control applies."""
    try:
        text = b", ".join(lines).decode("ascii")
    except UnicodeDecodeError:
        return None
    parsed = parse_sf_dictionary(text)
    if not parsed:
        return None  # invalid, or empty: nothing here for this cache
    out: dict[str, str | None] = {}
    for name, item in parsed.items():
        if name in _SF_INTEGER_DIRECTIVES:
            if type(item) is not int or item < 0:
                return None
            out[name] = str(item)
        elif name in _SF_BOOLEAN_DIRECTIVES:
            if item is False:
                continue  # `?0`: the directive is off
            if item is not True:
                return None
            out[name] = None
        else:
            out[name] = None  # an extension this cache does not know: present, no value
    return out


def surrogate_control(lines: Sequence[bytes]) -> dict[str, str | None] | None:
    """The `Surrogate-Control` directives this cache acts on (Edge Architecture 1.0:
    `max-age=N[+M]` and `no-store`; one targeted at a named device, `;name`, is not ours),
    or None when it holds neither (then it is ignored)."""
    out: dict[str, str | None] = {}
    for name, arg in parse_cache_control(b", ".join(lines)).items():
        if ";" in name or (arg is not None and ";" in arg):
            continue
        if name == "no-store":
            out[name] = None
        elif name == "max-age" and arg is not None:
            # `max-age=300+60`: the first number is the freshness lifetime.
            seconds = delta_seconds(arg.split("+", 1)[0])
            if seconds is not None:
                out[name] = str(seconds)
    return out or None


def targeted_directives(
    cdn: Sequence[bytes], surrogate: Sequence[bytes]
) -> dict[str, str | None] | None:
    """This cache's own directives when a targeted field with valid content is present
    (CDN-Cache-Control first, then Surrogate-Control), else None: Cache-Control applies."""
    if cdn:
        found = cdn_cache_control(cdn)
        if found is not None:
            return found
    return surrogate_control(surrogate) if surrogate else None
