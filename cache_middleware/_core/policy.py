"""Cache decisions as values; the adapters do the I/O.

The request side: `CachePolicy.plan()` turns a request into `None` (no route: pass through
untouched), `Bypass` (a cached route, but this request must not be looked up), `Invalidate`
(an unsafe method: on success, drop the path's entries) or `Lookup` (the key to read).
`first_key()` / `on_read()` walk a Vary record to the right variant; `freshness()` says whether
an entry is fresh, usable stale, or expired.

The response side: `respond_hit()` turns an entry into the replayed status and headers (a 304
when the request's validators match); `start_miss()` decides, when the app's headers arrive,
whether the response may be stored and for how long; `miss_writes()` builds the records to
write once the body is complete. Every rule lives here once, for ASGI and WSGI, and the line
that implements an RFC rule cites it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

from .entry import (
    CachedResponse,
    CorruptEntry,
    HeldEntry,
    VaryRecord,
    decode_entry,
    encode_entry,
    encode_vary,
)
from .headers import (
    HOP_BY_HOP,
    HeaderList,
    connection_listed,
    delta_seconds,
    get_header,
    parse_cache_control,
    parse_etag_list,
    parse_http_date,
    vary_names,
    weak_match,
)
from .keys import (
    build_key,
    display_key,
    has_ignored,
    lock_key,
    origin_of,
    path_index_key,
    query_pairs,
    tag_index_key,
    variant_key,
)
from .rules import (
    CACHE_HEADERS,
    RouteTable,
    Rule,
    cache_header_set,
    canonical_forms,
    odd_path,
    odd_target,
)

__all__ = [
    "Bypass",
    "CachePolicy",
    "Follow",
    "Found",
    "Invalidate",
    "Lookup",
    "MissStart",
    "NotFound",
    "RequestSource",
    "RequestView",
    "Resolver",
    "body_etag",
    "declares_no_body",
    "miss_etag",
]

logger = logging.getLogger("cache_middleware")

_PRINTABLE = "".join(chr(i) for i in range(0x21, 0x7F))
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9111 §4.4: a non-error response to an unsafe request invalidates the target URI.
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests the origin may answer differently from the plain GET we would key them as: the
# method overrides (Symfony, Rails, Express, Laravel...) and the original method some proxies
# pass on. Never trusted: a cached GET is a GET.
_OVERRIDE_HEADERS = (
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
)
_CREDENTIALS = frozenset({"authorization", "cookie"})
# Headers that make frameworks (or proxies in front of them) rebuild the host, the path prefix
# or the path itself (werkzeug ProxyFix, Django USE_X_FORWARDED_HOST, Symfony/Laravel trusted
# proxies, IIS/nginx rewrites, Starlette/uvicorn root_path): unkeyed, the classic cache-poisoning
# vector. A request carrying one bypasses, unless `trusted_headers` lists it.
_ROUTING_HEADERS = (
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
    "x-forwarded-prefix",
    "x-script-name",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-original-url",
    "x-original-uri",
    "x-original-path",
    "x-envoy-original-path",
    "x-rewrite-url",
)
# Headers from which frameworks rebuild the scheme (and port) of the URLs they write or the
# redirects they answer (ProxyFix x_proto/x_port, Django SECURE_PROXY_SSL_HEADER, Rails, IIS):
# KEYED, their exact values part of the key (`:fwd:`), so a load balancer that always sends
# `X-Forwarded-Proto: https` costs nothing, and a client's `X-Forwarded-Scheme: http` gets an
# entry of its own. Exact, not lower-cased: a framework that compares `== "https"` answers
# `HTTPS` as plain http.
_SCHEME_HEADERS = (
    "front-end-https",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
)
_SCHEME_SET = frozenset(_SCHEME_HEADERS)
# Request fields a background refresh must not copy: it fetches the full response to store.
REFRESH_DROPPED = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"}
)
# RFC 9110 §15.4.5: the fields a 304 must carry when the 200 would have.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)
# Headers this cache owns: an app's (or an upstream cache's) copies are dropped, never doubled.
# Cache-Tag is the app's message to the cache (surrogate keys): never shown to the client.
_OURS = frozenset(
    {b"x-cache", b"x-cache-key", b"x-cache-ttl", b"age", b"cache-status", b"cache-tag"}
)
# Never part of a stored entry: hop-by-hop fields, and ours (set again on every replay).
_NOT_STORED = HOP_BY_HOP | _OURS
_TAG_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
_CACHE_NAME = b"cache-middleware"
_LEARNED_VARY_LIMIT = 10_000
# Requests whose derived keys are remembered, at most (then forgotten all at once).
_KEY_MEMO_LIMIT = 10_000
_UNKNOWN: Any = object()
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since"})
# Entries whose replayed headers are remembered, at most.
_HEADS_MEMO_LIMIT = 1_000
# ... and the bytes of the entries it keeps alive, at most.
_HEADS_MEMO_BYTES = 8 * 1024 * 1024
# Entries read from the store whose decoded form is remembered (per key, with the bytes they
# were read as), at most; and the bytes those keep alive (the record and its decoded body).
_READS_MEMO_LIMIT = 1_000
_READS_MEMO_BYTES = 8 * 1024 * 1024
# (key, X-Cache-Key header value, path index key, lease key, an ignored parameter present)
_Keys = tuple[str, "bytes | None", str, str, bool]


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a route's `condition` callable is given: plain values, whatever the framework."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]

    @property
    def query_params(self) -> dict[str, str]:
        """Query parameters; for a repeated name the first value is given."""
        params: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string, keep_blank_values=True):
            params.setdefault(name, value)
        return params


class RequestSource(Protocol):
    """What an adapter exposes of a request, lazily: only what a decision needs is computed."""

    def header(self, name: str) -> str | None:
        """A request header (repeated fields joined by ", "); `name` is lower-case."""

    def has_any(self, names: frozenset[str]) -> bool:
        """Whether any of these (lower-case) request headers is present."""

    def default_user(self) -> str | None:
        """The framework's authenticated user id (scope["user"], REMOTE_USER), or None."""

    def native(self) -> object:
        """The raw request (ASGI scope or WSGI environ), handed to resolvers."""

    def view(self) -> RequestView:
        """A framework-neutral view of the request, for `condition` callables."""


