"""The request flow of a lookup, written once: a sans-I/O generator both adapters drive.

A Lookup plan (`policy.plan`) goes through the same steps in ASGI and WSGI: read the entry,
following a Vary record; serve it fresh, or stale and refresh behind it; else fill: take the
fill lease, or wait for another request's fill and serve its entry; else run the app. The
decisions are here; the I/O is not. `lookup_flow` yields the I/O it needs as values (`Get`,
`GetOrAcquire`, `Forget`, `Acquire`, `Claim`, `WaitLocal`, `WaitRemote`, `Release`) and is
sent each one's result (or thrown the `StoreUnavailable` it raised); it returns what to do
with the request (`Serve`, `PassOn`, `RunApp`). An adapter is a loop that performs the steps,
awaited (asgi.py) or blocking (wsgi.py), the way hishel's proxies drive its `_spec.py` states
and h11's users drive its connection: `drive_sync` is that loop for blocking I/O; the ASGI one
awaits inside the same loop shape.

What stays in the adapters: running the app and recording its response (each adapter's
`MissRecorder`), the background refresh's task or thread, and the process-local claims (a
future or an event).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import StoreUnavailable
from .entry import CachedResponse
from .held import PlainRead
from .policy import CachePolicy, Follow, Found, Lookup, NotFound
from .request_directives import request_directives
from .stats import StatsBook
from .tokens import lease_token
from .trend import MissTrend

__all__ = [
    "Acquire",
    "Claim",
    "Forget",
    "Get",
    "GetOrAcquire",
    "OnlyIfCached",
    "PassOn",
    "Release",
    "RunApp",
    "Serve",
    "WaitLocal",
    "WaitRemote",
    "drive_sync",
    "lookup_flow",
]


# -- the I/O a step asks for (the driver sends back its result) -----------------------------------


@dataclass(slots=True, eq=False)
class Get:
    """Read `key` from the store: bytes, or None."""

    key: str


@dataclass(slots=True, eq=False)
class GetOrAcquire:
    """Read `key` and, if it holds nothing, take the fill lease in the same round trip:
    (raw, epoch), epoch None when another process holds the lease."""

    key: str
    lock_key: str
    token: str
    index_key: str | None


@dataclass(slots=True, eq=False)
class Forget:
    """Delete one unreadable value (housekeeping, not an invalidation): no result."""

    key: str


@dataclass(slots=True, eq=False)
class Acquire:
    """Take the fill lease: the store's epoch, or None when another process holds it."""

    lock_key: str
    token: str
    index_key: str | None


# The three steps on this process's claim name no key: a claim is always on the plan's primary
# key, which the driver has. Each is one shared value, so asking costs no object.
class Claim:
    """Become this process's filler of the plan's key: True, or False when another request of
    this process is filling it (the driver then keeps nothing to release)."""

    __slots__ = ()


class WaitLocal:
    """Wait (at most the coalescing wait) for this process's fill of the plan's key: no
    result."""

    __slots__ = ()


@dataclass(slots=True, eq=False)
class WaitRemote:
    """Wait (bounded) for another process's fill: the driver polls `peek_fill` until the entry
    is there or the lease is gone; no result. Store errors end the wait, never the request."""

    key: str
    lock_key: str


class Release:
    """Give up this process's claim on the plan's key (wakes the requests waiting on it): no
    result."""

    __slots__ = ()


CLAIM, WAIT_LOCAL, RELEASE = Claim(), WaitLocal(), Release()

Step = Get | GetOrAcquire | Forget | Acquire | Claim | WaitLocal | WaitRemote | Release


# -- what the flow ends with ----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Serve:
    """Replay `entry` (`stale`: "" or the stale state it is served in); `refresh`: refresh it
    in the background (stale-while-revalidate)."""

    entry: CachedResponse
    now: float
    stale: str = ""
    refresh: bool = False


@dataclass(slots=True, eq=False)
class PassOn:
    """The store failed: the app answers, uncached, with this BYPASS detail."""

    detail: str


@dataclass(slots=True, eq=False)
class OnlyIfCached:
    """The request said `only-if-cached` and nothing stored serves it: a 504, without the app
    (RFC 9111 §5.2.1.7)."""


@dataclass(slots=True, eq=False)
class RunApp:
    """Run the app. `token`/`epoch`: the fill lease held (token None: store nothing);
    `stale`: the entry to serve if the app fails (stale-if-error); `claimed`: this request
    holds the process's claim on the key, to `Release` once its entry is settled."""

    token: str | None
    epoch: int
    stale: CachedResponse | None
    claimed: bool = False
    # A stored response to revalidate (RFC 9111 §4.3): the app is asked conditionally, and its
    # 304 turns into this response with the 304's headers (`_core/revalidation.py`).
    validating: CachedResponse | None = None
    # `stale` answers only when the app cannot be reached (it raised, or answered 502 or 504:
    # RFC 9111 §4.2.4, a disconnected cache), not for any 5xx as stale-if-error allows.
    disconnected: bool = False
    # A HEAD's answer refreshes this stored GET response (RFC 9111 §4.3.5), under the lease.
    freshening: CachedResponse | None = None


