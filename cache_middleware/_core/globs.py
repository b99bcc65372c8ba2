"""Redis-compatible glob matching, for stores that are not Redis.

Redis' `stringmatchlen` semantics, reproduced exactly because the memory store must delete the
same keys as Redis' SCAN MATCH: matching is over UTF-8 *bytes* (`?` is one byte, so `é` needs
`??`); `*` any run; `\\x` is a literal `x`; a class `[...]` may be negated with `^`, `a-z` is a
range (ends swapped when reversed, and `-` followed by `]` still forms a range whose end is
`]`), `]` first in a class closes it (an empty class matches nothing), and an unterminated class
runs to the end of the pattern.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["GlobMatcher", "compile_glob", "escape_glob"]

_GLOB_SPECIALS = frozenset("*?[]\\")


class GlobMatcher:
    __slots__ = ("pattern", "regex")

    def __init__(self, pattern: str, regex: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.regex = regex

    def match(self, key: str | bytes) -> bool:
        data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
        return self.regex.match(data) is not None


def _byte(value: int) -> bytes:
    return re.escape(bytes((value,)))


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> GlobMatcher:
    """Translate a Redis glob into an anchored byte regular expression."""
    p = pattern.encode("utf-8", "surrogateescape")
    out: list[bytes] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        i += 1
        if c == ord("*"):
            out.append(b".*")
        elif c == ord("?"):
            out.append(b".")
        elif c == ord("\\") and i < n:
            out.append(_byte(p[i]))
            i += 1
        elif c == ord("["):
            negate = i < n and p[i] == ord("^")
            if negate:
                i += 1
            members: list[bytes] = []
            while True:
                if i >= n:
                    break  # unterminated: the class runs to the end of the pattern
                if p[i] == ord("\\") and i + 1 < n:
                    members.append(_byte(p[i + 1]))
                    i += 2
                elif p[i] == ord("]"):
                    i += 1
                    break
                elif i + 2 < n and p[i + 1] == ord("-"):
                    lo, hi = sorted((p[i], p[i + 2]))
                    members.append(_byte(lo) + b"-" + _byte(hi))
                    i += 3
                else:
                    members.append(_byte(p[i]))
                    i += 1
            if not members:
                out.append(b"[\\s\\S]" if negate else b"[^\\s\\S]")
            else:
                out.append((b"[^" if negate else b"[") + b"".join(members) + b"]")
        else:
            out.append(_byte(c))
    return GlobMatcher(pattern, re.compile(b"".join(out) + rb"\Z", re.DOTALL))


def escape_glob(text: str) -> str:
    """Make `text` match only itself inside a Redis glob."""
    if not _GLOB_SPECIALS.intersection(text):
        return text
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)
