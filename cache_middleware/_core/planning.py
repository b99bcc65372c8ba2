"""Planning a request: which route, bypass or invalidate or look up, and under which keys
(`plan`, and `plain_key` for the short way). Every poisoning guard asks here first."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urljoin, urlsplit

from .headers import (
    parse_cache_control,
)
from .keys import (
    build_key,
    display_key,
    has_ignored,
    lock_key,
    origin_of,
    path_index_key,
    query_pairs,
)
from .policy_base import (
    _CACHEABLE_METHODS,
    _CREDENTIALS,
    _KEY_MEMO_LIMIT,
    _OVERRIDE_HEADERS,
    _PRINTABLE,
    _SCHEME_HEADERS,
    _SCHEME_SET,
    _UNKNOWN,
    Bypass,
    Invalidate,
    Lookup,
    PolicyState,
    RequestSource,
    _as_text,
    _Keys,
)
from .rules import (
    Rule,
    canonical_forms,
    odd_path,
    odd_target,
)
from .storing import declares_no_body

logger = logging.getLogger("cache_middleware")


class Planner(PolicyState):
    """The request side of `CachePolicy`: requests into plans and keys."""

    def match(self, path: str) -> Rule | None:
        return self.table.match(path)

    def covers(self, path: str) -> bool:
        """Whether any route matches: the adapters' first question, so a path the config does
        not cache costs one remembered lookup and nothing else."""
        return self.table.match_params(path) is not None or self._canonical_covered(path)

    def plan(
        self,
        method: str,
        path: str,
        query_string: str,
        source: RequestSource,
        scheme: str = "http",
        target: str | None = None,
    ) -> Bypass | Invalidate | Lookup | None:
        """`target`: the request target's path as the server received it, before decoding
        (ASGI `raw_path`, WSGI `REQUEST_URI`/`RAW_URI` up to `?`), when the server gives it."""
        matched = self.table.match_params(path)
        if method not in _SAFE_METHODS:
            # RFC 9111 §4.4: unsafe methods, and methods whose safety is unknown (M-SEARCH,
            # custom ones), invalidate on a non-error answer.
            return self._invalidation(path, matched)
        if matched is None:
            return None
        rule, path_params = matched
        if method not in _CACHEABLE_METHODS:
            return Bypass(rule, "method")
        # DESIGN invariant 7: the path we match and key must be the one the framework routes.
        # A non-canonical one (`//`, dot segments, an encoded `/`...) is never stored.
        if self._odd_path(path) or (target is not None and target != path and odd_target(target)):
            return Bypass(rule, "path")
        reason = self._unkeyable(source)
        if reason:
            return Bypass(rule, reason)
        # User code (conditions, resolvers) that raises costs caching, never the request.
        try:
            if rule.condition is not None and not rule.condition(source.view()):
                return Bypass(rule, "condition")
            user: str | None = None
            if rule.private:
                user = self._resolve_user(source)
                if not user:
                    # A private route without a user is never looked up nor stored.
                    return Bypass(rule, "no-user")
                credentialed = False
            else:
                # Authorization and Cookie identify someone, and so does an identity the cache
                # resolves itself (scope["user"], REMOTE_USER, user_header, user_resolver): what
                # is answered to them on a shared route may be personal, so it is stored only
                # if the response says it is public (RFC 9111 §3.5).
                credentialed = source.has_any(_CREDENTIALS) or bool(self._resolve_user(source))
            venue = self._resolve_venue(source)
        except Exception:
            # A traceback once per route, not per request: a broken hook must not flood logs.
            if rule.route not in self._failed_hooks:
                self._failed_hooks.add(rule.route)
                logger.exception("cache condition or resolver failed for %s; bypassing", rule.route)
            return Bypass(rule, "hook-error")
        host = source.header("host") if self._key_host else None
        forwarded = _forwarded_scheme(source)
        # The keys are a pure function of these: derived once, then looked up (the HIT path).
        memo_key = (rule.route, path, query_string, user, venue, scheme, host, forwarded)
        keys = self._keys.get(memo_key, _UNKNOWN)
        if keys is _UNKNOWN:
            keys = self._derive_keys(rule, path, query_string, user, venue, scheme, host, forwarded)
            if len(self._keys) >= _KEY_MEMO_LIMIT:
                self._keys.clear()  # bounded: arbitrary query strings must not grow it
            self._keys[memo_key] = keys
        if keys is None:
            return Bypass(rule, "unlisted-param")
        key, key_header, index_key, lease_key, cloaked = keys
        request_cc = source.header("cache-control")
        directives = parse_cache_control(request_cc.encode("latin-1")) if request_cc else {}
        refresh = self._honor_no_cache and (
            "no-cache" in directives or ("max-age" in directives and directives["max-age"] == "0")
        )
        return Lookup(
            rule,
            key,
            method == "HEAD",
            credentialed,
            key_header,
            source,
            index_key,
            lease_key,
            # RFC 9111 §3.4: a Range request is answered from a stored whole (replay.py), and
            # the app's answer to it (a 206, or a 200 the app chose) is never stored.
            no_store="no-store" in directives or source.header("range") is not None,
            refresh=refresh,
            venue=venue,
            path_params=path_params,
            cloaked=cloaked,
        )

    def plain_key(
        self,
        method: str,
        path: str,
        query_string: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        scheme: str = "http",
    ) -> tuple[Rule, str, bytes | None] | None:
        """The short way to a HIT: (rule, key, X-Cache-Key value) of a plain GET, one whose
        answer no request header but Host can change, when `plan()` derived its key before.

        Plain: a GET on a route that is not private, has no condition and was never seen to
        vary; no venue configured; and none of the headers `plan()` or `respond_hit()` read
        (credentials, validators, cache directives, ranges, bodies, method overrides, routing
        headers). Then `plan()` would return a Lookup of this key with no flag set, and its
        first read would be this key (tests/test_hot_path.py checks it on random requests),
        so a fresh entry held in process can be replayed from here. None: ask `plan()`.

        `raw_headers` are an ASGI scope's: names lower-case, as ASGI servers give them (and as
        Starlette's own header lookups assume)."""
        if method != "GET" or self._plain_off:
            return None  # before the header scan: an unsafe method pays nothing for it
        not_plain = self._not_plain
        host: bytes | None = None
        try:
            for name, value in raw_headers:
                if name in not_plain:
                    return None
                if name == b"host":
                    if host is not None:
                        return None  # two Hosts: plan() would key them joined
                    host = value
        except TypeError:
            return None  # a name that is not bytes (bytearray...): the full path copes with it
        return self.plain_key_of(
            method, path, query_string, None if host is None else host.decode("latin-1"), scheme
        )

    def plain_key_of(
        self, method: str, path: str, query_string: str, host: str | None, scheme: str = "http"
    ) -> tuple[Rule, str, bytes | None] | None:
        """`plain_key` for a request its adapter found to carry none of `not_plain_headers`
        (the WSGI adapter reads them from the environ); `host` is its Host header."""
        if method != "GET" or self._plain_off:
            return None
        matched = self.table.match_params(path)
        if matched is None:
            return None
        rule = matched[0]
        if rule.private or rule.condition is not None or rule.route in self._route_vary:
            return None
        memo_key = (
            rule.route,
            path,
            query_string,
            None,
            None,
            scheme,
            host if self._key_host else None,
            None,
        )
        keys = self._keys.get(memo_key)
        if keys is None or keys[0] in self._learned_vary:
            return None  # not derived yet, an unlisted parameter, or a varying response
        return rule, keys[0], keys[1]

    def _derive_keys(
        self,
        rule: Rule,
        path: str,
        query_string: str,
        user: str | None,
        venue: str | None,
        scheme: str,
        host: str | None,
        forwarded: str | None = None,
    ) -> _Keys | None:
        """(key, X-Cache-Key value, path index key, lease key, whether an ignored parameter
        is present); None for an unlisted param."""
        pairs = query_pairs(query_string, rule.vary_by, rule.ignored)
        if pairs is None:
            return None
        # HEAD is answered from the GET entry (RFC 9110 §9.3.2: same headers, no content).
        # The Host (and scheme) is keyed: an app that builds URLs from it (url_for, redirects)
        # answers each host differently, and a client picks the Host it sends.
        origin = origin_of(scheme, host) if self._key_host else None
        key = build_key(self.key_prefix, "GET", path, pairs, user, venue, origin, forwarded)
        key_header: bytes | None = None
        if self.expose_key and rule.shows_key:
            shown = display_key(key)
            # Escaped keys hold no spaces or controls: only non-ASCII needs quoting for a header.
            key_header = (
                shown.encode("ascii") if shown.isascii() else quote(shown, safe=_PRINTABLE).encode()
            )
        index_key = path_index_key(self.key_prefix, path)
        # An ignored parameter (`utm_*`) is not in the key, yet the app may read it (and echo
        # it): such a request may be answered from the entry, never fill it.
        cloaked = rule.ignored is not None and has_ignored(query_string, rule.ignored)
        return key, key_header, index_key, lock_key(key, self.key_prefix), cloaked

    @property
    def honours_refetch(self) -> bool:
        """Whether request directives that send a request to the app where the cache would
        not (`no-cache`, `max-age`, `min-fresh`) are honoured (`honor_request_no_cache`)."""
        return self._honor_no_cache

    def location_index_keys(
        self, headers: Iterable[tuple[bytes, bytes]], path: str, host: str | None
    ) -> list[str]:
        """RFC 9111 §4.4: after a non-error answer to an unsafe method, the URIs in its
        `Location` and `Content-Location` are invalidated too, when they are on this host
        (a relative reference is; an absolute one must name the request's host). Only a
        canonical path a route covers counts: the index keys to drop, in order, no repeats."""
        found: list[str] = []
        for name, value in headers:
            lname = name.lower()
            if lname != b"location" and lname != b"content-location":
                continue
            target = _same_host_path(value.decode("latin-1").strip(), path, host)
            if target is None or odd_path(target) or self.table.match(target) is None:
                continue
            index_key = path_index_key(self.key_prefix, target)
            if index_key not in found:
                found.append(index_key)
        return found

    def _invalidation(
        self, path: str, matched: tuple[Rule, Mapping[str, str]] | None
    ) -> Invalidate | None:
        """An unsafe method's plan: the path's index, and on a non-canonical path those of its
        canonical forms too (the app may have run any of them: werkzeug routes `//api/x` to
        `/api/x`), whether or not the odd path itself matches a route."""
        prefix = self.key_prefix
        also: tuple[str, ...] = ()
        if self._odd_path(path):
            forms = [form for form in canonical_forms(path) if self.table.match(form)]
            also = tuple(path_index_key(prefix, form) for form in forms)
            if matched is None and forms:
                matched = self.table.match_params(forms[0])
        if matched is None:
            return None
        return Invalidate(matched[0], path_index_key(prefix, path), also)

    def _canonical_covered(self, path: str) -> bool:
        """Whether an uncovered non-canonical path has a covered canonical form (an unsafe
        method on it must invalidate that form), remembered per path as `_odd_path` is."""
        covered = self._canonical_covers.get(path)
        if covered is None:
            covered = self._odd_path(path) and any(
                self.table.match(form) is not None for form in canonical_forms(path)
            )
            if len(self._canonical_covers) >= _KEY_MEMO_LIMIT:
                self._canonical_covers.clear()
            self._canonical_covers[path] = covered
        return covered

    def _odd_path(self, path: str) -> bool:
        """`odd_path`, remembered per path (a MISS on a route keyed by its query sees one path
        many times); bounded as the other memos."""
        odd = self._odd_paths.get(path)
        if odd is None:
            odd = odd_path(path)
            if len(self._odd_paths) >= _KEY_MEMO_LIMIT:
                self._odd_paths.clear()
            self._odd_paths[path] = odd
        return odd

    def _unkeyable(self, source: RequestSource) -> str:
        """Why a GET/HEAD cannot be keyed safely (cache poisoning guards), or ""."""
        if not source.has_any(self._suspects):
            return ""  # the common case, decided in one set operation
        if (
            not declares_no_body(source.header("content-length"))
            or source.header("transfer-encoding") is not None
        ):
            return "request-body"  # a GET whose body the app may read is not the GET we key
        for name in _OVERRIDE_HEADERS:
            if source.header(name) is not None:
                return "method-override"
        for name in self._routing_headers:
            if source.header(name) is not None:
                return "untrusted-header"
        return ""

    def _resolve_user(self, source: RequestSource) -> str | None:
        if self._user_resolver is not None:
            user = self._user_resolver(source.native())
            # An int id is common; anything else that is not text is a resolver bug (bypass).
            return None if user is None else _as_text(user)
        if self._user_header is not None:
            return source.header(self._user_header)
        return source.default_user()

    def _identified_now(self, lookup: Lookup) -> bool:
        """Whether the request of a shared route is attributed to a user once the app has run:
        an authentication middleware inside this one (Starlette's sets scope["user"] in the
        scope it was given, which is ours; a WSGI one sets REMOTE_USER in our environ) is seen
        only now. A resolver that fails counts as a user: not stored. The MISS path only."""
        if lookup.rule.private:
            return False
        try:
            return bool(self._resolve_user(lookup.source))
        except Exception:
            return True

    def _resolve_venue(self, source: RequestSource) -> str | None:
        if self._venue_resolver is not None:
            venue = self._venue_resolver(source.native())
            return None if venue is None else _as_text(venue) or None
        if self._venue_header is not None:
            return source.header(self._venue_header) or None
        return None