Resolver = Callable[[object], "str | None"]


@dataclass(frozen=True, slots=True)
class Bypass:
    rule: Rule
    reason: str


@dataclass(frozen=True, slots=True)
class Invalidate:
    """An unsafe method on a cached route: if the app succeeds, drop the path's entries."""

    rule: Rule
    index_key: str
    # A non-canonical path's canonical forms' index keys (`rules.canonical_forms`): the app
    # may have routed the request to any of them, so they are dropped as well.
    also: tuple[str, ...] = ()


# Not frozen: a frozen dataclass's __init__ costs microseconds a HIT cannot spare (one
# object.__setattr__ per field). Treated as immutable all the same.
@dataclass(slots=True, eq=False)
class Lookup:
    rule: Rule
    key: str  # the primary key; a varying response lives under one of its variant keys
    head: bool
    credentialed: bool
    key_header: bytes | None
    source: RequestSource
    index_key: str
    lock_key: str
    no_store: bool = False  # RFC 9111 §5.2.1.5: request no-store
    refresh: bool = False  # request no-cache honoured: skip the read, fetch and store anew
    venue: str | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)
    # The query holds a parameter `ignore_params` leaves out of the key: answered from the
    # entry if there is one, never stored (the app may read what the key does not hold).
    cloaked: bool = False


# Not frozen, like Lookup: made on every read.
@dataclass(slots=True, eq=False)
class Found:
    key: str
    entry: CachedResponse


# Not frozen, like Lookup: made on every read.
@dataclass(slots=True, eq=False)
class NotFound:
    key: str  # where the response is to be stored (a variant key when a Vary record said so)
    drop: str | None = None  # a key holding garbage, to delete


# Not frozen, like Lookup: made on every read.
@dataclass(slots=True, eq=False)
class Follow:
    key: str  # a Vary record pointed here: read it next


@dataclass(slots=True)
class MissStart:
    """The decision taken when the app's response headers arrive on a MISS."""

    store: bool
    headers: list[tuple[bytes, bytes]]
    reason: str = ""
    ttl: int = 0
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    vary: tuple[str, ...] = field(default=())
    # The app's declared Content-Length (a whole body is known at that many bytes), and whether
    # the app sent its own ETag (else the stored entry gets `body_etag`).
    content_length: int | None = None
    has_etag: bool = False


