"""The route table, compiled once at startup.

Contract: `RouteTable.match(path)` returns the `Rule` of the longest configured route that matches
`path` at a segment boundary (`/api/events` matches `/api/events` and `/api/events/42`, never
`/api/eventsX`), or None. `{name}` segments match any one non-empty segment; on equal length a
literal segment beats a placeholder. Matching walks a segment trie: no regex, no per-request
compilation, cost proportional to the number of segments in the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "CACHE_HEADERS",
    "UNBOUNDED_TTL",
    "RouteTable",
    "Rule",
    "cache_header_set",
    "canonical_forms",
    "odd_path",
    "odd_target",
    "path_problem",
    "split_route",
]

# In a decoded path: an empty segment (`//`), a dot segment (`/./`, `/../`, a trailing `/.` or
# `/..`), a backslash, or a control character. Frameworks disagree on these (werkzeug merges
# `//` and routes `//api/me` to `/api/me`; browsers and some servers fold `\` and dot segments;
# NUL truncates in C layers), so the route we match may not be the one the app runs.
_ODD_PATH = re.compile(r"//|/\.\.?(?:/|$)|[\\\x00-\x1f\x7f]")
# In the raw target: an encoded `/`, `\`, `.` or control character (`%2F`, `%5C`, `%2E`,
# `%00`-`%1F`, `%7F`), which some layers decode before routing and others after.
_ODD_ENCODING = re.compile(r"%(?:2[EeFf]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")


def path_problem(path: str, target: str | None = None) -> str:
    """Why a request path is not canonical (the `detail=` of its BYPASS), or "": `path` is the
    decoded path the route is matched on, `target` the raw request-target path, when the
    server gives it. Any oddity bypasses rather than being normalised: never stored, never
    served from an entry, so no framework's own normalisation can make two requests meet."""
    return "path" if odd_path(path) or (target is not None and odd_target(target)) else ""


def odd_path(path: str) -> bool:
    """A decoded path that is not canonical (see `_ODD_PATH`), or not absolute."""
    return not path.startswith("/") or _ODD_PATH.search(path) is not None


def odd_target(target: str) -> bool:
    """A raw target in absolute form (`GET http://evil/p`), `*`, or with an encoded separator,
    dot or control character. Most targets hold no `%`: one scan tells."""
    return not target.startswith("/") or (
        "%" in target and _ODD_ENCODING.search(target) is not None
    )


def canonical_forms(path: str) -> list[str]:
    """The canonical paths a framework may route a non-canonical `path` to: slashes merged (as
    werkzeug does), dot segments removed (RFC 3986 §5.2.4, as clients and some servers do), a
    backslash read as `/`, and their combinations; `path` itself excluded. An unsafe method on
    `//api/x` may change `/api/x`, so its entries go too: the cache never guesses which one
    the app ran, it drops every candidate's (a few index deletions, on an unusual request)."""
    forms: list[str] = []
    for folded in dict.fromkeys((path, path.replace("\\", "/"))):
        for candidate in (
            _merge_slashes(folded),
            _remove_dot_segments(folded),
            _remove_dot_segments(_merge_slashes(folded)),
        ):
            if candidate != path and candidate not in forms and not odd_path(candidate):
                forms.append(candidate)
    return forms


