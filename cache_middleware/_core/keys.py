"""Request -> cache key, in the seed's readable layout, injective and glob-safe.

Layout::

    {prefix}:{METHOD}:{path}[:{name}:{value}...][:user:{id}][:venue:{id}]

Contract (documented in docs/keys.md):

* Every component is passed through `escape_component`, which percent-encodes `%`, the separator
  `:`, the Redis glob characters `* ? [ ] \\`, ASCII control characters, space and DEL, the
  lone surrogates that stand for undecodable bytes (as the byte, `%FF`) and any other lone
  surrogate (as `%uD800`), so that every key is valid UTF-8. Since `%` itself is encoded and
  every escape begins with `%`, escaping is injective; since no escaped component contains `:`, the
  components of a key can be read back unambiguously.
* Query parameter *names* `user`, `venue` and `vary` are written `%75ser`, `%76enue` and
  `%76ary` (an encoding `escape_component` never produces for them), so a parameter can never
  pose as an identity or variant segment: `/api/me?user=alice` is not alice's private entry.
* A response that varies on request headers is stored under its variant key,
  `{key}:vary:{header}:{value}...` (see `variant_key`), with a record at `{key}` naming them.
* Fill locks and path indexes use the method positions `LOCK` and `IDX`, which no entry has.
* Without `vary_by` every query parameter is keyed, sorted by name with repeated names kept in
  their original order; with `vary_by` only the listed names are keyed, in the listed order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl

__all__ = [
    "ABSENT",
    "build_key",
    "display_key",
    "entry_globs",
    "entry_venue",
    "escape_component",
    "escape_path_glob",
    "has_ignored",
    "in_venue",
    "lock_key",
    "origin_of",
    "path_index_key",
    "path_patterns",
    "query_pairs",
    "tag_index_key",
    "variant_key",
    "venue_patterns",
]

_ESCAPED = {ord(c): f"%{ord(c):02X}" for c in "%:*?[]\\ "}
_ESCAPED.update({i: f"%{i:02X}" for i in range(0x20)})
_ESCAPED[0x7F] = "%7F"
# surrogateescape maps an undecodable byte 0xXY to U+DCXY: write it back as the byte it was.
_ESCAPED.update({0xDC80 + i: f"%{0x80 + i:02X}" for i in range(0x80)})
# Any other lone surrogate (only a resolver could hand one over) gets a form of its own, so
# every key is valid UTF-8 and still injective: `%u` never starts any other escape.
_ESCAPED.update({i: f"%u{i:04X}" for i in range(0xD800, 0xE000) if not 0xDC80 <= i < 0xDD00})

_RAW_HIGH = {i: f"%{i:02X}" for i in range(0x80, 0x100)}
_RESERVED_NAMES = {
    "user": "%75ser",
    "venue": "%76enue",
    "vary": "%76ary",
    "host": "%68ost",
    "fwd": "%66wd",
}
# A request header a response varies on, absent from the request: not producible by escaping.
ABSENT = "%-"


# Any character `_ESCAPED` rewrites. Most components hold none: one scan tells, and saves
# translate()'s per-character table lookups (five components per new key).
_NEEDS_ESCAPE = re.compile(r"[%:*?\[\]\\ \x00-\x1f\x7f\ud800-\udfff]")


def escape_component(text: str) -> str:
    """Escape one key component (see module docstring)."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return text.translate(_ESCAPED)


def _split_query(query_string: str) -> list[tuple[str, str]]:
    """`parse_qsl(query_string, keep_blank_values=True)`, the same pairs, faster for the
    common query with nothing to decode (no `%`, no `+`)."""
    if "%" in query_string or "+" in query_string:
        return parse_qsl(
            query_string, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"
        )
    pairs = []
    for field in query_string.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