def _forwarded_scheme(source: RequestSource) -> str | None:
    """The scheme-like forwarded headers of a request, as one key component (None: none).
    Exact values, each percent-quoted so the join is injective."""
    if not source.has_any(_SCHEME_SET):
        return None
    parts = []
    for name in _SCHEME_HEADERS:
        value = source.header(name)
        if value is not None:
            parts.append(f"{name}={quote(value, safe='')}")
    return ",".join(parts)


# RFC 9110 §9.2.1: the methods defined as safe (GET, HEAD, OPTIONS, TRACE), and the WebDAV and
# QUERY ones defined safe by their RFCs (4918, 5323, 3253, draft-ietf-httpbis-safe-method).
# Every other method's answer may have changed the resource: it invalidates.
_SAFE_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH", "QUERY"}
)


def _same_host_path(reference: str, path: str, host: str | None) -> str | None:
    """The decoded path `reference` (a Location or Content-Location value) names on this host,
    resolved against the request `path`, or None when it names another host or is unusable."""
    if not reference or any(ord(c) < 0x21 or ord(c) == 0x7F for c in reference):
        return None
    try:
        parts = urlsplit(urljoin(path, reference))
    except ValueError:
        return None
    if parts.netloc:
        if host is None or parts.netloc.lower() != host.strip().lower():
            return None  # another host (or port): not this cache's to drop
        if parts.scheme not in ("http", "https"):
            return None
    return unquote(parts.path) if parts.path.startswith("/") else None
