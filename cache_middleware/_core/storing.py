"""Storability and lifetime: whether the app's answer on a MISS may be stored and for how
long (RFC 9111 §3, §4.2), and the records, tags and index keys written when its body is whole."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from .entry import (
    STANDARD_STATUSES,
    CachedResponse,
    encode_entry,
    encode_vary,
)
from .headers import (
    TARGETED_FIELDS,
    HeaderList,
    age_seconds,
    connection_listed,
    delta_seconds,
    get_header,
    parse_cache_control,
    parse_http_date,
    targeted_directives,
    vary_names,
)
from .keys import (
    tag_index_key,
)
from .policy_base import (
    _NOT_STORED,
    _TAG_FIELD,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    Lookup,
    MissStart,
    PolicyState,
    _cache_status,
    _without_ours,
)
from .rules import (
    UNBOUNDED_TTL,
    Rule,
)

logger = logging.getLogger("cache_middleware")

# RFC 9111 §4.2.2 heuristic freshness (`mode: standard`): the fraction of the time since
# Last-Modified the RFC suggests, capped at a day (httpd's CacheMaxExpire default) so a page
# untouched for years is still looked at again daily.
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP = 24 * 3600
# RFC 9110 §15.1: the heuristically cacheable statuses (206 left out: a part is never stored).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 9111 §5.2.2.3 must-understand: the final statuses RFC 9110 §15 defines, whose caching
# rules this cache knows (206 and 304 are never stored as such).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)
_TARGETED = frozenset(TARGETED_FIELDS)


class Storer(PolicyState):
    """The storing side of `CachePolicy`."""

    if TYPE_CHECKING:  # in the other parts of CachePolicy

        def bypass_headers(
            self, headers: HeaderList, reason: str = "", rule: Rule | None = None
        ) -> list[tuple[bytes, bytes]]: ...
        def _learn(self, key: str, names: tuple[str, ...], route: str) -> None: ...
        def _variant(self, lookup: Lookup, names: tuple[str, ...]) -> str: ...
        def _identified_now(self, lookup: Lookup) -> bool: ...
        def _decorate(
            self, headers: list[tuple[bytes, bytes]], rule: Rule, key_header: bytes | None,
            state: bytes, ttl: int,
        ) -> None: ...  # fmt: skip

    def start_miss(self, lookup: Lookup, status: int, headers: HeaderList, now: float) -> MissStart:
        start = self._storable(lookup, status, headers, now)
        if lookup.rule.strip_targeted:
            # `targeted_fields: strip`: this cache's own directives go no further (the stored
            # record keeps them: what a later stale use or revalidation reads).
            headers = [(n, v) for n, v in headers if n.lower() not in _TARGETED]
        if not start.store:
            start.headers = self.bypass_headers(headers, start.reason, lookup.rule)
            return start
        out = _without_ours(headers)
        if start.age is not None:
            # RFC 9111 §5.1: the age it arrived with, passed on (one value, the one counted).
            out.append((b"age", b"%d" % start.age))
        self._decorate(out, lookup.rule, lookup.key_header, b"MISS", start.ttl)
        if lookup.rule.shows_status:
            out.append((b"cache-status", _STORED_REFRESH if lookup.refresh else _STORED_MISS))
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
        # One pass over the headers: names lower-cased once, what is never stored left out,
        # what the checks need picked out.
        kept: list[tuple[bytes, bytes]] = []
        declared: list[bytes] = []
        connection: list[tuple[bytes, bytes]] = []
        etag = False
        for name, value in headers:
            lname = name.lower()
            if lname in _NOT_STORED:
                if lname == b"content-length":
                    declared.append(value)
                elif lname == b"connection":
                    connection.append((lname, value))
                continue
            etag = etag or lname == b"etag"
            kept.append((lname, value))
        if declared and b", ".join(declared).strip() != length:
            return [], 0
        if connection:  # the fields it lists are hop-by-hop too (RFC 9110 §7.6.1)
            listed = connection_listed(connection)
            kept = [(name, value) for name, value in kept if name not in listed]
            etag = etag and b"etag" not in listed
        if status != 204:  # RFC 9110 §8.6: a 204 carries no Content-Length
            kept.append((b"content-length", length))
        if not etag:
            kept.append((b"etag", body_etag(body)))
        # Its age when it arrived counts from the start (RFC 9111 §4.2.3): `now - stored_at`
        # is the current_age that freshness, Age and Cache-Status are computed from.
        age = start.age or 0
        entry = CachedResponse(
            status,
            kept,
            body,
            now - age,
            start.ttl,
            start.stale_while_revalidate,
            start.stale_if_error,
        )
        # Kept in Redis as long as any stale use (or a revalidation) is allowed; freshness is
        # judged by `ttl`.
        kept_for = max(start.stale_while_revalidate, start.stale_if_error, start.keep)
        lifetime = min(start.ttl - age + kept_for, UNBOUNDED_TTL)  # what a store accepts
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
        value = get_header(headers, b"cache-tag")
        templates = lookup.rule.tags
        if not templates and not value:
            return []  # the usual response: no tags
        params = lookup.path_params
        tags = [
            _TAG_FIELD.sub(lambda m: params.get(m.group(1), m.group(0)), template)
            for template in templates
        ]
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

    def _storable(self, lookup: Lookup, status: int, headers: HeaderList, now: float) -> MissStart:
        """Whether and for how long a response may be stored (DESIGN invariant 2)."""
        rule = lookup.rule

        def no(reason: str) -> MissStart:
            return MissStart(False, [], reason)

        if lookup.head:
            return no("head")  # no body to store; HEAD is only ever answered from a GET entry
        if lookup.no_store:
            # RFC 9111 §5.2.1.5; and §3.4: the answer to a Range request is never stored
            # (planning marks it no-store; a HIT answers it from the stored whole).
            if lookup.source.header("range") is not None:
                return no("range")
            return no("request-no-store")
        if lookup.cloaked:
            return no("ignored-param")  # the app may have read what the key leaves out
        # RFC 9111 §3 / RFC 9110 §15.1: a gateway route stores only the statuses it opted into
        # (the config refuses 206 and 5xx bar 501, so a partial or an error is never replayed
        # as content). A standard route stores those, and any other final status but 206 and
        # 304 when the app gives it explicit freshness (checked below, with the lifetime).
        if status not in rule.statuses and not (rule.standard and status in STANDARD_STATUSES):
            return no("status")
        cache_control_field: bytes | None = None
        set_cookie = False
        content_type = b""
        content_length: bytes | None = None
        vary: bytes | None = None
        age: int | None = None  # RFC 9111 §4.2.3: time it already spent in caches upstream
        ages = 0
        expires: list[bytes] = []
        dates: list[bytes] = []
        last_modified: bytes | None = None
        has_etag = False
        cdn: list[bytes] = []
        surrogate: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"set-cookie":
                set_cookie = True
            elif lname == b"cache-control":  # several lines: one list (RFC 9110 §5.3)
                cache_control_field = (
                    value if cache_control_field is None else cache_control_field + b", " + value
                )
            elif lname == b"content-type":
                content_type = value
            elif lname == b"content-length":
                content_length = value
            elif lname == b"vary":
                vary = value if vary is None else vary + b", " + value
            elif lname == b"expires":
                expires.append(value)
            elif lname == b"date":
                dates.append(value)
            elif lname == b"last-modified":
                last_modified = value
            elif lname == b"age":
                ages += 1
                if ages == 1:  # RFC 9111 §5.1: the first field line, its first member
                    age = age_seconds(value)
            elif lname == b"etag":
                has_etag = True
            elif lname == b"cdn-cache-control":
                cdn.append(value)
            elif lname == b"surrogate-control":
                surrogate.append(value)
        if set_cookie:
            return no("set-cookie")  # one user's session must never be replayed to another
        cache_control = parse_cache_control(cache_control_field)
        # Standard mode keeps an entry `revalidate_window` seconds past its freshness: to be
        # revalidated (with the app's validator: the ETag the cache derives from the body is not
        # one the app knows) or served stale while the app cannot be reached (RFC 9111 §4.2.4).
        # Only a response with a validator may be stored already stale (no-cache, max-age=0).
        keep = rule.revalidate_window
        validated = keep if has_etag or last_modified is not None else 0
        if rule.standard and (cdn or surrogate):
            # RFC 9213 §2.1 (and Edge Architecture 1.0): this cache's own field, when valid,
            # replaces Cache-Control and Expires for this cache (they still go downstream).
            targeted = targeted_directives(cdn, surrogate)
            if targeted is not None:
                cache_control, expires = targeted, []
        # RFC 9111 §5.2.2.3: a cache that understands the status may store a `no-store,
        # must-understand` response (standard mode); one that does not must not store it.
        understood = False
        if rule.standard and "must-understand" in cache_control:
            if status not in UNDERSTOOD_STATUSES:
                return no("status")
            understood = True
        # RFC 9111 §5.2.2.5 / §5.2.2.7: no-store forbids storage; private forbids a shared cache.
        if "no-store" in cache_control and not understood:
            return no("no-store")
        if "private" in cache_control and not rule.private:
            return no("private")
        lifetime = freshness_lifetime(cache_control, expires, dates, now)
        if rule.standard and lifetime is None and status not in rule.statuses:
            # RFC 9111 §3: a status outside the heuristically cacheable ones is stored only
            # when the app gave it explicit freshness (the CPDoS guard: docs/security.md).
            return no("status")
        # RFC 9111 §5.2.2.4: no-cache needs revalidation on every use. Gateway mode does not
        # revalidate; standard mode stores it with its validator, stale from the start.
        if "no-cache" in cache_control:
            if not (rule.standard and validated):
                return no("no-cache")
            lifetime = 0
        if not rule.standard:
            keep = 0
        elif lifetime is None:
            lifetime = heuristic_lifetime(status, last_modified, dates, now)
            if lifetime is None:
                return no("no-freshness")  # RFC 9111 §4.2: nothing says how long it is fresh
        # `ttl` is the whole freshness lifetime and the entry's age starts at the upstream
        # `Age` (`stored_at = now - age`), so the route's TTL bounds the time spent in THIS
        # cache: gateway mode's lifetime when the response gives none, else an upper bound.
        current = age or 0
        route_ttl = rule.negative_ttl if status in (404, 410) and rule.negative_ttl else rule.ttl
        bound = route_ttl + current
        ttl = min(bound if lifetime is None else min(bound, lifetime), UNBOUNDED_TTL)
        if ttl - current <= 0 and ttl - current + validated <= 0:
            # Already stale (RFC 9111 §4.2.1: an unusable value is 0), and not kept to be
            # revalidated (standard mode, with a validator, within the window).
            return no("max-age")
        names: tuple[str, ...] = ()
        if vary is not None:
            listed = vary_names(vary)
            if b"*" in listed:
                return no("vary-star")  # RFC 9111 §4.1: Vary: * never matches a later request
            names = tuple(sorted({n.decode("latin-1") for n in listed}))
        if (
            b"event-stream" in content_type.lower()
            and _media_type(content_type) == b"text/event-stream"
        ):
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
        if cache_control:  # (most apps send none on a gateway route: no checks then)
            # RFC 5861 §3-4: the response's own stale directives override the route's.
            if "stale-while-revalidate" in cache_control:
                swr = delta_seconds(cache_control["stale-while-revalidate"]) or 0
            if "stale-if-error" in cache_control:
                sie = delta_seconds(cache_control["stale-if-error"]) or 0
            # RFC 9111 §5.2.2.2 / §5.2.2.8 / §5.2.2.10: must-revalidate, proxy-revalidate
            # and s-maxage forbid a shared cache to serve the response stale.
            # No-cache: never used without revalidating.
            if (
                "must-revalidate" in cache_control
                or "proxy-revalidate" in cache_control
                or "s-maxage" in cache_control
                or "no-cache" in cache_control
            ):
                swr = sie = 0
        return MissStart(True, [], "", ttl, swr, sie, names, declared, has_etag, age, keep)


# The Cache-Status of a stored MISS: asked by the cache (its lookup missed) or by the request
# (a honoured no-cache); built once.
_STORED_MISS = _cache_status("fwd=uri-miss; stored")
_STORED_REFRESH = _cache_status("fwd=request; stored")


def _media_type(content_type: bytes) -> bytes:
    """A Content-Type's media type, lower-cased, without parameters."""
    return content_type.split(b";", 1)[0].strip().lower()