def query_pairs(
    query_string: str,
    vary_by: tuple[str, ...] | None,
    ignored: Callable[[str], object] | None = None,
) -> list[tuple[str, str]] | None:
    """The (name, value) pairs of a raw query string that belong in the key.

    `ignored(name)` is true for parameters that never reach the key (tracking params such as
    `utm_*`). With `vary_by`, a parameter neither listed nor ignored makes the request
    unkeyable and the result is None: the app might answer it differently, so it must not
    share the entry of the request without it (a cache-poisoning vector).
    """
    if not query_string:
        return []
    if not query_string.isascii():
        # Raw (unencoded) bytes arrive latin-1-decoded: write them as the %XX they are, so a
        # raw 0xE9 never shares a key with the UTF-8 `%C3%A9` for "é".
        query_string = query_string.translate(_RAW_HIGH)
    pairs = _split_query(query_string)
    if ignored is not None:
        pairs = [pair for pair in pairs if not ignored(pair[0])]
    if vary_by is None:
        # A stable sort keeps repeated names in request order: `?a=1&a=2` != `?a=2&a=1`.
        pairs.sort(key=lambda pair: pair[0])
        return pairs
    if any(name not in vary_by for name, _ in pairs):
        return None
    return [(name, value) for name in vary_by for (got, value) in pairs if got == name]


def has_ignored(query_string: str, ignored: Callable[[str], object]) -> bool:
    """Whether the query holds a parameter `ignored(name)` leaves out of the key."""
    if not query_string:
        return False
    if not query_string.isascii():
        query_string = query_string.translate(_RAW_HIGH)
    return any(ignored(name) for name, _ in _split_query(query_string))


def build_key(
    prefix: str,
    method: str,
    path: str,
    pairs: list[tuple[str, str]],
    user: str | None,
    venue: str | None,
    origin: str | None = None,
    forwarded: str | None = None,
) -> str:
    """Assemble a key; `prefix` is trusted configuration and is used as given. `origin`
    (`scheme://host`) comes after the query, then `forwarded` (the scheme-like forwarded
    headers, `:fwd:`), then the identity segments."""
    parts = [prefix, method, escape_component(path)]
    for name, value in pairs:
        parts.append(_RESERVED_NAMES.get(name) or escape_component(name))
        parts.append(escape_component(value))
    if origin is not None:
        parts.append("host")
        parts.append(escape_component(origin))
    if forwarded is not None:
        parts.append("fwd")
        parts.append(escape_component(forwarded))
    if user is not None:
        parts.append("user")
        parts.append(escape_component(user))
    if venue is not None:
        parts.append("venue")
        parts.append(escape_component(venue))
    return ":".join(parts)


def variant_key(primary: str, names: tuple[str, ...], values: list[str | None]) -> str:
    """The key of one variant of a response that varies on request headers `names`.

    `primary` gets `:vary:{name}:{value}` pairs; an absent header is written `%-`, which
    escaping never produces, so "absent" and "empty" stay different variants.
    """
    parts = [primary, "vary"]
    for name, value in zip(names, values, strict=True):
        # A header named like a marker (`Vary: Venue`) must not read as an identity segment.
        parts.append(_RESERVED_NAMES.get(name) or escape_component(name))
        parts.append(ABSENT if value is None else escape_component(selecting_value(name, value)))
    return ":".join(parts)


def selecting_value(name: str, value: str) -> str:
    """A request header's value as a variant is selected by it (RFC 9111 §4.1: "after
    normalising ... in a way that is known to have identical semantics"): list members with
    their surrounding whitespace and empty members dropped (`1, 2`, `1,2` and two field lines
    `1` and `2` are one value, RFC 9110 §5.3, §5.6.1); `Accept-Language` members also
    lower-cased and in one order (language ranges are case-insensitive, RFC 4647 §2.1, and
    their preference is their q-values, which each member keeps)."""
    members = [member.strip() for member in value.split(",")]
    members = [member for member in members if member]
    if name == "accept-language":
        members = sorted({member.lower().replace(" ", "") for member in members})
    return ",".join(members)


def lock_key(primary: str, prefix: str) -> str:
    """The fill lock of a key: `{prefix}:LOCK:...`. No entry key has a method `LOCK`."""
    return f"{prefix}:LOCK:{primary[len(prefix) + 1 :]}"


def path_index_key(prefix: str, path: str) -> str:
    """The index of every GET entry of one path: `{prefix}:IDX:{path}`."""
    return f"{prefix}:IDX:{escape_component(path)}"


def tag_index_key(prefix: str, tag: str, venue: str | None = None) -> str:
    """The index of every entry carrying `tag` (a surrogate key): `{prefix}:TAG:{tag}`, and
    per venue `{prefix}:TAG:{tag}:venue:{venue}` so a venue-scoped invalidation stays in its
    venue."""
    base = f"{prefix}:TAG:{escape_component(tag)}"
    return base if venue is None else f"{base}:venue:{escape_component(venue)}"


