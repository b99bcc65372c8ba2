"""What both adapters' MISS recorders decide, written once: the start of the app's answer,
the copy kept of a storable body, the ETag a stored MISS carries, and the fill's writes.

A recorder (_asgi/recorder.py, _wsgi/recorder.py) runs the app and forwards its answer in its
own protocol's terms (ASGI messages, a WSGI iterable) and performs the store I/O (awaited or
blocking); a `MissRecording` holds the state that decides: whether this answer is stored, the
body kept so far, and what to write when it is whole: the store's `Fill` (storage/base.py, the
store contract's value type, plain Python). `RecorderBase` is what both recorders hold and
decide besides: the lease, the stale entry that may stand in for the app, a HEAD's refresh of
the stored GET response. No I/O here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..storage.base import Fill
from .entry import CachedResponse
from .flow import RunApp
from .policy import CachePolicy, Lookup, MissStart, miss_etag
from .revalidation import head_freshened
from .stats import StatsBook

__all__ = ["MissRecording", "RecorderBase", "replaced_by_stale", "stale_detail"]


class MissRecording:
    """One MISS's recording state. `token`: the fill lease held (None: store nothing)."""

    __slots__ = ("body", "book", "headers", "plan", "policy", "recording", "size", "start",
                 "status", "token")  # fmt: skip

    def __init__(
        self, policy: CachePolicy, book: StatsBook, plan: Lookup, token: str | None
    ) -> None:
        self.policy = policy
        self.book = book
        self.plan = plan
        self.token = token
        self.recording = False  # the body is being kept, to be stored when whole
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.start: Any = None  # the MissStart, once the app's headers came

    def begin(
        self, status: int, headers: list[tuple[bytes, bytes]], now: float, *, final: bool = True
    ) -> MissStart:
        """The app's status and headers came: decide, count it as its X-Cache header says,
        and return the decision (its `headers` are the ones to send). `final`: False for a
        WSGI start_response with exc_info replacing an earlier one, never stored nor counted."""
        self.status = status
        self.headers = headers
        decision = self.policy.start_miss(self.plan, status, headers, now)
        self.start = decision
        if decision.store and self.token is None:
            # Answered for this request only (a coalesced wait ran out, say): not stored.
            decision.headers = self.policy.bypass_headers(headers, "not-leader", self.plan.rule)
            decision.store = False
        self.recording = decision.store and final
        self.body.clear()
        self.size = 0
        if final:
            # Counted as the X-Cache header says: an unstorable answer went out as BYPASS.
            route, venue = self.plan.rule.route, self.plan.venue
            self.book.bump("misses" if decision.store else "bypasses", route, venue)
        return decision

    def adopt(
        self, plan: Lookup, status: int, headers: list[tuple[bytes, bytes]], now: float
    ) -> bool:
        """Record, in place of the app's answer, the stored response `status` with `headers`
        for the GET `plan` (a HEAD's answer freshening it, RFC 9111 §4.3.5): whether it is
        storable; its body is then given to `writes`."""
        self.plan = plan
        self.status = status
        self.headers = headers
        self.start = self.policy.start_miss(plan, status, headers, now)
        return bool(self.start.store) and self.token is not None

    @property
    def holds_headers(self) -> bool:
        """Whether the headers wait for the body: a stored MISS without the app's own ETag
        carries the one its HITs will, known once the body is whole."""
        return self.recording and not self.start.has_etag

    def record(self, chunk: bytes) -> None:
        """Keep a copy of a body chunk; a body past max_body_bytes is not kept (nor stored)."""
        if not self.recording:
            return
        self.size += len(chunk)
        if self.size > self.policy.max_body_bytes:
            # Too big to keep: stop buffering and let the rest stream through.
            self.recording = False
            self.body.clear()
        elif chunk:
            self.body.append(bytes(chunk))

    def length_reached(self) -> bool:
        """Whether the declared Content-Length has been received."""
        length: int | None = self.start.content_length
        return length is not None and self.size >= length

    def whole_body(self) -> bytes:
        return b"".join(self.body)

    def etag(self, body: bytes) -> tuple[bytes, bytes] | None:
        """The ETag field a stored MISS's headers gain (recorded with the entry too), or None."""
        field = miss_etag(self.start, body)
        if field is not None:
            self.headers.append(field)  # stored with it: `miss_writes` derives no other
        return field

    def fill(self, body: bytes, now: float, epoch: int) -> Fill | None:
        """What the store's `store_fill` writes, under this recording's lease taken at `epoch`;
        None when the body is not storable after all (incomplete): the lease is then given
        back. Called only with the lease held."""
        plan, token = self.plan, self.token
        assert token is not None
        writes, lifetime = self.policy.miss_writes(
            plan, self.start, self.status, self.headers, body, now
        )
        if not writes:
            return None
        index_keys = self.policy.index_keys(plan, self.headers)
        return Fill(plan.lock_key, token, epoch, writes, index_keys, lifetime)

    def stored(self, ok: bool) -> None:
        """Count the fill's outcome: written, or its lease lost to an invalidation while the
        app was answering (not written)."""
        self.book.bump("stores" if ok else "lost_leases", self.plan.rule.route, self.plan.venue)


