"""Cache decisions as values; the adapters do the I/O.

`CachePolicy.plan()` turns a request into `None` (no route: pass through untouched), `Bypass`
(a cached route, but this request must not be looked up) or `Lookup` (the key to read).
`respond_hit()` turns a stored entry into the replayed status and headers; `start_miss()` decides,
when the app's response headers arrive, whether the response may be stored; `encode_miss()`
builds the stored record once the body is complete. Every rule lives here once, for ASGI and WSGI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote

from .entry import CachedResponse, encode_entry
from .headers import HOP_BY_HOP, HeaderList, get_header, parse_cache_control, vary_names
from .keys import build_key, display_key, query_pairs
from .rules import RouteTable, Rule

__all__ = [
    "Bypass",
    "CachePolicy",
    "Lookup",
    "MissStart",
    "RequestSource",
    "RequestView",
    "Resolver",
]

logger = logging.getLogger("cache_middleware")

_PRINTABLE = "".join(chr(i) for i in range(0x21, 0x7F))
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


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
        """First value of a request header; `name` is lower-case."""

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
class Lookup:
    rule: Rule
    key: str
    head: bool
    credentialed: bool
    key_header: bytes | None


@dataclass(slots=True)
class MissStart:
    """The decision taken when the app's response headers arrive on a MISS."""

    store: bool
    headers: list[tuple[bytes, bytes]]
    reason: str = ""


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
    ) -> None:
        self.table = RouteTable(rules)
        self.key_prefix = key_prefix
        self.max_body_bytes = max_body_bytes
        self.expose_key = expose_key
        self._venue_header = venue_header.lower() if venue_header else None
        self._user_header = user_header.lower() if user_header else None
        self._user_resolver = user_resolver
        self._failed_hooks: set[str] = set()
        self._venue_resolver = venue_resolver

    # -- requests ------------------------------------------------------------------------------

    def match(self, path: str) -> Rule | None:
        return self.table.match(path)

    def plan(
        self, method: str, path: str, query_string: str, source: RequestSource
    ) -> Bypass | Lookup | None:
        rule = self.table.match(path)
        if rule is None:
            return None
        if method not in _CACHEABLE_METHODS:
            return Bypass(rule, "method")
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
            venue = self._resolve_venue(source)
        except Exception:
            # A traceback once per route, not per request: a broken hook must not flood logs.
            if rule.route not in self._failed_hooks:
                self._failed_hooks.add(rule.route)
                logger.exception("cache condition or resolver failed for %s; bypassing", rule.route)
            return Bypass(rule, "hook-error")
        # HEAD is answered from the GET entry (RFC 9110 §9.3.2: same headers, no content).
        key = build_key(
            self.key_prefix,
            "GET",
            path,
            query_pairs(query_string, rule.vary_by),
            user,
            venue,
        )
        key_header: bytes | None = None
        if self.expose_key:
            shown = display_key(key)
            # Escaped keys hold no spaces or controls: only non-ASCII needs quoting for a header.
            key_header = (
                shown.encode("ascii") if shown.isascii() else quote(shown, safe=_PRINTABLE).encode()
            )
        # Authorization and Cookie both identify someone: what is answered to them on a shared
        # route may be personal, so it is stored only if the response says it is public.
        credentialed = not rule.private and (
            source.header("authorization") is not None or source.header("cookie") is not None
        )
        return Lookup(rule, key, method == "HEAD", credentialed, key_header)

    def _resolve_user(self, source: RequestSource) -> str | None:
        if self._user_resolver is not None:
            return self._user_resolver(source.native())
        if self._user_header is not None:
            return source.header(self._user_header)
        return source.default_user()

    def _resolve_venue(self, source: RequestSource) -> str | None:
        if self._venue_resolver is not None:
            return self._venue_resolver(source.native()) or None
        if self._venue_header is not None:
            return source.header(self._venue_header) or None
        return None

    # -- responses -----------------------------------------------------------------------------

    def respond_hit(
        self, lookup: Lookup, entry: CachedResponse, now: float
    ) -> list[tuple[bytes, bytes]]:
        """Headers to replay for a HIT; the caller sends `entry.body` unless `lookup.head`."""
        headers = list(entry.headers)
        self._decorate(headers, lookup, b"HIT")
        age = int(now - entry.stored_at)
        headers.append((b"age", str(age if age > 0 else 0).encode()))
        return headers

    def bypass_headers(self, headers: HeaderList) -> list[tuple[bytes, bytes]]:
        return [*_without_ours(headers), (b"x-cache", b"BYPASS")]

    def start_miss(self, lookup: Lookup, status: int, headers: HeaderList) -> MissStart:
        reason = self._unstorable(lookup, status, headers)
        if reason:
            return MissStart(False, self.bypass_headers(headers), reason)
        out = _without_ours(headers)
        self._decorate(out, lookup, b"MISS")
        return MissStart(True, out)

    def encode_miss(
        self, lookup: Lookup, status: int, headers: HeaderList, body: bytes, now: float
    ) -> bytes:
        """The record to store: the app's own headers minus hop-by-hop ones, exact length."""
        kept = [
            (name.lower(), value)
            for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in _OURS
        ]
        kept.append((b"content-length", str(len(body)).encode()))
        return encode_entry(CachedResponse(status, kept, body, now, lookup.rule.ttl))

    def _decorate(self, headers: list[tuple[bytes, bytes]], lookup: Lookup, state: bytes) -> None:
        rule = lookup.rule
        if not any(name.lower() == b"cache-control" for name, _ in headers):
            headers.append((b"cache-control", rule.cache_control))
        headers.append((b"x-cache", state))
        if lookup.key_header is not None:
            headers.append((b"x-cache-key", lookup.key_header))
        headers.append((b"x-cache-ttl", rule.ttl_header))

    def _unstorable(self, lookup: Lookup, status: int, headers: HeaderList) -> str:
        """Why a response must not be stored, or "" when it may be (DESIGN invariant 2)."""
        if lookup.head:
            return "head"  # no body to store; HEAD is only ever answered from a GET entry
        if status != 200:
            return "status"
        cache_control = parse_cache_control(get_header(headers, b"cache-control"))
        set_cookie = False
        content_type = b""
        content_length: bytes | None = None
        vary: bytes | None = None
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
        if set_cookie:
            return "set-cookie"  # one user's session must never be replayed to another
        # RFC 9111 §5.2.2.5 / §5.2.2.7: no-store forbids storage; private forbids a shared cache.
        if "no-store" in cache_control:
            return "no-store"
        if "private" in cache_control and not lookup.rule.private:
            return "private"
        # RFC 9111 §5.2.2.4: no-cache needs revalidation on every use, which we cannot do yet.
        if "no-cache" in cache_control:
            return "no-cache"
        for directive in ("s-maxage", "max-age"):
            if directive in cache_control:
                if _seconds(cache_control[directive]) <= 0:
                    return "max-age"
                break
        if vary is not None:
            names = vary_names(vary)
            if b"*" in names:
                return "vary-star"  # RFC 9111 §4.1: Vary: * never matches a later request
            if names:
                # Variants are not keyed yet: storing one would serve it to every variant.
                return "vary"
        if content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream":
            return "event-stream"
        if content_length is not None:
            try:
                if int(content_length) > self.max_body_bytes:
                    return "too-large"
            except ValueError:
                return "bad-length"
        # RFC 9111 §3.5: a response to a request with Authorization is stored by a shared cache
        # only when it says public, s-maxage or must-revalidate. Cookies get the same rule here:
        # a session cookie is a credential, and the response may be that session's own page.
        if lookup.credentialed and not (
            "public" in cache_control
            or "s-maxage" in cache_control
            or "must-revalidate" in cache_control
        ):
            return "credentials"
        return ""


# Headers this cache owns: an app's (or an upstream cache's) copies are dropped, never doubled.
_OURS = frozenset({b"x-cache", b"x-cache-key", b"x-cache-ttl", b"age"})


def _without_ours(headers: HeaderList) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in _OURS]


def _seconds(value: str | None) -> int:
    """A delta-seconds argument; anything unparsable counts as 0 (RFC 9111 §1.2.2)."""
    if value is None:
        return 0
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else 0