def escape_path_glob(path_glob: str) -> str:
    """A request-path glob as keys spell the path: `*` and `?` stay wildcards, the text
    between them is escaped as a key component is."""
    parts: list[str] = []
    literal: list[str] = []
    for char in path_glob:
        if char in "*?":
            parts.append(escape_component("".join(literal)))
            literal.clear()
            parts.append(char)
        else:
            literal.append(char)
    parts.append(escape_component("".join(literal)))
    return "".join(parts)


def entry_globs(prefix: str, key_path_glob: str) -> list[str]:
    """Key globs of every GET entry of the paths `key_path_glob` (a path glob as keys spell
    it) matches: the key with nothing after the path and, unless the glob already ends with
    `*`, with anything after it (a query, a user, a venue, a Vary variant)."""
    base = f"{prefix}:GET:{key_path_glob}"
    return [base] if base.endswith("*") else [base, f"{base}:*"]


def path_patterns(prefix: str, path_glob: str, venue: str | None = None) -> list[str]:
    """Key globs covering every entry of the request paths matching `path_glob`.

    `path_glob` is a request path where `*` and `?` are wildcards and everything else is
    literal (escaped the way keys escape it). Without a trailing `*`, the entries of exactly
    those paths are covered: with or without a query, a user, a venue or a Vary variant. With
    `venue`, only that venue's entries (its segment is the key's last, or just before
    `:vary:`). As in `venue_patterns`, the `:vary:*` form over-matches and each of its
    matches must be checked with `in_venue`; the `:*` form without a venue covers more than
    the path's own entries only where a longer path is spelled the same up to an escaped
    `:` (never: `:` in a path is written `%3A`).
    """
    bases = entry_globs(prefix, escape_path_glob(path_glob))
    if venue is None:
        return bases
    suffix = f":venue:{escape_component(venue)}"
    return [pattern for b in bases for pattern in (b + suffix, b + suffix + ":vary:*")]


def venue_patterns(prefix: str, venue: str) -> list[str]:
    """Key globs covering every entry of one venue (and its per-venue tag indexes).

    The first and last are exact: every component after the path comes in (name, value)
    pairs, a variant's after its one `vary` marker, and a name reading `venue` is always the
    marker (a parameter or Vary header named so is written `%76enue`); so a key ending in
    `:venue:{venue}` is that venue's. The `:venue:{venue}:vary:*` glob over-matches: a query
    *value* may read `venue` (`?a=venue&lisbon=vary`), so the caller must check each match
    with `in_venue` / `entry_venue` (admin/operations.py does) before acting on it."""
    suffix = f":venue:{escape_component(venue)}"
    return [
        f"{prefix}:GET:*{suffix}",
        f"{prefix}:GET:*{suffix}:vary:*",
        f"{prefix}:TAG:*{suffix}",
    ]


def entry_venue(key: str, prefix: str) -> str | None:
    """The venue segment (escaped) of the entry key `{prefix}:GET:...`, or None when it has
    none or is not an entry key. Components are read in pairs after the path: a name-position
    `venue` is the identity segment (a query parameter named `venue` is written `%76enue`), a
    value reading `venue` is not; `vary` in a name position starts the variant's part."""
    head = f"{prefix}:GET:"
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split(":")
    venue: str | None = None
    i = 1  # parts[0] is the path
    while i < len(parts) and parts[i] != "vary":
        if i + 1 >= len(parts):
            return None  # a name without a value: not a key this cache builds
        if parts[i] == "venue":
            venue = parts[i + 1]
        i += 2
    return venue


def in_venue(key: str, venue: str, prefix: str) -> bool:
    """Whether an exact entry key belongs to `venue`: its components read in pairs
    (`entry_venue`), so a query value reading `venue` (`?a=venue&lisbon=vary`) does not fool
    it, as a substring test would."""
    return entry_venue(key, prefix) == escape_component(venue)


def origin_of(scheme: str, host: str | None) -> str:
    """`scheme://host` as a cache keys it: lower-case, the scheme's default port dropped."""
    scheme = scheme.lower()
    host = (host or "").strip().lower()
    default = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


def display_key(key: str) -> str:
    """The seed's `X-Cache-Key` value: the first 50 characters followed by `...`."""
    return key[:50] + "..."