Outcome = Serve | PassOn | RunApp | OnlyIfCached
Flow = Generator[Step, Any, Outcome]
ReadFlow = Generator[Step, Any, "Found | NotFound"]


def lookup_flow(
    policy: CachePolicy,
    trend: MissTrend,
    book: StatsBook,
    plan: Lookup,
    *,
    prefetched: PlainRead | None = None,
    local: Found | None = None,
    takes_lease: bool = False,
    clock: Callable[[], float] = time.time,
) -> Flow:
    """The steps of a Lookup. `prefetched`: the short way's read of the plain key, when it
    made one; `local`: the entry this process holds for the first key; `takes_lease`: read
    and lease in one round trip (`trend.lookup_takes_lease`, which knows the driver's fills);
    `clock`: the driver's wall clock (an input like any other: tests move it)."""
    stale: CachedResponse | None = None
    lease: tuple[str, int | None] | None = None  # (token, epoch) taken by the read
    if plan.refresh:
        # Request no-cache honoured (`honor_request_no_cache`): the app answers. It fills if
        # the lease is free, and never waits for, nor serves, another request's fill.
        if not policy.can_fill(plan):
            return RunApp(None, 0, None)
        return (yield from _fill_alone(book, plan, None))
    if prefetched is not None and prefetched.key != policy.first_key(plan):
        prefetched = None  # a Vary learned meanwhile: the variant is read first now
    # The request's own choice among stored responses (RFC 9111 §5.2.1): read only when it
    # sent a Cache-Control, which a plain request (the short way's) never does. Such a request
    # never takes the lease with its read: it may end without running the app (only-if-cached).
    directives = request_directives(plan.source.header("cache-control"))
    try:
        if prefetched is not None:
            if prefetched.error is not None:
                raise prefetched.error
            step = policy.on_read(plan, prefetched.key, prefetched.raw, first=True)
            found = _settled(step) or (yield from _read(policy, plan, step))
        elif local is not None:
            found = local
        elif takes_lease and directives is None and policy.first_key(plan) == plan.key:
            token = lease_token()
            raw, epoch = yield GetOrAcquire(plan.key, plan.lock_key, token, plan.index_key)
            step = policy.on_read(plan, plan.key, raw, first=True)
            found = _settled(step) or (yield from _read(policy, plan, step))
            if raw is None:
                lease = (token, epoch)
        else:
            found = yield from _read(policy, plan)
    except StoreUnavailable as exc:
        book.bump("errors", plan.rule.route, plan.venue)
        return PassOn(exc.detail)
    refetch = False  # the client refused what is stored: it fills alone, never waits
    validating: CachedResponse | None = None
    disconnected = False  # `stale` answers only for an app that cannot be reached
    freshening: CachedResponse | None = None  # a stored GET response this HEAD may refresh
    if not isinstance(found, Found):
        trend.missed(plan.rule.route)
    else:
        trend.found(plan.rule.route)
        now = clock()
        entry = found.entry
        state = policy.freshness(entry, now)
        if directives is not None and not directives.accepts(entry, now, policy.honours_refetch):
            refetch = True
        elif state == "fresh":
            book.bump("hits", plan.rule.route, plan.venue)
            return Serve(entry, now)
        elif directives is not None and directives.tolerates(entry, now):
            # RFC 9111 §4.2.4 / §5.2.1.2: this client accepts it this stale.
            book.bump("stale_hits", plan.rule.route, plan.venue)
            return Serve(entry, now, "max-stale")
        if state == "stale-while-revalidate" and not refetch:
            # RFC 5861 §3: answer at once from the stale entry, refresh behind it.
            book.bump("stale_hits", plan.rule.route, plan.venue)
            return Serve(entry, now, state, refresh=True)
        if state == "stale-if-error":
            stale = entry
        elif policy.serves_disconnected(plan, entry, now):
            stale, disconnected = entry, True  # only if the app cannot be reached
        # A request with credentials on a shared route never updates the shared entry from
        # the app's answer to it (a 304's or a HEAD's headers would be merged for everyone:
        # RFC 9111 §3.5); it refetches, and its answer is stored only if it says public.
        shared_safe = not policy.leads_alone(plan)
        if shared_safe and policy.revalidates(plan, entry, now):
            validating = entry  # RFC 9111 §4.3: ask the app whether it is still good
        if shared_safe and plan.head and policy.kept(plan, entry, now):
            freshening = entry  # RFC 9111 §4.3.5: a HEAD's 200 may refresh it
    if directives is not None and directives.only_if_cached:
        book.bump("bypasses", plan.rule.route, plan.venue)
        return OnlyIfCached()
    outcome: Outcome
    if freshening is not None:
        # RFC 9111 §4.3.5: the app's 200 to this HEAD may refresh the stored GET response.
        outcome = yield from _fill_alone(book, plan, None)
        if isinstance(outcome, RunApp) and outcome.token is not None:
            outcome.freshening = freshening
        return outcome
    if not policy.can_fill(plan):
        # Its answer cannot be stored: it must not lead a fill, nor wait for one.
        outcome = RunApp(None, 0, stale)
    elif refetch or policy.leads_alone(plan):
        outcome = yield from _fill_alone(book, plan, stale, validating)
    else:
        outcome = yield from _fill(policy, book, plan, stale, lease, clock, validating)
    if disconnected and isinstance(outcome, RunApp):
        outcome.disconnected = True
    return outcome