def freshness_lifetime(
    cache_control: dict[str, str | None], expires: list[bytes], dates: list[bytes], now: float
) -> int | None:
    """The explicit freshness lifetime a shared cache reads (RFC 9111 §4.2.1): s-maxage, else
    max-age, else Expires - Date; None when the response gives none. An unusable value counts
    as 0 (already stale), and so do several Expires lines, or several Date lines when Date
    is needed (§4.2.1: "the response should be considered stale")."""
    if "s-maxage" in cache_control:
        return delta_seconds(cache_control["s-maxage"]) or 0
    if "max-age" in cache_control:
        return delta_seconds(cache_control["max-age"]) or 0
    if not expires:
        return None
    if len(expires) > 1 or len(dates) > 1:
        return 0
    expiry = parse_http_date(expires[0], now=now)
    if expiry is None:
        return 0  # RFC 9111 §5.3: an invalid Expires means already expired
    # RFC 9111 §4.2.1: an absent (or invalid) Date is the time the response was received.
    origin_date = parse_http_date(dates[0], now=now) if dates else None
    return max(0, int(expiry - (origin_date if origin_date is not None else now)))


def heuristic_lifetime(
    status: int, last_modified: bytes | None, dates: list[bytes], now: float
) -> int | None:
    """RFC 9111 §4.2.2, for a response without explicit freshness in `mode: standard`: 10% of
    the time since Last-Modified (at Date, else now), at most `HEURISTIC_CAP`, for the
    heuristically cacheable statuses (RFC 9110 §15.1, the only ones a route stores); None
    when there is no usable Last-Modified (then nothing says the response may be reused)."""
    if status not in HEURISTIC_STATUSES or len(dates) > 1:
        return None
    modified = parse_http_date(last_modified, now=now)
    if modified is None:
        return None
    origin_date = parse_http_date(dates[0], now=now) if dates else None
    since = (origin_date if origin_date is not None else now) - modified
    if since <= 0:
        return None  # modified "in the future" (or just now): no history to go by
    return min(int(since * HEURISTIC_FRACTION), HEURISTIC_CAP)


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