class CachePolicy:
    def __init__(
        self,
        rules: tuple[Rule, ...],
        *,
        key_prefix: str,
        venue_header: str | None = None,
        user_header: str | None = None,
        max_body_bytes: int = 1024 * 1024,
        expose_key: bool = True,
        user_resolver: Resolver | None = None,
        venue_resolver: Resolver | None = None,
        trusted_headers: tuple[str, ...] = (),
        honor_request_no_cache: bool = False,
        key_host: bool = True,
        cache_headers: Collection[str] = CACHE_HEADERS,
    ) -> None:
        self.table = RouteTable(rules)
        self.key_prefix = key_prefix
        self.max_body_bytes = max_body_bytes
        self.expose_key = expose_key
        # The global `cache_headers`, for a BYPASS whose adapter does not name its route.
        shown = cache_header_set(cache_headers)
        self._bypass_shows = ("x-cache" in shown, "cache-status" in shown)
        self._venue_header = venue_header.lower() if venue_header else None
        self._user_header = user_header.lower() if user_header else None
        self._user_resolver = user_resolver
        self._venue_resolver = venue_resolver
        self._failed_hooks: set[str] = set()
        trusted = {name.lower() for name in trusted_headers}
        self._routing_headers = tuple(h for h in _ROUTING_HEADERS if h not in trusted)
        # Every header a guard looks at: absent all of them, no guard needs a closer look.
        self._suspects = frozenset(
            {"content-length", "transfer-encoding", "range"}
            | set(_OVERRIDE_HEADERS)
            | set(self._routing_headers)
        )
        self._honor_no_cache = honor_request_no_cache
        self._key_host = key_host
        # A plain GET carries none of these: every header a decision of `plan()` or
        # `respond_hit()` reads, bar Host (lower-case; the adapters map them to their forms).
        self.not_plain_headers = frozenset(
            self._suspects
            | _CREDENTIALS
            | _CONDITIONAL
            | REFRESH_DROPPED
            | _SCHEME_SET
            | {"cache-control", "pragma"}
            | {h for h in (self._user_header, self._venue_header) if h}
        )
        # Every spelling with `_` for `-` too: uvicorn passes `X_Forwarded_Host` on, and a2wsgi
        # or Django's ASGI handler make it HTTP_X_FORWARDED_HOST. A set, so the scan costs the
        # same whatever its size.
        self._not_plain = frozenset(
            spelling.encode("latin-1")
            for name in self.not_plain_headers
            for spelling in _spellings(name)
        )
        # With a venue (a header or a resolver) every key depends on more than the URL.
        self._plain_off = venue_header is not None or venue_resolver is not None
        # Primary key -> the request headers its responses vary on, learned from Vary records,
        # so that a varying HIT is still one read once this process has seen the record.
        self._learned_vary: dict[str, tuple[str, ...]] = {}
        self._route_vary: dict[str, tuple[str, ...]] = {}
        # (route, path, query, user, venue, scheme, host, forwarded scheme headers) -> the keys
        self._keys: dict[
            tuple[str, str, str, str | None, str | None, str, str | None, str | None], Any
        ] = {}
        # (entry id, stale detail, X-Cache-Key, route) -> (entry, its replayed headers without
        # Age and Cache-Status, the age in seconds they were last completed for, all of them)
        self._heads: dict[tuple[int, str, bytes | None, str], Any] = {}
        self._heads_bytes = 0
        # path -> whether it is not canonical (`odd_path`)
        self._odd_paths: dict[str, bool] = {}
        # uncovered path -> whether a canonical form of it is covered (`_canonical_covered`)
        self._canonical_covers: dict[str, bool] = {}
        # key -> (the bytes last read under it, what they decode to): see `decoded`.
        self._reads: dict[str, tuple[bytes, CachedResponse]] = {}
        self._reads_bytes = 0

    # -- requests ------------------------------------------------------------------------------

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
        if method in _UNSAFE_METHODS:
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
            no_store="no-store" in directives,
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
        if source.header("range") is not None:
            return "range"  # RFC 9111 §3.4: we store whole responses only, never ranges
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

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def can_fill(lookup: Lookup) -> bool:
        """Whether this request's answer could fill the entry. One that cannot (HEAD, request
        no-store) goes straight to the app: it must neither lead a fill, which would send every
        waiter to the app, nor wait for one."""
        return not (lookup.head or lookup.no_store or lookup.cloaked)

    @staticmethod
    def leads_alone(lookup: Lookup) -> bool:
        """A request with credentials may fill the entry (if the answer says `public`) but
        should not be waited on: its answer is likely personal, and waiters would then all
        go to the app. It takes the lease if free and never makes others wait in process."""
        return lookup.credentialed

    def _variant(self, lookup: Lookup, names: tuple[str, ...]) -> str:
        # RFC 9111 §4.1: the stored variant must match the request on every Vary header.
        return variant_key(lookup.key, names, [lookup.source.header(n) for n in names])

    def first_key(self, lookup: Lookup) -> str:
        """The key to read first: the variant straight away once this process knows the Vary."""
        names = self._guess_vary(lookup)
        return self._variant(lookup, names) if names else lookup.key

    def _guess_vary(self, lookup: Lookup) -> tuple[str, ...] | None:
        # This key's record, else what other keys of the route vary on (usually all the same).
        return self._learned_vary.get(lookup.key) or self._route_vary.get(lookup.rule.route)

    def on_read(
        self, lookup: Lookup, key: str, raw: bytes | None, *, first: bool
    ) -> Found | NotFound | Follow:
        """What one read means. `first` marks the read of `first_key()`; at most three reads
        follow each other (learned variant, record, the record's variant)."""
        if raw is None:
            if first and key != lookup.key:
                # The learned variant is absent: the record may name other headers now.
                return Follow(lookup.key)
            return NotFound(key)
        try:
            entry = self.decoded(key, raw)
        except CorruptEntry as exc:
            logger.warning("dropping unreadable cache entry %r: %s", key, exc)
            return NotFound(key, drop=key)
        if isinstance(entry, VaryRecord):
            if key != lookup.key:
                return NotFound(key, drop=key)  # a record where a variant belongs: garbage
            variant = self._variant(lookup, entry.names)
            if not first and self._guess_vary(lookup) == entry.names:
                return NotFound(variant)  # the same variant we just missed
            self._learn(lookup.key, entry.names, lookup.rule.route)
            return Follow(variant)
        return Found(key, entry)

    def decoded(self, key: str, raw: bytes) -> CachedResponse | VaryRecord:
        """`decode_entry(raw)` for the value read under `key`, remembered per key: a HIT on
        Redis reads the same bytes every time until the entry changes, and they then decode
        to one shared object (immutable), which `_replayed` remembers the headers of. The
        bytes are compared, never trusted: other bytes under the key are decoded afresh.
        Raises `CorruptEntry` as `decode_entry` does."""
        if type(raw) is HeldEntry:
            return decode_entry(raw)  # the near-cache's bytes remember their decoding already
        known = self._reads.get(key)
        if known is not None and known[0] == raw:
            return known[1]
        entry = decode_entry(raw)
        if isinstance(entry, CachedResponse):
            size = 2 * len(raw)  # the record, and the body decoded out of it
            if size <= _READS_MEMO_BYTES // 16:
                if (
                    len(self._reads) >= _READS_MEMO_LIMIT
                    or self._reads_bytes + size > _READS_MEMO_BYTES
                ):
                    self._reads.clear()  # bounded: forgotten all at once, as the other memos
                    self._reads_bytes = 0
                # Bytes counted while in, never given back on replace: at worst an early clear.
                self._reads[key] = (raw, entry)
                self._reads_bytes += size
        return entry

    @staticmethod
    def held_entry(raw: bytes) -> CachedResponse | None:
        """The entry in bytes this process holds; None for anything else (a Vary record,
        garbage), which the full read then handles (and logs) once."""
        try:
            entry = decode_entry(raw)
        except CorruptEntry:
            return None
        return entry if isinstance(entry, CachedResponse) else None

    @classmethod
    def found_held(cls, key: str, raw: bytes) -> Found | None:
        """`on_read` for bytes this process holds, when they are the entry itself."""
        entry = cls.held_entry(raw)
        return None if entry is None else Found(key, entry)

    def _learn(self, key: str, names: tuple[str, ...], route: str) -> None:
        if len(self._learned_vary) >= _LEARNED_VARY_LIMIT:
            # Bounded: the route-level guess still makes a forgotten key's HIT one read.
            self._learned_vary.clear()
        self._learned_vary[key] = names
        self._route_vary[route] = names

    @staticmethod
    def freshness(entry: CachedResponse, now: float) -> str:
        """ "fresh", "stale-while-revalidate", "stale-if-error" or "expired" (RFC 9111 §4.2,
        RFC 5861)."""
        age = now - entry.stored_at
        if age < entry.ttl:
            return "fresh"
        if age < entry.ttl + entry.stale_while_revalidate:
            return "stale-while-revalidate"
        if age < entry.ttl + entry.stale_if_error:
            return "stale-if-error"
        return "expired"

    # -- responses -----------------------------------------------------------------------------

    def respond_hit(
        self, lookup: Lookup, entry: CachedResponse, now: float, *, stale: str = ""
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body to replay; a 304 when the request's validators match."""
        age = max(0, int(now - entry.stored_at))
        status = entry.status
        if 200 <= status < 300 and self._not_modified(lookup.source, entry.headers):
            # RFC 9110 §15.4.5: only the fields that guide caches, no content.
            headers = [(n, v) for n, v in entry.headers if n in _NOT_MODIFIED_FIELDS]
            self._decorate(
                headers, lookup.rule, lookup.key_header, b"STALE" if stale else b"HIT", entry.ttl
            )
            headers.extend(_age_fields(entry, age, stale, lookup.rule.shows_status))
            return 304, headers, b""
        headers = self._replayed(entry, lookup.rule, lookup.key_header, age, stale)
        return status, headers, b"" if lookup.head else entry.body

    def plain_hit_headers(
        self, rule: Rule, key_header: bytes | None, entry: CachedResponse, now: float
    ) -> list[tuple[bytes, bytes]]:
        """`respond_hit`'s headers for a fresh entry and a plain GET (`plain_key`): no
        validators to compare, so the entry's status and body as they are."""
        return self._replayed(entry, rule, key_header, max(0, int(now - entry.stored_at)), "")

    def _replayed(
        self, entry: CachedResponse, rule: Rule, key_header: bytes | None, age: int, stale: str
    ) -> list[tuple[bytes, bytes]]:
        """The entry's headers with ours added: the same for every HIT on an entry the near-cache
        holds (one decoded object) within the same second of its age, so built once per entry
        and second, and copied (a middleware outside may edit the list it is given)."""
        memo_key = (id(entry), stale, key_header, rule.route)
        found = self._heads.get(memo_key)
        if found is not None and found[0] is entry:  # `is`: an id can be reused once freed
            if found[2] == age:
                return list(found[3])
            base: tuple[tuple[bytes, bytes], ...] = found[1]
            size = 0  # already counted
        else:
            headers = list(entry.headers)
            self._decorate(headers, rule, key_header, b"STALE" if stale else b"HIT", entry.ttl)
            base = tuple(headers)
            size = len(entry.body) + 256
            if (
                len(self._heads) >= _HEADS_MEMO_LIMIT
                or self._heads_bytes + size > _HEADS_MEMO_BYTES
            ):
                self._heads.clear()
                self._heads_bytes = 0
        full = (*base, *_age_fields(entry, age, stale, rule.shows_status))
        # One tuple, replaced whole: a thread reading it meanwhile sees one age or the other.
        # The entry is held by the memo, so its id stays its own while the memo has it.
        self._heads[memo_key] = (entry, base, age, full)
        self._heads_bytes += size
        return list(full)

    @staticmethod
    def _not_modified(source: RequestSource, stored: HeaderList) -> bool:
        """RFC 9110 §13.1.2 / §13.1.3 / §13.2.2: If-None-Match wins over If-Modified-Since."""
        if not source.has_any(_CONDITIONAL):
            return False  # the common case, in one set operation
        if_none_match = source.header("if-none-match")
        if if_none_match is not None:
            tags = parse_etag_list(if_none_match.encode("latin-1")) or []
            etag = get_header(stored, b"etag")
            if b"*" in tags:
                return True
            return etag is not None and any(weak_match(tag, etag) for tag in tags)
        since = parse_http_date(_encode(source.header("if-modified-since")))
        if since is None:
            return False
        modified = parse_http_date(get_header(stored, b"last-modified"))
        return modified is not None and modified <= since

    def bypass_headers(
        self, headers: HeaderList, reason: str = "", rule: Rule | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The app's headers less ours, with X-Cache: BYPASS and its Cache-Status as `rule`'s
        `cache_headers` say (without a rule, as the global setting says)."""
        state, status = (
            (rule.shows_state, rule.shows_status) if rule is not None else self._bypass_shows
        )
        out = _without_ours(headers)
        if state:
            out.append((b"x-cache", b"BYPASS"))
        if status:
            detail = f"; detail={reason}" if reason else ""
            out.append((b"cache-status", _cache_status(f"fwd=bypass{detail}")))
        return out

    def start_miss(self, lookup: Lookup, status: int, headers: HeaderList, now: float) -> MissStart:
        start = self._storable(lookup, status, headers, now)
        if not start.store:
            start.headers = self.bypass_headers(headers, start.reason, lookup.rule)
            return start
        out = _without_ours(headers)
        self._decorate(out, lookup.rule, lookup.key_header, b"MISS", start.ttl)
        if lookup.rule.shows_status:
            fwd = "request" if lookup.refresh else "uri-miss"
            out.append((b"cache-status", _cache_status(f"fwd={fwd}; stored")))
        start.headers = out
        return start

    def miss_writes(
        self,
        lookup: Lookup,
        start: MissStart,
        status: int,
        headers: HeaderList,
        body: bytes,
        now: float,
    ) -> tuple[list[tuple[str, bytes, int]], int]:
        """The (key, record, ttl) writes that store a complete response, and the index TTL;
        none when the body is not the length the app declared (RFC 9111 §3.3: a response
        cut short is incomplete and must not be stored as if it were whole)."""
        length = b"%d" % len(body)
        # One pass over the headers: names lower-cased once, what the checks need picked out.
        lowered: list[tuple[bytes, bytes]] = []
        declared: list[bytes] = []
        connection: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname = name.lower()
            lowered.append((lname, value))
            if lname == b"content-length":
                declared.append(value)
            elif lname == b"connection":
                connection.append((lname, value))
        if declared and b", ".join(declared).strip() != length:
            return [], 0
        dropped = _NOT_STORED | connection_listed(connection) if connection else _NOT_STORED
        kept = [(name, value) for name, value in lowered if name not in dropped]
        if status != 204:  # RFC 9110 §8.6: a 204 carries no Content-Length
            kept.append((b"content-length", length))
        if not any(name == b"etag" for name, _ in kept):
            kept.append((b"etag", body_etag(body)))
        entry = CachedResponse(
            status, kept, body, now, start.ttl, start.stale_while_revalidate, start.stale_if_error
        )
        # Kept in Redis as long as any stale use is allowed; freshness is judged by `ttl`.
        lifetime = start.ttl + max(start.stale_while_revalidate, start.stale_if_error)
        record = encode_entry(entry)
        if not start.vary:
            return [(lookup.key, record, lifetime)], lifetime
        self._learn(lookup.key, start.vary, lookup.rule.route)
        return [
            (self._variant(lookup, start.vary), record, lifetime),
            (lookup.key, encode_vary(start.vary), lifetime),
        ], lifetime

    def tags_of(self, lookup: Lookup, headers: HeaderList) -> list[str]:
        """The response's surrogate keys: the route's `tags` filled from the path, plus the
        app's own `Cache-Tag` header (comma- or space-separated), bounded in number and size."""
        params = lookup.path_params
        tags = [
            _TAG_FIELD.sub(lambda m: params.get(m.group(1), m.group(0)), template)
            for template in lookup.rule.tags
        ]
        value = get_header(headers, b"cache-tag")
        if value:
            text = value.decode("latin-1").replace(",", " ")
            tags.extend(
                tag for tag in text.split() if len(tag) <= MAX_TAG_LENGTH and tag.isprintable()
            )
        return list(dict.fromkeys(tags))[:MAX_TAGS]

    def index_keys(self, lookup: Lookup, headers: HeaderList) -> list[str]:
        """Where a stored response is indexed: its path, and each tag (also per venue)."""
        keys = [lookup.index_key]
        for tag in self.tags_of(lookup, headers):
            keys.append(tag_index_key(self.key_prefix, tag))
            if lookup.venue is not None:
                keys.append(tag_index_key(self.key_prefix, tag, lookup.venue))
        return keys

    def _decorate(
        self,
        headers: list[tuple[bytes, bytes]],
        rule: Rule,
        key_header: bytes | None,
        state: bytes,
        ttl: int,
    ) -> None:
        if not any(name.lower() == b"cache-control" for name, _ in headers):
            # The lifetime actually granted (a response's max-age or Expires may shorten it).
            if ttl == rule.ttl:
                headers.append((b"cache-control", rule.cache_control))
            else:
                scope = b"private" if rule.private else b"public"
                headers.append((b"cache-control", b"%s, max-age=%d" % (scope, max(ttl, 0))))
        # The informational headers the route's `cache_headers` chose (Age, Cache-Status: the
        # callers). A HIT's are built once per entry (`_replayed`): leaving some out saves the
        # server their bytes on every response, never a per-request check.
        if rule.shows_state:
            headers.append((b"x-cache", state))
        if key_header is not None and rule.shows_key:
            headers.append((b"x-cache-key", key_header))
        if rule.shows_ttl:
            headers.append((b"x-cache-ttl", rule.ttl_header))

    def _storable(self, lookup: Lookup, status: int, headers: HeaderList, now: float) -> MissStart:
        """Whether and for how long a response may be stored (DESIGN invariant 2)."""
        rule = lookup.rule

        def no(reason: str) -> MissStart:
            return MissStart(False, [], reason)

        if lookup.head:
            return no("head")  # no body to store; HEAD is only ever answered from a GET entry
        if lookup.no_store:
            return no("request-no-store")  # RFC 9111 §5.2.1.5
        if lookup.cloaked:
            return no("ignored-param")  # the app may have read what the key leaves out
        # RFC 9111 §3 / RFC 9110 §15.1: only the statuses the route opted into; the config
        # refuses 206 and 5xx (bar 501), so a partial or an error is never replayed as content.
        if status not in rule.statuses:
            return no("status")
        cache_control = parse_cache_control(get_header(headers, b"cache-control"))
        set_cookie = False
        content_type = b""
        content_length: bytes | None = None
        vary: bytes | None = None
        upstream_age = 0  # RFC 9111 §4.2.3: time it already spent in caches upstream
        expires: bytes | None = None
        date: bytes | None = None
        has_etag = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"set-cookie":
                set_cookie = True
            elif lname == b"content-type":
                content_type = value
            elif lname == b"content-length":
                content_length = value
            elif lname == b"vary":
                vary = value if vary is None else vary + b", " + value
            elif lname == b"expires":
                expires = value
            elif lname == b"date":
                date = value
            elif lname == b"age":
                upstream_age = delta_seconds(value.decode("latin-1")) or 0
            elif lname == b"etag":
                has_etag = True
        if set_cookie:
            return no("set-cookie")  # one user's session must never be replayed to another
        # RFC 9111 §5.2.2.5 / §5.2.2.7: no-store forbids storage; private forbids a shared cache.
        if "no-store" in cache_control:
            return no("no-store")
        if "private" in cache_control and not rule.private:
            return no("private")
        # RFC 9111 §5.2.2.4: no-cache needs revalidation on every use, which we do not do.
        if "no-cache" in cache_control:
            return no("no-cache")
        ttl = rule.negative_ttl if status in (404, 410) and rule.negative_ttl else rule.ttl
        # RFC 9111 §4.2.1: a shared cache uses s-maxage, else max-age, else Expires - Date;
        # the route TTL is an upper bound. An unusable value counts as 0 (already stale).
        if "s-maxage" in cache_control:
            ttl = min(ttl, (delta_seconds(cache_control["s-maxage"]) or 0) - upstream_age)
        elif "max-age" in cache_control:
            ttl = min(ttl, (delta_seconds(cache_control["max-age"]) or 0) - upstream_age)
        elif expires is not None:
            expiry = parse_http_date(expires)
            origin_date = parse_http_date(date)
            if expiry is None:
                ttl = 0  # RFC 9111 §5.3: an invalid Expires means already expired
            else:
                # RFC 9111 §4.2.1: without a Date, the time the response was received.
                ttl = min(ttl, int(expiry - (origin_date if origin_date is not None else now)))
        if ttl <= 0:
            return no("max-age")
        names: tuple[str, ...] = ()
        if vary is not None:
            listed = vary_names(vary)
            if b"*" in listed:
                return no("vary-star")  # RFC 9111 §4.1: Vary: * never matches a later request
            names = tuple(sorted({n.decode("latin-1") for n in listed}))
        if content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream":
            return no("event-stream")
        declared: int | None = None
        if content_length is not None:
            # RFC 9110 §8.6: 1*DIGIT (int() would also take a sign or an underscore).
            if not content_length.strip().isdigit():
                return no("bad-length")
            declared = int(content_length)
            if declared > self.max_body_bytes:
                return no("too-large")
        # RFC 9111 §3.5: a response to a request with Authorization is stored by a shared cache
        # only when it says public, s-maxage or must-revalidate. Cookies get the same rule here:
        # a session cookie is a credential, and the response may be that session's own page.
        if (lookup.credentialed or self._identified_now(lookup)) and not (
            "public" in cache_control
            or "s-maxage" in cache_control
            or "must-revalidate" in cache_control
        ):
            return no("credentials")
        swr, sie = rule.stale_while_revalidate, rule.stale_if_error
        # RFC 5861 §3-4: the response's own stale directives override the route's.
        if "stale-while-revalidate" in cache_control:
            swr = delta_seconds(cache_control["stale-while-revalidate"]) or 0
        if "stale-if-error" in cache_control:
            sie = delta_seconds(cache_control["stale-if-error"]) or 0
        # RFC 9111 §5.2.2.2 / §5.2.2.8 / §5.2.2.10: must-revalidate, proxy-revalidate and
        # s-maxage forbid a shared cache to serve the response stale.
        if (
            "must-revalidate" in cache_control
            or "proxy-revalidate" in cache_control
            or "s-maxage" in cache_control
        ):
            swr = sie = 0
        return MissStart(True, [], "", ttl, swr, sie, names, declared, has_etag)


def _spellings(name: str) -> list[str]:
    """`x-forwarded-host` and every form with `_` for any of its `-`: the names under which a
    server may pass the header on, and a gateway or framework read it as the same one."""
    forms = [""]
    for part in name.split("-"):
        forms = [f"{form}{sep}{part}" for form in forms for sep in (("-", "_") if form else ("",))]
    return forms


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


def body_etag(body: bytes) -> bytes:
    """The ETag the cache gives a stored response that has none: a strong validator derived
    from the bytes (RFC 9110 §8.8.3), the same in every process and restart. A MISS whose body
    is known whole before its headers leave carries it too (`miss_etag`), so the client's first
    copy revalidates against the HITs that follow."""
    return b'"%s"' % hashlib.blake2b(body, digest_size=16).hexdigest().encode()


def miss_etag(start: MissStart, body: bytes) -> tuple[bytes, bytes] | None:
    """The ETag field to add to a stored MISS whose whole `body` is known before its headers
    are sent, and to the headers it is stored with; None when the app sent its own."""
    return None if start.has_etag else (b"etag", body_etag(body))


def declares_no_body(content_length: str | None) -> bool:
    """A request Content-Length that announces no body: absent, empty or zero (some WSGI
    servers always set an empty one). Anything else may carry a body the app reads."""
    return content_length is None or content_length.strip() in ("", "0")


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a resolver must return str, int or None, got {type(value).__name__}")


def _encode(value: str | None) -> bytes | None:
    return value.encode("latin-1") if value is not None else None


def _age_fields(
    entry: CachedResponse, age: int, stale: str, status: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """Age (RFC 9111 §5.1), always, and Cache-Status (RFC 9211) when `status`, of a replayed
    entry."""
    if not status:
        return ((b"age", str(age).encode()),)
    detail = f"; fwd=stale; detail={stale}" if stale else ""
    return (
        (b"age", str(age).encode()),
        (b"cache-status", _cache_status(f"hit; ttl={entry.ttl - age}{detail}")),
    )


def _cache_status(params: str) -> bytes:
    """RFC 9211 Cache-Status: our name, then the parameters. Never a key or a user id."""
    return _CACHE_NAME + b"; " + params.encode("ascii")


def _without_ours(headers: HeaderList) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in _OURS]