class _Middleware(Protocol):
    """What a recorder reads of its middleware (asgi.py's or wsgi.py's)."""

    @property
    def policy(self) -> CachePolicy: ...
    @property
    def book(self) -> StatsBook: ...
    @property
    def app(self) -> Any: ...
    def now(self) -> float: ...


Downstream = TypeVar("Downstream")  # where the answer goes: ASGI's send, WSGI's start_response


class RecorderBase(Generic[Downstream]):
    """What both adapters' MISS recorders hold, and decide without I/O: the request's `plan`,
    where its answer goes (`downstream`), the fill lease (`token`, None: none held; taken at
    `epoch`), the `stale` entry an app's failure may be answered with, the recording of the
    app's answer (`rec`); `on_settled` is called once the lease is settled. The recorders add
    no constructor of their own (their other fields start as class attributes): a MISS makes
    one call for this, as it did before it was shared."""

    def __init__(
        self,
        mw: _Middleware,
        plan: Lookup,
        downstream: Downstream,
        run: RunApp,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.mw = mw
        self.plan = plan
        self.downstream = downstream
        self.token = token = run.token
        self.epoch = run.epoch
        self.rec = MissRecording(mw.policy, mw.book, plan, token)
        self.stale = run.stale
        self.disconnected = run.disconnected  # `stale` answers only an unreachable app
        self.suppressed = False  # the app's 5xx is being swallowed in favour of the stale entry
        # A HEAD under a lease: the stored GET response its 200 may refresh.
        self.freshening = run.freshening
        self.on_settled = on_settled
        self.app = mw.app  # the app as asked: a revalidation wraps it (revalidate.py)

    def replaced(self, status: int) -> bool:
        """With a stale entry: whether the app's answer `status` gives way to it (RFC 5861 §4,
        or RFC 9111 §4.2.4 when disconnected); the rest of the answer is then suppressed."""
        if replaced_by_stale(status, self.disconnected):
            self.suppressed = True
            return True
        return False

    def refreshes(
        self, entry: CachedResponse, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bool:
        """RFC 9111 §4.3.5: whether the app's `status` and `headers` to a HEAD refresh the
        stored GET response `entry`, recorded in place of the HEAD's answer; its body is then
        to be written under this HEAD's lease, as soon as the headers are known (a HEAD has no
        body)."""
        refreshed = head_freshened(entry, status, headers)
        plan = dataclasses.replace(self.plan, head=False)
        return refreshed is not None and self.rec.adopt(
            plan, entry.status, refreshed, self.mw.now()
        )


# An app that cannot be reached, as a gateway or proxy in front of the origin reports it.
_UNREACHABLE = frozenset({502, 504})


def replaced_by_stale(status: int, disconnected: bool) -> bool:
    """Whether the app's answer `status` is replaced by the stale entry the MISS holds: any 5xx
    under stale-if-error (RFC 5861 §4); only 502 and 504 (the app could not be reached) for an
    entry served because the cache is disconnected (RFC 9111 §4.2.4, standard mode)."""
    return status in _UNREACHABLE if disconnected else status >= 500


def stale_detail(disconnected: bool) -> str:
    """The Cache-Status `detail=` of a stale entry served in place of a failed app."""
    return "disconnected" if disconnected else "stale-if-error"
