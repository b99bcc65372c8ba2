"""Keys: the seed's layout, injective, glob-safe (DESIGN invariant 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_middleware._core.globs import compile_glob
from cache_middleware._core.keys import (
    build_key,
    display_key,
    entry_globs,
    escape_component,
    escape_path_glob,
    query_pairs,
)

P = "gateway:response"


def test_seed_layout() -> None:
    pairs = query_pairs("category=music&q=rock", ("q", "category"))
    assert pairs is not None
    key = build_key(P, "GET", "/api/search", pairs, "u1", "v9")
    assert key == "gateway:response:GET:/api/search:q:rock:category:music:user:u1:venue:v9"


def test_seed_display_key() -> None:
    key = build_key(P, "GET", "/api/events/1234567890/tickets", [], None, None)
    assert display_key(key) == key[:50] + "..."
    assert len(display_key(key)) == 53


@pytest.mark.parametrize(
    ("query", "vary_by", "expected"),
    [
        ("", None, []),
        ("page=2", None, [("page", "2")]),
        ("b=1&a=2", None, [("a", "2"), ("b", "1")]),
        # Repeated names keep request order: an app may treat ?a=1&a=2 and ?a=2&a=1 differently.
        ("a=2&b=0&a=1", None, [("a", "2"), ("a", "1"), ("b", "0")]),
        # With vary_by, an unlisted parameter makes the request unkeyable (None).
        ("q=x&utm=1&category=c", ("q", "category"), None),
        ("category=c&q=x", ("q", "category"), [("q", "x"), ("category", "c")]),
        ("q=", ("q",), [("q", "")]),
        ("other=1", ("q",), None),
        # `;` is not a separator (Python >= 3.10, as Starlette and werkzeug read it).
        ("a=1;b=2", None, [("a", "1;b=2")]),
    ],
)
def test_query_pairs(
    query: str, vary_by: tuple[str, ...] | None, expected: list[tuple[str, str]] | None
) -> None:
    assert query_pairs(query, vary_by) == expected


def test_ignored_params_never_reach_the_key() -> None:
    def ignored(name: str) -> bool:
        return name.startswith("utm_")

    assert query_pairs("utm_source=x&q=a&utm_medium=y", ("q",), ignored) == [("q", "a")]
    assert query_pairs("utm_source=x&b=1", None, ignored) == [("b", "1")]
    assert query_pairs("utm_source=x&page=1", ("q",), ignored) is None


def test_page_two_is_not_page_one() -> None:
    one = build_key(P, "GET", "/api/events", query_pairs("page=1", None), None, None)
    two = build_key(P, "GET", "/api/events", query_pairs("page=2", None), None, None)
    none = build_key(P, "GET", "/api/events", query_pairs("", None), None, None)
    assert len({one, two, none}) == 3


def test_path_cannot_reach_a_private_entry() -> None:
    alice = build_key(P, "GET", "/api/me", [], "alice", None)
    forged = build_key(P, "GET", "/api/me:user:alice", [], None, None)
    assert forged != alice
    assert ":user:" not in forged.removeprefix(P)


def test_query_param_named_user_is_not_an_identity() -> None:
    alice = build_key(P, "GET", "/api/me", [], "alice", None)
    forged = build_key(P, "GET", "/api/me", query_pairs("user=alice", None), None, None)
    assert forged != alice
    venue = build_key(P, "GET", "/api/x", [], None, "t1")
    forged_venue = build_key(P, "GET", "/api/x", query_pairs("venue=t1", None), None, None)
    assert forged_venue != venue


def test_percent_encoded_delimiters_and_bad_utf8_stay_distinct() -> None:
    keys = {
        build_key(P, "GET", "/p", query_pairs(q, None), None, None)
        for q in ["a=b&c=d", "a=b%26c%3Dd", "a=%FF", "a=%FE", "a=%C3%BF", "a=%25FF", "a=*", "a=%2A"]
    }
    # `a=*` and `a=%2A` decode to the same value: the app cannot tell them apart either.
    assert len(keys) == 7


def test_escaped_components_hold_no_separator_or_glob() -> None:
    text = "a:b*c?d[e]f\\g%h i\x00\x7f"
    escaped = escape_component(text)
    assert not set(":*?[]\\ \x00\x7f") & set(escaped)
    assert escaped == "a%3Ab%2Ac%3Fd%5Be%5Df%5Cg%25h%20i%00%7F"


def test_identity_glob_matches_only_its_own_venue() -> None:
    pattern = compile_glob(f"{P}:*:venue:t1")
    t1 = build_key(P, "GET", "/api/events", [], None, "t1")
    t10 = build_key(P, "GET", "/api/events", [], None, "t10")
    forged = build_key(P, "GET", "/api/events:venue:t1", [], None, "t2")
    assert pattern.match(t1)
    assert not pattern.match(t10)
    assert not pattern.match(forged)


def test_path_glob_globs_match_the_paths_entries_and_no_other_path() -> None:
    # What the admin API's paths and the event worker's path templates both go through.
    assert escape_path_glob("/a b:/*/x?") == "/a%20b%3A/*/x?"
    globs = entry_globs(P, escape_path_glob("/api/events/1"))
    assert globs == [f"{P}:GET:/api/events/1", f"{P}:GET:/api/events/1:*"]
    assert entry_globs(P, escape_path_glob("/api/*")) == [f"{P}:GET:/api/*"]
    matches = [compile_glob(glob) for glob in globs]
    for key in (
        build_key(P, "GET", "/api/events/1", [], None, None),
        build_key(P, "GET", "/api/events/1", [("page", "2")], "alice", "t1"),
    ):
        assert any(m.match(key) for m in matches), key
    for key in (
        build_key(P, "GET", "/api/events/10", [], None, None),
        build_key(P, "GET", "/api/events/1/x", [], None, None),
    ):
        assert not any(m.match(key) for m in matches), key


_ATOMS = [
    *"ab:%*?[]\\ /u=&\x00é",
    "user",
    "venue",
    "vary",
    "%75ser",
    "%u",
    "\udcff",
    "\ud800",
    "\udfff",
]
components = st.lists(st.sampled_from(_ATOMS), max_size=6).map("".join)
requests = st.tuples(
    st.sampled_from(["GET", "HEAD"]),
    components.map(lambda s: "/" + s),
    st.lists(st.tuples(components, components), max_size=3),
    st.none() | components,
    st.none() | components,
)


def _unescape(text: str) -> str:
    """The inverse of escape_component, character by character."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("%u", i):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        elif text[i] == "%":
            byte = int(text[i + 1 : i + 3], 16)
            # Bytes >= 0x80 are escaped only as undecodable input (surrogateescape's U+DCxx).
            out.append(chr(byte) if byte < 0x80 else chr(0xDC00 + byte))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_key(key: str) -> tuple:  # type: ignore[type-arg]
    """Read a key back into its parts: possible only if the layout is unambiguous."""
    parts = key.removeprefix(P + ":").split(":")
    method, path, rest = parts[0], _unescape(parts[1]), parts[2:]
    pairs, user, venue = [], None, None
    while rest:
        marker, value, rest = rest[0], _unescape(rest[1]), rest[2:]
        assert marker != "vary", "build_key never writes a variant section"
        if marker == "user":
            user = value
        elif marker == "venue":
            venue = value
        else:
            pairs.append((_unescape(marker), value))
    return method, path, pairs, user, venue


