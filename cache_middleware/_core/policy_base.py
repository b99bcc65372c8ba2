"""The policy's shared parts: the values its decisions are made of (`Lookup`, `Found`,
`MissStart`...), the request headers it reads, and `PolicyState`, the state every part of
`CachePolicy` shares (its route table, its settings and its bounded memos)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from .entry import (
    STANDARD_STATUSES,
    STORABLE_STATUSES,
    CachedResponse,
)
from .headers import (
    HOP_BY_HOP,
    HeaderList,
)
from .rules import (
    CACHE_HEADERS,
    RouteTable,
    Rule,
    cache_header_set,
)

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
# What a BYPASS drops of the app's answer: ours, bar `Age`. A BYPASS is not from this cache, so
# the age an upstream cache gave the response goes on as it came (RFC 9111 §5.1).
_OURS_ON_BYPASS = _OURS - {b"age"}
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
    # RFC 9111 §4.2.3: the response's age when it arrived (the upstream `Age`), None when the
    # app sent none usable. Stored as `stored_at = now - age` with `ttl` the whole freshness
    # lifetime, so `now - stored_at` is the current_age everywhere; forwarded on the MISS.
    age: int | None = None
    # Standard mode: seconds the entry is kept past its freshness for revalidation (the route's
    # `revalidate_window` when the app gave it a validator, else 0).
    keep: int = 0


class PolicyState:
    """What `CachePolicy` is made with, and the memos its parts share."""

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
        # Statuses a record read from the store may hold (`Reader.decoded`): with gateway routes
        # only, exactly those a route may list; a standard route may store any final status.
        self._readable_statuses = (
            STANDARD_STATUSES if any(rule.standard for rule in rules) else STORABLE_STATUSES
        )
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


def _spellings(name: str) -> list[str]:
    """`x-forwarded-host` and every form with `_` for any of its `-`: the names under which a
    server may pass the header on, and a gateway or framework read it as the same one."""
    forms = [""]
    for part in name.split("-"):
        forms = [f"{form}{sep}{part}" for form in forms for sep in (("-", "_") if form else ("",))]
    return forms


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a resolver must return str, int or None, got {type(value).__name__}")


def _encode(value: str | None) -> bytes | None:
    return value.encode("latin-1") if value is not None else None


def _cache_status(params: str) -> bytes:
    """RFC 9211 Cache-Status: our name, then the parameters. Never a key or a user id."""
    return _CACHE_NAME + b"; " + params.encode("ascii")


def _without_ours(headers: HeaderList, ours: frozenset[bytes] = _OURS) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in ours]