def _read(
    policy: CachePolicy, plan: Lookup, step: Found | NotFound | Follow | None = None
) -> ReadFlow:
    """The entry for `plan`, following a Vary record to the request's variant. `step`: what
    the first key's value said, when it was read already and did not settle the read
    (`_settled`). Returns Found or NotFound."""
    if step is None:
        key = policy.first_key(plan)
        step = policy.on_read(plan, key, (yield Get(key)), first=True)
    while isinstance(step, Follow):
        step = policy.on_read(plan, step.key, (yield Get(step.key)), first=False)
    if isinstance(step, NotFound) and step.drop is not None:
        yield Forget(step.drop)
    return step


def _settled(step: Found | NotFound | Follow) -> Found | NotFound | None:
    """`step` when it ends the read (an entry, or nothing to follow nor drop: the usual case,
    read without a generator); else None, and `_read` goes on from it."""
    if isinstance(step, Follow) or (isinstance(step, NotFound) and step.drop is not None):
        return None
    return step


def _fill(
    policy: CachePolicy,
    book: StatsBook,
    plan: Lookup,
    stale: CachedResponse | None,
    lease: tuple[str, int | None] | None,
    clock: Callable[[], float],
    validating: CachedResponse | None = None,
) -> Flow:
    # A lease taken by the lookup makes this request the filler, even if another request of
    # this process claimed the key first (that one then waits for the lease, so for this fill).
    leads = lease is not None and lease[1] is not None
    claimed = yield CLAIM
    if not claimed and not leads:
        # Another request of this process is filling the key: wait for its entry.
        yield WAIT_LOCAL
        return (yield from _after_wait(policy, book, plan, stale, clock))
    if lease is not None:
        token, epoch = lease
    else:
        token = lease_token()
        try:
            epoch = yield Acquire(plan.lock_key, token, plan.index_key)
        except StoreUnavailable as exc:
            if claimed:
                yield RELEASE
            book.bump("errors", plan.rule.route, plan.venue)
            return PassOn(exc.detail)
    if epoch is None:
        # Another process holds the lease: wait (bounded) for its entry.
        yield WaitRemote(plan.key, plan.lock_key)
        if claimed:
            yield RELEASE
        return (yield from _after_wait(policy, book, plan, stale, clock))
    return RunApp(token, epoch, stale, claimed, validating)


def _fill_alone(
    book: StatsBook,
    plan: Lookup,
    stale: CachedResponse | None,
    validating: CachedResponse | None = None,
) -> Flow:
    """Fill with the lease if it is free, without making anyone wait; else just answer."""
    token = lease_token()
    try:
        epoch = yield Acquire(plan.lock_key, token, plan.index_key)
    except StoreUnavailable:
        book.bump("errors", plan.rule.route, plan.venue)
        epoch = None
    if epoch is None:
        return RunApp(None, 0, stale)
    return RunApp(token, epoch, stale, validating=validating)


def _after_wait(
    policy: CachePolicy,
    book: StatsBook,
    plan: Lookup,
    stale: CachedResponse | None,
    clock: Callable[[], float],
) -> Flow:
    """After another request's fill: its entry if it serves this request, else the app."""
    try:
        found: Found | NotFound | None = yield from _read(policy, plan)
    except StoreUnavailable:
        found = None
    now = clock()
    if isinstance(found, Found) and policy.freshness(found.entry, now) == "fresh":
        book.bump("coalesced", plan.rule.route, plan.venue)
        book.bump("hits", plan.rule.route, plan.venue)
        return Serve(found.entry, now)
    # Not storable, another variant, or the wait ran out: answer without storing.
    return RunApp(None, 0, stale)


def drive_sync(flow: Flow, perform: Callable[[Step], Any]) -> Outcome:
    """Run `flow` to its outcome, performing each step with `perform` (blocking I/O); a
    `StoreUnavailable` it raises is thrown into the flow, which decides what it means."""
    send: Any = None
    error: StoreUnavailable | None = None
    while True:
        try:
            step = flow.send(send) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        error = None
        try:
            send = perform(step)
        except StoreUnavailable as exc:
            error, send = exc, None