def _merge_slashes(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` drops its parent."""
    out: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


# Distinct paths whose match is remembered, at most (then forgotten all at once).
_SEEN_LIMIT = 10_000
# A standard-mode route's `ttl` when it gives none: no bound (delta-seconds' own cap, RFC 9111
# §1.2.2), so the response's freshness alone decides.
UNBOUNDED_TTL = 2**31
# The cache's informational headers a route may leave out (`cache_headers:`), lower-case. Age,
# ETag and Cache-Control are protocol fields a client or a downstream cache acts on: always sent.
CACHE_HEADERS = frozenset({"x-cache", "x-cache-key", "x-cache-ttl", "cache-status"})


@dataclass(frozen=True, slots=True)
class Rule:
    """One configured route, with the header bytes it needs prepared ahead of requests."""

    route: str
    ttl: int
    vary_by: tuple[str, ...] | None = None
    private: bool = False
    condition: Callable[[Any], bool] | None = None
    statuses: frozenset[int] = frozenset({200})
    negative_ttl: int | None = None
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    # Query parameter names never keyed (tracking params); compiled from `ignore_params` globs.
    ignored: Callable[[str], object] | None = None
    # Surrogate keys for invalidation, e.g. "event:{event_id}", filled from the path.
    tags: tuple[str, ...] = ()
    # Which of `CACHE_HEADERS` its responses carry, in any case (kept as a lower-case frozenset):
    # all of them unless configured.
    cache_headers: Collection[str] = CACHE_HEADERS
    # `mode: standard` (RFC 9111 shared cache): freshness comes from the response (explicit,
    # else heuristic), `ttl` only bounds it, and a response with neither is not stored. False:
    # `mode: gateway`, the route TTL decides unless the response says shorter.
    standard: bool = False
    # Standard mode: how long an entry with the app's validator (ETag, Last-Modified) is kept
    # past its freshness, to be revalidated with a conditional request rather than refetched
    # (RFC 9111 §4.3). 0 in gateway mode: an expired entry is refetched.
    revalidate_window: int = 0
    # Standard mode with `targeted_fields: strip`: CDN-Cache-Control and Surrogate-Control, this
    # cache's own directives, are not passed on (nor stored) once read.
    strip_targeted: bool = False
    # Placeholder names in route order, e.g. ("event_id",) for /api/events/{event_id}.
    params: tuple[str, ...] = field(init=False)
    ttl_header: bytes = field(init=False)
    cache_control: bytes = field(init=False)
    # `cache_headers` as one flag each, read when a response's headers are built (a HIT's once
    # per entry: the policy remembers them), so leaving a header out costs nothing per request.
    shows_state: bool = field(init=False)  # X-Cache
    shows_key: bool = field(init=False)  # X-Cache-Key
    shows_ttl: bool = field(init=False)  # X-Cache-TTL
    shows_status: bool = field(init=False)  # Cache-Status

    def __post_init__(self) -> None:
        shown = cache_header_set(self.cache_headers)
        object.__setattr__(self, "cache_headers", shown)
        object.__setattr__(self, "shows_state", "x-cache" in shown)
        object.__setattr__(self, "shows_key", "x-cache-key" in shown)
        object.__setattr__(self, "shows_ttl", "x-cache-ttl" in shown)
        object.__setattr__(self, "shows_status", "cache-status" in shown)
        names = tuple(seg[1:-1] for seg in split_route(self.route) if is_placeholder(seg))
        object.__setattr__(self, "params", names)
        object.__setattr__(self, "ttl_header", str(self.ttl).encode())
        scope = b"private" if self.private else b"public"
        object.__setattr__(self, "cache_control", scope + b", max-age=" + self.ttl_header)


def cache_header_set(names: Collection[str]) -> frozenset[str]:
    """`names` (any case) as a lower-case set of `CACHE_HEADERS`; ValueError for another name
    (config.py refuses those with a ConfigError first)."""
    shown = frozenset(name.lower() for name in names)
    unknown = shown - CACHE_HEADERS
    if unknown:
        raise ValueError(f"not a cache header: {', '.join(sorted(unknown))}")
    return shown


class _Node:
    __slots__ = ("literal", "param", "rule")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.rule: Rule | None = None


def split_route(route: str) -> list[str]:
    """`/api/events/{id}` -> ["api", "events", "{id}"]; `/` -> []."""
    return [seg for seg in route.strip("/").split("/") if seg] if route != "/" else []


def is_placeholder(segment: str) -> bool:
    return len(segment) > 2 and segment[0] == "{" and segment[-1] == "}"


class RouteTable:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self._root = _Node()
        # path -> its match: the trie is walked once per distinct path
        self._seen: dict[str, tuple[Rule, Mapping[str, str]] | None] = {}
        self.rules: tuple[Rule, ...] = tuple(rules)
        for rule in self.rules:
            node = self._root
            for seg in split_route(rule.route):
                if is_placeholder(seg):
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.literal.setdefault(seg, _Node())
            node.rule = rule

    def match(self, path: str) -> Rule | None:
        found = self.match_params(path)
        return found[0] if found else None

    def match_params(self, path: str) -> tuple[Rule, Mapping[str, str]] | None:
        """The matching rule and the values of its `{name}` segments (read-only: the answer
        for a path is remembered and shared by every request for it)."""
        if path in self._seen:
            return self._seen[path]
        found = self._match(path)
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()  # bounded: arbitrary paths must not grow it
        self._seen[path] = found
        return found

    def _match(self, path: str) -> tuple[Rule, Mapping[str, str]] | None:
        segments = path.split("/")
        # segments[0] is "" for an absolute path; a relative one can match nothing.
        if segments[0]:
            return None
        best = self._walk(self._root, segments, 1, ())
        if best is None:
            return None
        _, rule, values = best
        return rule, MappingProxyType(dict(zip(rule.params, values, strict=True)))

    def _walk(
        self, node: _Node, segs: list[str], i: int, values: tuple[str, ...]
    ) -> tuple[int, Rule, tuple[str, ...]] | None:
        best = (i, node.rule, values) if node.rule is not None else None
        if i < len(segs):
            seg = segs[i]
            child = node.literal.get(seg)
            if child is not None:
                found = self._walk(child, segs, i + 1, values)
                if found is not None and (best is None or found[0] > best[0]):
                    best = found
            if node.param is not None and seg:
                found = self._walk(node.param, segs, i + 1, (*values, seg))
                # Strictly longer only: on a tie the literal branch, walked first, wins.
                if found is not None and (best is None or found[0] > best[0]):
                    best = found
        return best
