"""The WSGI driver of the lookup flow: performs, blocking, each step
`_core/flow.lookup_flow` yields (reads, leases, claims on `threading.Event`s, waits), then does
what the flow ends with. Decides nothing."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .._core import flow as steps
from .._core.entry import CachedResponse
from .._core.flow import Flow, Step, drive_sync
from .._core.held import PlainRead
from .._core.policy import CachePolicy, Found, Lookup
from .._core.rules import Rule
from .._core.stats import StatsBook
from .._core.trend import MissTrend
from ..config import Settings
from ..errors import StoreUnavailable
from ..storage import SyncStore
from .recorder import MissRecorder
from .request import Environ, StartResponse, status_line, to_str
from .revalidate import conditional_environ, revalidating

if TYPE_CHECKING:
    from ..wsgi import WSGICacheMiddleware

__all__ = ["GetOrAcquireCall", "LookupDriver"]

POLL_INTERVAL = 0.02  # how often a request waiting on another process's fill looks again

GetOrAcquireCall = Callable[[str, str, str, int, "str | None"], tuple[bytes | None, int | None]]

# The headers of a 504 for only-if-cached: no content.
_EMPTY = ((b"content-length", b"0"),)


class LookupDriver:
    """WSGICacheMiddleware's Lookup path (a mixin: it shares the middleware's state)."""

    # Set by WSGICacheMiddleware.__init__.
    policy: CachePolicy
    store: SyncStore
    settings: Settings
    book: StatsBook
    trend: MissTrend
    _fills: dict[str, threading.Event]
    _fills_lock: threading.Lock
    _lease_ms: int
    _get_or_acquire: GetOrAcquireCall | None

    if TYPE_CHECKING:  # provided by WSGICacheMiddleware and its other parts

        def _lookup_flow(
            self, plan: Lookup, prefetched: PlainRead | None, local: Found | None = None
        ) -> Flow: ...

        @staticmethod
        def now() -> float: ...
        def _bypass(
            self, environ: Environ, start_response: StartResponse, reason: str,
            rule: Rule | None = None, venue: str | None = None,
        ) -> Iterable[bytes]: ...  # fmt: skip
        def _refresh_in_background(self, plan: Lookup, environ: Environ) -> None: ...

    def _lookup(
        self,
        plan: Lookup,
        environ: Environ,
        start_response: StartResponse,
        prefetched: PlainRead | None = None,
    ) -> Iterable[bytes]:
        """Drive `_core/flow.lookup_flow` with blocking I/O, then do what it ends with. This
        process's claims on keys it fills are events in `self._fills`."""
        flow = self._lookup_flow(plan, prefetched)
        claimed = False

        def perform(step: Step) -> Any:
            nonlocal claimed
            if isinstance(step, steps.Get):
                return self.store.get(step.key)
            if isinstance(step, steps.Claim):
                claimed = self._claim(plan.key) is None
                return claimed
            if isinstance(step, steps.Release):
                if claimed:
                    claimed = False
                    self._release(plan.key)
                return None
            if isinstance(step, steps.GetOrAcquire):
                assert self._get_or_acquire is not None  # asked only when the store has it
                return self._get_or_acquire(
                    step.key, step.lock_key, step.token, self._lease_ms, step.index_key
                )
            if isinstance(step, steps.Acquire):
                return self.store.acquire_fill(
                    step.lock_key, step.token, self._lease_ms, step.index_key
                )
            if isinstance(step, steps.Forget):
                return self.store.forget(step.key)
            if isinstance(step, steps.WaitLocal):
                event = self._fills.get(plan.key)
                if event is not None:
                    event.wait(self.settings.coalesce_wait)
                return None
            if isinstance(step, steps.WaitRemote):
                return self._wait_remote(step.key, step.lock_key)
            raise AssertionError(f"unknown flow step {step!r}")

        try:
            outcome = drive_sync(flow, perform)
        except BaseException:
            if claimed:
                self._release(plan.key)
            raise
        if isinstance(outcome, steps.Serve):
            if outcome.refresh:
                self._refresh_in_background(plan, environ)
            return self._replay(plan, outcome.entry, outcome.now, start_response, outcome.stale)
        if isinstance(outcome, steps.PassOn):
            return self._bypass(environ, start_response, outcome.detail, plan.rule, plan.venue)
        if isinstance(outcome, steps.OnlyIfCached):
            headers = self.policy.bypass_headers(_EMPTY, "only-if-cached", plan.rule)
            start_response(status_line(504), to_str(headers))
            return []
        recorder = MissRecorder(cast("WSGICacheMiddleware", self), plan, start_response, outcome)
        if outcome.validating is not None:  # RFC 9111 §4.3: ask conditionally
            recorder.app = revalidating(recorder.app, outcome.validating)
            environ = conditional_environ(environ, outcome.validating)
        if not claimed:
            return recorder.response(environ)
        return recorder.response(environ, on_done=functools.partial(self._release, plan.key))

    def _replay(
        self,
        plan: Lookup,
        entry: CachedResponse,
        now: float,
        start_response: StartResponse,
        stale: str = "",
    ) -> list[bytes]:
        status, headers, body = self.policy.respond_hit(plan, entry, now, stale=stale)
        start_response(status_line(status), to_str(headers))
        return [body]

    def _claim(self, key: str) -> threading.Event | None:
        """Become this process's filler of `key` (returns None), or get the filler's event."""
        with self._fills_lock:
            event = self._fills.get(key)
            if event is None:
                self._fills[key] = threading.Event()
            return event

    def _release(self, key: str) -> None:
        with self._fills_lock:
            event = self._fills.pop(key, None)
        if event is not None:
            event.set()

    def _wait_remote(self, key: str, lock_key: str) -> None:
        deadline = time.monotonic() + self.settings.coalesce_wait
        while time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            try:
                value, locked = self.store.peek_fill(key, lock_key)
            except StoreUnavailable:
                return
            if value is not None or not locked:
                return

    # -- stale-while-revalidate ----------------------------------------------------------------