@given(requests)
def test_build_key_is_injective(request: tuple) -> None:  # type: ignore[type-arg]
    # A key that parses back to exactly its inputs cannot be shared by two different inputs.
    assert parse_key(build_key(P, *request)) == request


@given(requests)
def test_key_holds_no_glob_character(request: tuple) -> None:  # type: ignore[type-arg]
    key = build_key(P, *request)
    assert not any(c in key for c in "*?[]\\")
    assert compile_glob(key).match(key)


# The fast paths (a scan before translate(), a split before parse_qsl) must give exactly what
# the slow ones give: the key layout is a contract, and a different key is a lost entry.
_AWKWARD = st.text(
    alphabet=st.sampled_from(
        [*map(chr, range(0x100)), "\ud800", "\udc80", "\udcff", "\udfff", "\ue000", "é", "😀"]
    ),
    max_size=12,
)


@given(_AWKWARD)
def test_escape_fast_path_matches_the_table(text: str) -> None:
    from cache_middleware._core.keys import _ESCAPED

    assert escape_component(text) == text.translate(_ESCAPED)


@given(st.text(alphabet="ab=&%+;1 2.x", max_size=16))
def test_query_split_fast_path_matches_parse_qsl(query: str) -> None:
    from urllib.parse import parse_qsl

    from cache_middleware._core.keys import _split_query

    expected = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
    assert _split_query(query) == expected
