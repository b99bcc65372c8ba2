"""Replay: a stored entry into the status, headers and body a HIT sends (a 304 when the
request's validators match), and the headers of a BYPASS."""

from __future__ import annotations

import logging

from .entry import (
    CachedResponse,
)
from .headers import (
    TARGETED_FIELDS,
    HeaderList,
    get_header,
    has_header,
    parse_etag_list,
    parse_http_date,
    weak_match,
)
from .policy_base import (
    _CONDITIONAL,
    _HEADS_MEMO_BYTES,
    _HEADS_MEMO_LIMIT,
    _NOT_MODIFIED_FIELDS,
    _OURS_ON_BYPASS,
    Lookup,
    PolicyState,
    RequestSource,
    _cache_status,
    _encode,
    _without_ours,
)
from .ranges import ranged_response
from .rules import (
    Rule,
)

logger = logging.getLogger("cache_middleware")

_TARGETED = frozenset(TARGETED_FIELDS)
_RANGE = frozenset({"range"})


class Replayer(PolicyState):
    """The replay side of `CachePolicy`."""

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
        if lookup.head:
            return status, headers, b""
        source = lookup.source
        if source.has_any(_RANGE):
            # RFC 9110 §14: a Range answered from the stored whole (206, 416 or the whole).
            return ranged_response(
                source.header("range"), source.header("if-range"), status, headers, entry.body
            )
        return status, headers, entry.body

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

    def _decorate(
        self,
        headers: list[tuple[bytes, bytes]],
        rule: Rule,
        key_header: bytes | None,
        state: bytes,
        ttl: int,
    ) -> None:
        if rule.strip_targeted:
            # `targeted_fields: strip`: this cache's own directives (CDN-Cache-Control,
            # Surrogate-Control) go no further; the record keeps them for stale use and
            # revalidation, so a HIT drops them here (built once per entry: `_replayed`).
            headers[:] = [(n, v) for n, v in headers if n.lower() not in _TARGETED]
        # A standard shared cache passes the response's own fields on: it adds none.
        if not rule.standard and not has_header(headers, b"cache-control"):
            # The lifetime actually granted (a response's max-age or Expires may shorten it);
            # with the Age sent beside it, what is left of it (an upstream Age counts).
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
            # Standard mode: the freshness lifetime this response was given (its own).
            headers.append((b"x-cache-ttl", b"%d" % ttl if rule.standard else rule.ttl_header))

    def bypass_headers(
        self, headers: HeaderList, reason: str = "", rule: Rule | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The app's headers less ours (its `Age` kept), with X-Cache: BYPASS and its
        Cache-Status as `rule`'s `cache_headers` say (without a rule, as the global setting
        says)."""
        state, status = (
            (rule.shows_state, rule.shows_status) if rule is not None else self._bypass_shows
        )
        out = _without_ours(headers, _OURS_ON_BYPASS)
        if state:
            out.append((b"x-cache", b"BYPASS"))
        if status:
            detail = f"; detail={reason}" if reason else ""
            out.append((b"cache-status", _cache_status(f"fwd=bypass{detail}")))
        return out


def _age_fields(
    entry: CachedResponse, age: int, stale: str, status: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """Age (RFC 9111 §5.1), always, and Cache-Status (RFC 9211) when `status`, of a replayed
    entry. `age` is the current_age (§4.2.3): the entry's `stored_at` was set back by the age
    it arrived with, so an upstream cache's time is in it."""
    if not status:
        return ((b"age", str(age).encode()),)
    detail = f"; fwd=stale; detail={stale}" if stale else ""
    return (
        (b"age", str(age).encode()),
        (b"cache-status", _cache_status(f"hit; ttl={entry.ttl - age}{detail}")),
    )
