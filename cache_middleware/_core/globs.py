"""Redis-compatible glob matching, for stores that are not Redis.

Redis' `stringmatchlen` semantics: `*` any run, `?` one character, `[abc]`, `[^a]`, `[a-z]`
classes, and `\\x` matches `x` literally. The memory store must match exactly the same keys as
Redis' SCAN MATCH, or `invalidate()` would behave differently per backend.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["compile_glob", "escape_glob"]

_GLOB_SPECIALS = frozenset("*?[]\\")


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a Redis glob into an anchored regular expression."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            members: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    members.append(re.escape(pattern[j + 1]))
                    j += 2
                elif j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    members.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 3
                else:
                    members.append(re.escape(pattern[j]))
                    j += 1
            # Redis treats an unterminated class as running to the end of the pattern.
            i = j + 1 if j < n else n
            if not members:
                out.append("[^\\s\\S]" if not negate else "[\\s\\S]")
            else:
                out.append(("[^" if negate else "[") + "".join(members) + "]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def escape_glob(text: str) -> str:
    """Make `text` match only itself inside a Redis glob."""
    if not _GLOB_SPECIALS.intersection(text):
        return text
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)
