"""`compile_glob` must match exactly the keys Redis' SCAN MATCH matches.

The table's `expected` column is Redis' answer: `test_table_is_what_real_redis_does` checks every
row against the real server, and `test_compile_glob` checks `compile_glob` against every row.
Rows cover the corners where a naive translation goes wrong: `[a-]` (a range ending at `]`) and
non-ASCII keys (Redis matches UTF-8 bytes, not characters).
"""

from __future__ import annotations

import pytest
import redis
from hypothesis import example, given
from hypothesis import strategies as st

from cache_middleware._core.globs import compile_glob, escape_glob

# (pattern, key, does Redis match?)
TABLE: list[tuple[str, str, bool]] = [
    # literals
    ("abc", "abc", True),
    ("abc", "abcd", False),
    ("abc", "ab", False),
    ("abc", "ABC", False),
    ("", "", True),
    ("", "a", False),
    ("a.c", "abc", False),  # regex metacharacters are literal
    ("a+", "aa", False),
    ("(a|b)", "(a|b)", True),
    ("^a$", "^a$", True),
    # *
    ("*", "", True),
    ("*", "any:thing:at all", True),
    ("a*", "a", True),
    ("a*", "ba", False),
    ("*c", "abc", True),
    ("a*c", "ac", True),
    ("a*c", "abcb", False),
    ("a**c", "abbc", True),
    ("*:*", "x:y", True),
    ("*:*", "xy", False),
    ("a*", "a\nb", True),
    ("*a*b*", "xxaxxbxx", True),
    ("*a*b*", "xxbxxaxx", False),
    # ?
    ("?", "", False),
    ("?", "a", True),
    ("?", "ab", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("??", "ab", True),
    ("?", "\n", True),
    ("?*", "", False),
    ("*?", "x", True),
    # classes and ranges
    ("[abc]", "b", True),
    ("[abc]", "d", False),
    ("[abc]", "", False),
    ("[abc]", "ab", False),
    ("[abc]x", "ax", True),
    ("[a-c]", "b", True),
    ("[a-c]", "d", False),
    ("[a-c]", "-", False),
    ("[c-a]", "b", True),  # a reversed range is swapped
    ("[a-z0-9]", "7", True),
    ("[a-z0-9]", "_", False),
    ("[a-z]", "A", False),
    ("[-a]", "-", True),
    ("[a-", "-", True),
    ("[*?]", "*", True),
    ("[*?]", "x", False),
    ("[[]", "[", True),
    ("[a^]", "^", True),
    ("[!a]", "b", False),  # no '!' negation in Redis
    ("[!a]", "!", True),
    # negated classes
    ("[^a]", "b", True),
    ("[^a]", "a", False),
    ("[^a]", "", False),
    ("[^a-c]", "d", True),
    ("[^a-c]", "b", False),
    ("[^^]", "^", False),
    # empty classes
    ("[]", "x", False),
    ("[]", "", False),
    ("[]x]", "x]", False),  # "[]" is an empty class, not a class holding "]"
    ("[^]", "x", True),
    ("[^]", "", False),
    # backslash escapes
    ("\\*", "*", True),
    ("\\*", "x", False),
    ("\\?", "?", True),
    ("\\?", "a", False),
    ("\\[a]", "[a]", True),
    ("\\[a]", "a", False),
    ("\\\\", "\\", True),
    ("\\a", "a", True),
    ("a\\", "a\\", True),  # a trailing backslash is literal
    ("[\\]]", "]", True),
    ("[\\^a]", "^", True),
    ("[a\\-z]", "-", True),
    ("[a\\-z]", "b", False),
    ("[\\", "\\", True),
    # unterminated classes run to the end of the pattern
    ("[", "x", False),
    ("[", "[", False),
    ("[abc", "b", True),
    ("[abc", "[", False),
    ("[abc", "bc", False),
    ("[^", "x", True),
    ("[^a", "b", True),
    ("[^a", "a", False),
    ("[a-z", "m", True),
    ("x[ab", "xa", True),
    ("x[ab", "x", False),
    # escape_glob output matches the text and nothing else
    (escape_glob("a*b?[c]\\d"), "a*b?[c]\\d", True),
    (escape_glob("a*b"), "axb", False),
    (escape_glob("[x]"), "x", False),
    (escape_glob("[x]"), "[x]", True),
    (escape_glob("user:42"), "user:42", True),
    # non-ASCII keys, where Redis sees UTF-8 bytes
    ("*", "é", True),
    ("é*", "é!", True),
    ("[a-z]", "é", False),
    ("?", "é", False),
    ("??", "é", True),
    ("[é]", "é", False),
    ("[^a]", "é", False),
    # '-' right before ']'
    ("[a-]", "a", True),
    ("[a-]", "_", True),
    ("[a-]", "]", True),
    ("[a-]", "-", False),
    ("[a-]b]", "_", True),
    ("[a-]b]", "-b]", False),
]


def _params() -> list[object]:
    return [
        pytest.param(pattern, key, expected, id=f"{pattern!r}~{key!r}")
        for pattern, key, expected in TABLE
    ]


def test_table_has_no_duplicates() -> None:
    pairs = [(pattern, key) for pattern, key, _ in TABLE]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(("pattern", "key", "expected"), _params())
def test_compile_glob(pattern: str, key: str, expected: bool) -> None:
    assert bool(compile_glob(pattern).match(key)) is expected


def test_table_is_what_real_redis_does(redis_url: str, prefix: str) -> None:
    """Every row against the real server: key i under "<prefix>:i:", SCAN MATCH the pattern
    behind the same (escaped) prefix. Then compile_glob must agree on every row."""
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for i, (_, key, _) in enumerate(TABLE):
            pipe.set(f"{prefix}:{i}:{key}", b"1", ex=60)
        pipe.execute()
        redis_says = []
        for i, (pattern, _, _) in enumerate(TABLE):
            match = escape_glob(f"{prefix}:{i}:") + pattern
            found = list(client.scan_iter(match=match, count=1000))
            assert len(found) <= 1
            redis_says.append(bool(found))
    finally:
        client.close()

    wrong_table = [row for row, said in zip(TABLE, redis_says, strict=True) if row[2] is not said]
    assert wrong_table == [], "the table's expectations must be Redis' answers"
    disagree = [
        (pattern, key)
        for (pattern, key, _), said in zip(TABLE, redis_says, strict=True)
        if bool(compile_glob(pattern).match(key)) is not said
    ]
    assert disagree == []


# -- escape_glob ----------------------------------------------------------------------------------

GLOBBY = st.text(alphabet=st.sampled_from("*?[]\\^-!:a b\né"), max_size=12)
TEXTS = st.one_of(st.text(max_size=20), GLOBBY)


@given(text=TEXTS, other=TEXTS)
@example(text="*", other="x")
@example(text="?", other="x")
@example(text="[ab]", other="a")
@example(text="a\\", other="a")
@example(text="", other="")
def test_escaped_text_matches_itself_and_only_itself(text: str, other: str) -> None:
    regex = compile_glob(escape_glob(text))
    assert regex.match(text)
    assert bool(regex.match(other)) is (other == text)


@given(text=TEXTS.filter(bool))
def test_escaped_text_rejects_near_misses(text: str) -> None:
    regex = compile_glob(escape_glob(text))
    for near in (text[:-1], text[1:], text + "x", "x" + text, text + "\n", text * 2):
        assert not regex.match(near)


@given(text=st.text(alphabet=st.characters(exclude_characters="*?[]\\"), max_size=20))
def test_escape_glob_leaves_plain_text_alone(text: str) -> None:
    assert escape_glob(text) == text
