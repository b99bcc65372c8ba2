"""The ASGI driver of the lookup flow: performs, awaited, each step `_core/flow.lookup_flow`
yields (reads, leases, claims, waits), then does what the flow ends with. Decides nothing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from .._core.entry import CachedResponse
from .._core.flow import (
    Acquire,
    Claim,
    Flow,
    Forget,
    Get,
    GetOrAcquire,
    OnlyIfCached,
    Outcome,
    PassOn,
    Release,
    Serve,
    Step,
    WaitLocal,
    WaitRemote,
)
from .._core.held import PlainRead
from .._core.policy import CachePolicy, Found, Lookup
from .._core.rules import Rule
from .._core.stats import StatsBook
from .._core.trend import MissTrend
from ..config import Settings
from ..errors import StoreUnavailable
from ..storage import AsyncStore
from .recorder import MissRecorder
from .request import Receive, Scope, Send
from .revalidate import conditional_scope, revalidating

if TYPE_CHECKING:
    from ..asgi import CacheMiddleware

__all__ = ["LookupDriver"]

# How often a request waiting for another process's fill looks for the entry.
POLL_INTERVAL = 0.02

GetOrAcquireCall = Callable[
    [str, str, str, int, "str | None"], Awaitable[tuple[bytes | None, int | None]]
]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The headers of a 504 for only-if-cached: no content.
_EMPTY = ((b"content-length", b"0"),)


class LookupDriver:
    """CacheMiddleware's Lookup path (a mixin: it shares the middleware's state)."""

    # Set by CacheMiddleware._configure.
    app: ASGIApp
    policy: CachePolicy
    store: AsyncStore
    settings: Settings
    book: StatsBook
    trend: MissTrend
    _fills: dict[str, asyncio.Future[None]]
    _background: set[asyncio.Task[None]]
    _lease_ms: int
    _get_or_acquire: GetOrAcquireCall | None
    _local_get: Callable[[str], bytes | None] | None

    if TYPE_CHECKING:  # provided by CacheMiddleware and its other parts

        def _lookup_flow(
            self, plan: Lookup, prefetched: PlainRead | None, local: Found | None = None
        ) -> Flow: ...

        def bump(self, name: str, plan: Lookup) -> None: ...
        @staticmethod
        def now() -> float: ...
        def _refresh_in_background(self, plan: Lookup, scope: Scope) -> None: ...
        def _unclaim(self, key: str, done: asyncio.Future[None]) -> None: ...
        async def _bypass(
            self, scope: Scope, receive: Receive, send: Send, reason: str,
            rule: Rule | None = None, venue: str | None = None,
        ) -> None: ...  # fmt: skip

    async def _lookup(
        self,
        plan: Lookup,
        scope: Scope,
        receive: Receive,
        send: Send,
        prefetched: PlainRead | None = None,
    ) -> None:
        """Drive `_core/flow.lookup_flow`: perform each step it yields, then do what it ends
        with. This process's claims on keys it fills are futures in `self._fills`."""
        local = None
        if prefetched is None and not plan.refresh:
            local = self._found_locally(plan)
        flow = self._lookup_flow(plan, prefetched, local)
        claim: asyncio.Future[None] | None = None  # this request's claim on plan.key
        result: Any = None
        error: StoreUnavailable | None = None
        try:
            while True:
                try:
                    step = flow.send(result) if error is None else flow.throw(error)
                except StopIteration as done:
                    outcome: Outcome = done.value
                    break
                result, error = None, None
                try:
                    if isinstance(step, Get):
                        result = await self.store.get(step.key)
                    elif isinstance(step, GetOrAcquire):
                        get_or_acquire = self._get_or_acquire
                        assert get_or_acquire is not None  # asked only when the store has it
                        result = await get_or_acquire(
                            step.key, step.lock_key, step.token, self._lease_ms, step.index_key
                        )
                    elif isinstance(step, Claim):
                        claim = self._claim(plan.key)
                        result = claim is not None
                    elif isinstance(step, Release):
                        if claim is not None:
                            self._unclaim(plan.key, claim)
                            claim = None
                    else:
                        result = await self._perform(step, plan.key)
                except StoreUnavailable as exc:
                    error = exc
            if isinstance(outcome, Serve):
                await self._replay(plan, outcome.entry, outcome.now, send, outcome.stale)
                if outcome.refresh:
                    self._refresh_in_background(plan, scope)
            elif isinstance(outcome, PassOn):
                await self._bypass(scope, receive, send, outcome.detail, plan.rule, plan.venue)
            elif isinstance(outcome, OnlyIfCached):
                headers = self.policy.bypass_headers(_EMPTY, "only-if-cached", plan.rule)
                await send({"type": "http.response.start", "status": 504, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
            else:
                # The waiters are woken as soon as the entry is written, not when this client
                # has read the last chunk.
                settled = (
                    None if claim is None else functools.partial(self._unclaim, plan.key, claim)
                )
                recorder = MissRecorder(cast("CacheMiddleware", self), plan, send, outcome, settled)
                if outcome.validating is not None:  # RFC 9111 §4.3: ask conditionally
                    recorder.app = revalidating(self.app, outcome.validating)
                    scope = conditional_scope(scope, outcome.validating)
                await recorder.run(scope, receive)
        finally:
            if claim is not None and not claim.done():  # done: the recorder settled it
                self._unclaim(plan.key, claim)

    async def _perform(self, step: Step, key: str) -> Any:
        """The I/O of a flow step other than the lookup's read and a claim (`key`: the plan's)."""
        store = self.store
        if isinstance(step, Acquire):
            return await store.acquire_fill(
                step.lock_key, step.token, self._lease_ms, step.index_key
            )
        if isinstance(step, Forget):
            return await store.forget(step.key)
        if isinstance(step, WaitLocal):
            pending = self._fills.get(key)
            if pending is not None:
                await _wait(pending, self.settings.coalesce_wait)
            return None
        if isinstance(step, WaitRemote):
            return await self._wait_remote(step.key, step.lock_key)
        raise AssertionError(f"unknown flow step {step!r}")

    def _claim(self, key: str) -> asyncio.Future[None] | None:
        """Become this process's filler of `key` (its future), or None when another request of
        this event loop is filling it. Another loop's fill is not ours to wait on."""
        pending = self._fills.get(key)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            return None
        done = asyncio.get_running_loop().create_future()
        self._fills[key] = done
        return done

    async def _read_plain(self, key: str) -> PlainRead:
        """One GET of a plain key, handed on to the full path if it is not a fresh HIT."""
        try:
            return PlainRead(key, await self.store.get(key))
        except StoreUnavailable as exc:
            return PlainRead(key, None, exc)

    def _found_locally(self, plan: Lookup) -> Found | None:
        """The entry, when this process holds it: a HIT with no await before the response.
        Anything else (not held here, a Vary record to follow, garbage) takes the full read."""
        local_get = self._local_get
        if local_get is None:
            return None
        key = self.policy.first_key(plan)
        raw = local_get(key)
        if raw is None:
            return None
        return self.policy.found_held(key, raw)

    async def _replay(
        self, plan: Lookup, entry: CachedResponse, now: float, send: Send, stale: str = ""
    ) -> None:
        status, headers, body = self.policy.respond_hit(plan, entry, now, stale=stale)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _wait_remote(self, key: str, lock_key: str) -> None:
        deadline = time.monotonic() + self.settings.coalesce_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                value, locked = await self.store.peek_fill(key, lock_key)
            except StoreUnavailable:
                return
            if value is not None or not locked:
                return


async def _wait(future: asyncio.Future[None], timeout: float) -> None:
    # Bounded: past `timeout` the waiter answers from the app rather than wait on.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout)
