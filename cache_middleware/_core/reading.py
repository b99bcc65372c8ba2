"""Reading: the key to read first, what a read means (an entry, a Vary record to follow,
garbage), the entries this process decoded or holds, and how fresh an entry is."""

from __future__ import annotations

import logging

from .entry import (
    STORABLE_STATUSES,
    CachedResponse,
    CorruptEntry,
    HeldEntry,
    VaryRecord,
    decode_entry,
)
from .keys import (
    variant_key,
)
from .policy_base import (
    _LEARNED_VARY_LIMIT,
    _READS_MEMO_BYTES,
    _READS_MEMO_LIMIT,
    Follow,
    Found,
    Lookup,
    NotFound,
    PolicyState,
)
from .request_directives import serves_stale
from .revalidation import has_validator

logger = logging.getLogger("cache_middleware")


class Reader(PolicyState):
    """The reading side of `CachePolicy`."""

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
        if entry.status not in STORABLE_STATUSES and not lookup.rule.standard:
            # Only a standard route stores such a status: under a gateway route's key it was
            # forged (or written before the route's mode changed), so it is garbage here.
            return NotFound(key, drop=key)
        return Found(key, entry)

    def decoded(self, key: str, raw: bytes) -> CachedResponse | VaryRecord:
        """`decode_entry(raw)` for the value read under `key`, remembered per key: a HIT on
        Redis reads the same bytes every time until the entry changes, and they then decode
        to one shared object (immutable), which `_replayed` remembers the headers of. The
        bytes are compared, never trusted: other bytes under the key are decoded afresh.
        Raises `CorruptEntry` as `decode_entry` does."""
        if type(raw) is HeldEntry:
            # The near-cache's bytes remember their decoding already.
            return self._readable(decode_entry(raw))
        known = self._reads.get(key)
        if known is not None and known[0] == raw:
            return known[1]
        entry = self._readable(decode_entry(raw))
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

    def _readable(self, entry: CachedResponse | VaryRecord) -> CachedResponse | VaryRecord:
        """`entry`, unless its status is one no route of this policy could have stored (with
        gateway routes only, a status outside `STORABLE_STATUSES`): then CorruptEntry."""
        if type(entry) is CachedResponse and entry.status not in self._readable_statuses:
            raise CorruptEntry(f"status {entry.status} is not stored by these routes")
        return entry

    @staticmethod
    def held_entry(raw: bytes) -> CachedResponse | None:
        """The entry in bytes this process holds; None for anything else (a Vary record,
        garbage, or a status only a standard route stores, which needs the route to judge),
        which the full read then handles (and logs) once."""
        try:
            entry = decode_entry(raw)
        except CorruptEntry:
            return None
        if type(entry) is CachedResponse and entry.status in STORABLE_STATUSES:
            return entry
        return None

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

    @staticmethod
    def kept(lookup: Lookup, entry: CachedResponse, now: float) -> bool:
        """Whether `entry` is past its freshness and within the route's `revalidate_window`
        after it (standard mode; gateway routes keep nothing past freshness)."""
        window = lookup.rule.revalidate_window
        return bool(window) and 0 <= now - entry.stored_at - entry.ttl < window

    @staticmethod
    def serves_disconnected(lookup: Lookup, entry: CachedResponse, now: float) -> bool:
        """Whether `entry`, past its freshness, may answer in place of an app that cannot be
        reached (RFC 9111 §4.2.4: a disconnected cache may serve stale): kept within the
        route's `revalidate_window` (standard mode) and not forbidden stale use by the
        response (`no-cache`, `must-revalidate`, `proxy-revalidate`, `s-maxage`)."""
        window = lookup.rule.revalidate_window
        if not window:
            return False
        past = now - entry.stored_at - entry.ttl
        return 0 <= past < window and serves_stale(entry)

    @staticmethod
    def revalidates(lookup: Lookup, entry: CachedResponse, now: float) -> bool:
        """Whether the flow asks the app about `entry` with a conditional request instead of
        refetching it (RFC 9111 §4.3): it is past its freshness lifetime, within the route's
        `revalidate_window` after it (standard mode; 0, never, in gateway mode), and the app
        gave it a validator (an ETag of its own, or Last-Modified)."""
        window = lookup.rule.revalidate_window
        if not window:
            return False
        past = now - entry.stored_at - entry.ttl
        return 0 <= past < window and has_validator(entry)
