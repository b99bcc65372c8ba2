"""Redis-compatible glob matching, for stores that are not Redis, and glob analysis.

Redis' `stringmatchlen` semantics (7.x), reproduced exactly because the memory store must delete
the same keys as Redis' SCAN MATCH, and read from the same parse the admin API uses to decide
what a glob can reach:

* matching is over UTF-8 *bytes* (`?` is one byte, so `é` needs `??`); `*` is any run of bytes;
  `\\x` is a literal `x` (a trailing lone `\\` is a literal backslash);
* a class `[...]` may be negated with `^`; `a-z` is a range whose ends are swapped when reversed
  and compared as C `char`s, which are *signed* on the x86-64 builds we test against (so a
  range with an end at or above 0x80 reaches down through the negative values: `[a-\\xc3]` holds
  0xC3..0xFF and 0x00..`a`); `-` right before `]` still forms a range whose end is `]`; `]` first
  in a class closes it (an empty class matches nothing); an unterminated class runs to the end
  of the pattern;
* an empty key matches only the empty pattern, and the pattern `*` (which SCAN and KEYS treat as
  "no pattern" and so match every key, the empty one included);
* Redis gives up below 1,000 nested stars: a pattern whose 1,001st run of stars is followed by
  anything matches no key at all.

Matching is polynomial, never exponential (a backtracking regex for `*a*a*a*a*a*!` runs for
hours on a 60-byte key, under the memory store's lock): the pattern is cut at its stars into
segments of fixed length; the first must match at the start, the last at the end, and each one
between at its leftmost place after the previous one (leftmost is always best: a later place
leaves less room for the rest). Each segment is compared by `bytes.find` or by a regular
expression without quantifiers or alternation, so a search costs at most key length x segment
length, and a whole match at most key length x pattern length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "GlobMatcher",
    "Token",
    "compile_glob",
    "ends_with_literal",
    "escape_glob",
    "literal_head",
    "parse_glob",
    "wildcard_count",
]

_GLOB_SPECIALS = frozenset("*?[]\\")
_STAR, _ANY, _LITERAL, _CLASS = "star", "any", "literal", "class"
_ALL_BYTES = frozenset(range(256))
# Redis' recursion limit (`nesting > 1000` in stringmatchlen): the star runs it follows.
_MAX_NESTED_STARS = 1000


@dataclass(frozen=True, slots=True)
class Token:
    """One element of a parsed glob: a run of stars, or what one byte of the key must be."""

    kind: str  # "star" | "any" | "literal" | "class"
    members: frozenset[int] = _ALL_BYTES  # the bytes it accepts ("literal": exactly one)

    @property
    def is_literal(self) -> bool:
        return self.kind == _LITERAL

    @property
    def byte(self) -> int:
        """The byte a literal token stands for."""
        (value,) = self.members
        return value


_STAR_TOKEN = Token(_STAR)
_ANY_TOKEN = Token(_ANY)


def _signed(byte: int) -> int:
    """A byte as the C `char` Redis compares range ends as (signed on x86-64)."""
    return byte - 256 if byte >= 0x80 else byte


def _range(first: int, last: int) -> set[int]:
    low, high = sorted((_signed(first), _signed(last)))
    return {b for b in range(256) if low <= _signed(b) <= high}


def _parse_class(p: bytes, i: int) -> tuple[Token, int]:
    """The class opened just before `p[i]`; returns it and the index after it."""
    n = len(p)
    negate = i < n and p[i] == ord("^")
    if negate:
        i += 1
    members: set[int] = set()
    while i < n:  # running off the end: the class ends with the pattern
        if p[i] == ord("\\") and i + 1 < n:
            members.add(p[i + 1])
            i += 2
        elif p[i] == ord("]"):
            i += 1
            break
        elif i + 2 < n and p[i + 1] == ord("-"):
            members |= _range(p[i], p[i + 2])
            i += 3
        else:
            members.add(p[i])
            i += 1
    accepted = _ALL_BYTES - members if negate else frozenset(members)
    return Token(_CLASS, frozenset(accepted)), i


@lru_cache(maxsize=256)
def parse_glob(pattern: str) -> tuple[Token, ...]:
    """The tokens Redis reads `pattern` as (its UTF-8 bytes); a run of stars is one token."""
    p = pattern.encode("utf-8", "surrogateescape")
    tokens: list[Token] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        i += 1
        if c == ord("*"):
            if not tokens or tokens[-1] is not _STAR_TOKEN:
                tokens.append(_STAR_TOKEN)
        elif c == ord("?"):
            tokens.append(_ANY_TOKEN)
        elif c == ord("["):
            token, i = _parse_class(p, i)
            tokens.append(token)
        else:
            if c == ord("\\") and i < n:
                c = p[i]
                i += 1
            tokens.append(Token(_LITERAL, frozenset((c,))))
    return tuple(tokens)


def literal_head(tokens: tuple[Token, ...]) -> bytes:
    """The bytes every key a glob matches starts with: its leading literal tokens."""
    head = bytearray()
    for token in tokens:
        if not token.is_literal:
            break
        head.append(token.byte)
    return bytes(head)


def ends_with_literal(tokens: tuple[Token, ...], tail: bytes) -> bool:
    """Whether the glob's last tokens are literals spelling `tail`: every key it matches then
    ends with `tail`."""
    if len(tail) > len(tokens):
        return False
    last = tokens[len(tokens) - len(tail) :]
    return all(t.is_literal and t.byte == b for t, b in zip(last, tail, strict=True))


def wildcard_count(tokens: tuple[Token, ...]) -> int:
    """Tokens that are not literals: runs of stars, `?` and classes."""
    return sum(1 for token in tokens if not token.is_literal)


# -- matching -----------------------------------------------------------------------------------


def _piece(token: Token) -> bytes:
    """A token as a regular-expression atom matching exactly one byte."""
    if token.kind == _ANY:
        return b"."
    members = sorted(token.members)
    if not members:
        return b"(?!)"  # an empty class: matches nothing
    if len(members) == 1:
        return b"\\x%02x" % members[0]
    return b"[" + b"".join(b"\\x%02x" % m for m in members) + b"]"


class _Segment:
    """A run of single-byte tokens between stars: its length, and either the literal bytes or
    a regex without quantifiers (matching it at one place costs at most its length)."""

    __slots__ = ("literal", "regex", "size")

    def __init__(self, tokens: list[Token]) -> None:
        self.size = len(tokens)
        self.literal: bytes | None = None
        self.regex: re.Pattern[bytes] | None = None
        if all(t.is_literal for t in tokens):
            self.literal = bytes(t.byte for t in tokens)
        else:
            self.regex = re.compile(b"".join(_piece(t) for t in tokens), re.DOTALL)

    def matches_at(self, data: bytes, pos: int) -> bool:
        if self.literal is not None:
            return data.startswith(self.literal, pos)
        assert self.regex is not None
        return self.regex.match(data, pos) is not None

    def find(self, data: bytes, start: int, end: int) -> int:
        """The leftmost place in data[start:end] where the whole segment fits, or -1."""
        if self.literal is not None:
            return data.find(self.literal, start, end)
        assert self.regex is not None
        found = self.regex.search(data, start, end)
        return -1 if found is None else found.start()


class GlobMatcher:
    """`match(key)`: whether Redis' SCAN MATCH `pattern` returns `key`."""

    __slots__ = ("_every", "_first", "_last", "_middle", "_never", "_size", "_starred", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens = parse_glob(pattern)
        segments: list[list[Token]] = [[]]
        for token in tokens:
            if token.kind == _STAR:
                segments.append([])
            else:
                segments[-1].append(token)
        compiled = [_Segment(tokens) for tokens in segments]
        stars = len(segments) - 1
        self._every = pattern == "*"  # SCAN's and KEYS' "no pattern", the empty key included
        self._starred = stars > 0
        self._first = compiled[0]
        self._last = compiled[-1]
        self._middle = tuple(compiled[1:-1])
        self._size = sum(segment.size for segment in compiled)
        # Past Redis' nesting limit nothing matches, unless the last run it reaches ends it.
        self._never = stars > _MAX_NESTED_STARS + 1 or (
            stars == _MAX_NESTED_STARS + 1 and tokens[-1].kind != _STAR
        )

    def match(self, key: str | bytes) -> bool:
        data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
        if self._every:
            return True
        n = len(data)
        if n == 0:
            return self._size == 0 and not self._starred  # only the empty pattern
        if self._never or n < self._size:
            return False
        if not self._starred:
            return n == self._size and self._first.matches_at(data, 0)
        end = n - self._last.size
        if not (self._first.matches_at(data, 0) and self._last.matches_at(data, end)):
            return False
        pos = self._first.size
        for segment in self._middle:
            found = segment.find(data, pos, end)
            if found < 0:
                return False
            pos = found + segment.size
        return True


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> GlobMatcher:
    """A matcher with Redis' semantics for `pattern` (see the module docstring)."""
    return GlobMatcher(pattern)


def escape_glob(text: str) -> str:
    """Make `text` match only itself inside a Redis glob."""
    if not _GLOB_SPECIALS.intersection(text):
        return text
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)
