"""CacheMiddleware: the pure-ASGI adapter.

Reads like a script of calls into `_core` (decisions) and `storage` (bytes): plan the request;
replay a fresh HIT; serve stale and refresh in the background; or fill: one request per key
runs the app (coalescing in this process with a future, across processes with a Redis lease)
while the others wait for its entry. Per-request state lives in a `_MissRecorder`, never on the
middleware. Any storage failure fails open: the app answers and the response says BYPASS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core.entry import CachedResponse
from ._core.flow import (
    Acquire,
    Claim,
    Forget,
    Get,
    GetOrAcquire,
    Outcome,
    PassOn,
    Release,
    Serve,
    Step,
    WaitLocal,
    WaitRemote,
    lookup_flow,
)
from ._core.held import PlainRead, reads_plain, replay_held, replay_read
from ._core.policy import (
    REFRESH_DROPPED,
    CachePolicy,
    Found,
    Invalidate,
    Lookup,
    RequestView,
)
from ._core.recording import MissRecording
from ._core.stats import StatsBook
from ._core.tokens import lease_token
from ._core.trend import MissTrend, lookup_takes_lease
from .config import ConfigSource, load_config
from .errors import ConfigError, StoreUnavailable
from .events.in_process import maybe_start_in_process
from .events.process_sink import events_of, flush_events, publish_write_invalidation
from .registry import register
from .storage import AsyncStore, make_async_store
from .storage.tracking import with_near_cache_async
from .wiring import FLUSH_INTERVAL, STATS_TTL, build_policy, stats_key

__all__ = ["CacheMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("cache_middleware")

# How often a request waiting for another process's fill looks for the entry.
POLL_INTERVAL = 0.02
# Background refreshes (stale-while-revalidate) under way at once, at most.
MAX_REFRESHES = 16


_GetOrAcquire = Callable[
    [str, str, str, int, "str | None"], Awaitable[tuple[bytes | None, int | None]]
]


# HTTP versions whose request body is announced by Content-Length or Transfer-Encoding (the
# guards read those); HTTP/2 and HTTP/3 send a body with neither.
_HEADER_FRAMED = frozenset({"1.0", "1.1"})


def _target(scope: Scope) -> str | None:
    """The raw request-target path (`raw_path`), for the path guard; None when not given."""
    raw = scope.get("raw_path")
    # ASGI's raw_path holds no query string; a `?` in it would be no oddity either.
    return raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else None


class _Peeked:
    """`receive` with its first message already read, to see whether an HTTP/2 or HTTP/3
    request has a body (bytes, or more to come); the app still gets every message, that one
    first. A disconnect has no body and is handed on as it came."""

    __slots__ = ("first", "has_body", "receive")

    def __init__(self, first: Message | None, receive: Receive) -> None:
        self.first = first
        self.receive = receive
        self.has_body = first is not None and bool(
            first.get("body") or first.get("more_body", False)
        )

    async def __call__(self) -> Message:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        return await self.receive()


class _AsgiRequest:
    """The `RequestSource` of an ASGI scope (made only for paths a route covers)."""

    __slots__ = ("_headers", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        # Built here: a request on a covered path always asks (the poisoning guards do).
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            # ASGI gives bytes; servers lower-case the names, but the spec does not bind all.
            # `_` read as `-`: uvicorn passes `X_Forwarded_Host` on, and a WSGI bridge (a2wsgi)
            # or Django's ASGI handler turn it into HTTP_X_FORWARDED_HOST (the guards' name).
            name = key.decode("latin-1").lower().replace("_", "-")
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        self._headers = headers

    def header(self, name: str) -> str | None:
        return self._headers.get(name)

    def has_any(self, names: frozenset[str]) -> bool:
        return not names.isdisjoint(self._headers)

    def default_user(self) -> str | None:
        # scope["user"] is set by Starlette's AuthenticationMiddleware, which must wrap this one.
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            return None
        for attr in ("identity", "username", "display_name"):
            try:
                value = getattr(user, attr, None)
            except NotImplementedError:
                continue
            if value:
                return str(value)
        return None

    def native(self) -> object:
        return self.scope

    def view(self) -> RequestView:
        return RequestView(
            method=self.scope["method"],
            path=self.scope["path"],
            query_string=self.scope.get("query_string", b"").decode("latin-1"),
            headers=dict(self._headers),
        )


class CacheMiddleware:
    """`app.add_middleware(CacheMiddleware, config="cache.yaml")`."""

    policy: CachePolicy

    def __init__(
        self,
        app: ASGIApp,
        config: ConfigSource,
        *,
        user_resolver: Callable[[object], str | None] | None = None,
        venue_resolver: Callable[[object], str | None] | None = None,
        store: AsyncStore | None = None,
    ) -> None:
        self.app = app
        # A bad config is kept, not raised: Starlette and FastAPI build their middleware on the
        # first call, the lifespan scope, and an exception there makes uvicorn's (and
        # hypercorn's) "auto" lifespan conclude that lifespan is unsupported and serve 500s.
        # Kept, it fails the server's startup with its message (or, where the server runs no
        # lifespan, every request raises it). Invariant 5 of DESIGN.md.
        self.config_error: ConfigError | None = None
        try:
            self._configure(config, user_resolver, venue_resolver, store)
        except ConfigError as exc:
            self.config_error = exc
            # Every request asks `policy.covers` first: this one raises the error, so a
            # refused config costs a working one nothing on its hot path.
            self.policy = _RefusedConfig(exc)  # type: ignore[assignment]

    def _configure(
        self,
        config: ConfigSource,
        user_resolver: Callable[[object], str | None] | None,
        venue_resolver: Callable[[object], str | None] | None,
        store: AsyncStore | None,
    ) -> None:
        self.settings = load_config(config)
        self.policy = build_policy(
            self.settings, user_resolver=user_resolver, venue_resolver=venue_resolver
        )
        self.store = with_near_cache_async(
            store if store is not None else make_async_store(self.settings), self.settings
        )
        self.book = StatsBook()
        self.stats = self.book.total  # the process totals; per route/venue in self.book
        self._next_flush = time.monotonic() + FLUSH_INTERVAL
        self._flushing: asyncio.Task[None] | None = None
        register(self)
        # `events.consume.in_process: true`: invalidate on domain events from this process
        # (a daemon thread; stopped at exit). None when the config does not ask for it.
        self.events_consumer = maybe_start_in_process(config, self.settings)
        # `events:` in the config: a write that drops entries is published (reason `write`)
        # through the process's one event sink. None, the usual case, costs a write nothing.
        self.events = events_of(config)
        self._lease_ms = int(self.settings.lock_timeout * 1000)
        # Fills under way in this process: primary key -> done when the entry is (or is not) in.
        self._fills: dict[str, asyncio.Future[None]] = {}
        # On routes that mostly miss, the lookup also takes the fill lease when it finds
        # nothing (one round trip instead of two), if the store can (AsyncRedisStore can).
        self.trend = MissTrend()
        self._get_or_acquire: _GetOrAcquire | None = getattr(self.store, "get_or_acquire", None)
        # An entry this process holds (near-cache, memory store) is read without a coroutine.
        self._local_get: Callable[[str], bytes | None] | None = getattr(
            self.store, "local_get", None
        )
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy.covers(scope["path"]):
            if scope["type"] != "http":
                await self._not_http(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if time.monotonic() >= self._next_flush:
            self._schedule_flush()
        prefetched: PlainRead | None = None
        # (rule, key, X-Cache-Key value) of a plain GET seen before (`plain_key`), else None.
        plain = self.policy.plain_key(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            scope["headers"],
            scope.get("scheme", "http"),
        )
        if plain is not None:
            # The short way (`_core/held.py`): what this process holds, else one GET.
            hit = replay_held(
                self.policy, plain, self._local_get, self.book, self.trend, time.time()
            )
            if hit is None and reads_plain(self.trend, plain):
                prefetched = await self._read_plain(plain[1])
                hit = replay_read(
                    self.policy, plain, prefetched, self.book, self.trend, time.time()
                )
            if hit is not None:
                await send({"type": "http.response.start", "status": hit[0], "headers": hit[1]})
                await send({"type": "http.response.body", "body": hit[2]})
                return
        plan = self.policy.plan(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            _AsgiRequest(scope),
            scope.get("scheme", "http"),
            _target(scope),
        )
        if plan is None:
            await self.app(scope, receive, send)
        elif isinstance(plan, Lookup):
            if scope.get("http_version") not in _HEADER_FRAMED:
                peeked = _Peeked(await receive(), receive)
                receive = peeked
                if peeked.has_body:
                    # A GET or HEAD with a body is not the request the key names.
                    await self._bypass(
                        scope, receive, send, "request-body", plan.rule.route, plan.venue
                    )
                    return
            await self._lookup(plan, scope, receive, send, prefetched)
        elif isinstance(plan, Invalidate):
            await self._invalidate(plan, scope, receive, send)
        else:
            await self._bypass(scope, receive, send, plan.reason, plan.rule.route)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan and websocket scopes: a refused config fails the startup (and raises on a
        websocket); the in-process event consumer is stopped at shutdown."""
        if self.config_error is not None:
            await _refuse(self.config_error, scope, receive, send)
            return
        if scope["type"] == "lifespan" and (
            self.events_consumer is not None or self.events is not None
        ):
            receive = self._stopping_consumer(receive)
        await self.app(scope, receive, send)

    def _stopping_consumer(self, receive: Receive) -> Receive:
        """The app's lifespan `receive`, stopping the in-process event consumer at shutdown (it
        acknowledges what it handled) and the process's event sink flushed, within 5 s each."""
        consumer, events = self.events_consumer, self.events

        async def receive_and_stop() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                if consumer is not None:
                    await asyncio.to_thread(consumer.stop, 5.0)
                if events is not None:  # what the process's event sink holds, within 5 s
                    await asyncio.to_thread(flush_events, events, 5.0)
            return message

        return receive_and_stop

    # -- statistics ------------------------------------------------------------------------------

    def bump(self, name: str, plan: Lookup) -> None:
        self.book.bump(name, plan.rule.route, plan.venue)

    def _schedule_flush(self) -> None:
        self._next_flush = time.monotonic() + FLUSH_INTERVAL
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self.flush_stats())

    async def flush_stats(self) -> None:
        """Add this process's counters to the shared tally: one batched write per interval."""
        deltas = self.book.drain()
        if not deltas:
            return
        try:
            await self.store.add_stats(stats_key(self.settings.key_prefix), deltas, STATS_TTL)
        except StoreUnavailable:
            self.book.undrain(deltas)  # written with the next flush instead

    # -- the request paths ---------------------------------------------------------------------

    async def _bypass(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reason: str,
        route: str | None = None,
        venue: str | None = None,
    ) -> None:
        self.book.bump("bypasses", route, venue)
        policy = self.policy

        async def send_bypass(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = policy.bypass_headers(message.get("headers", []), reason)
            await send(message)

        await self.app(scope, receive, send_bypass)

    async def _invalidate(
        self, plan: Invalidate, scope: Scope, receive: Receive, send: Send
    ) -> None:
        route = plan.rule.route
        self.book.bump("bypasses", route)
        policy, store, book, events = self.policy, self.store, self.book, self.events
        path = scope["path"]

        async def send_invalidating(message: Message) -> None:
            if message["type"] == "http.response.start":
                # RFC 9111 §4.4: only a non-error answer means the resource changed. Dropped
                # before the answer leaves, so a client that reads after writing sees it.
                if 200 <= message["status"] < 400:
                    try:
                        count = await store.delete_index(plan.index_key)
                        for index_key in plan.also:  # a non-canonical path's canonical forms
                            count += await store.delete_index(index_key)
                        book.bump("invalidations", route)
                    except StoreUnavailable:
                        book.bump("errors", route)
                    else:
                        publish_write_invalidation(events, path, count)
                message["headers"] = policy.bypass_headers(message.get("headers", []), "method")
            await send(message)

        await self.app(scope, receive, send_invalidating)

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
        flow = lookup_flow(
            self.policy,
            self.trend,
            self.book,
            plan,
            prefetched=prefetched,
            local=local,
            takes_lease=self._get_or_acquire is not None
            and lookup_takes_lease(self.trend, plan, self._fills),
            clock=time.time,
        )
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
                kind = type(step)
                try:
                    if kind is Get:
                        result = await self.store.get(step.key)  # type: ignore[union-attr]
                    elif kind is Claim:
                        claim = self._claim(step.key)  # type: ignore[union-attr]
                        result = claim is not None
                    elif kind is Release:
                        if claim is not None:
                            self._unclaim(plan.key, claim)
                            claim = None
                    else:
                        result = await self._perform(step)
                except StoreUnavailable as exc:
                    error = exc
            if isinstance(outcome, Serve):
                await self._replay(plan, outcome.entry, outcome.now, send, outcome.stale)
                if outcome.refresh:
                    self._refresh_in_background(plan, scope)
            elif isinstance(outcome, PassOn):
                await self._bypass(
                    scope, receive, send, outcome.detail, plan.rule.route, plan.venue
                )
            else:
                # The waiters are woken as soon as the entry is written, not when this client
                # has read the last chunk.
                settled = (
                    None if claim is None else functools.partial(self._unclaim, plan.key, claim)
                )
                recorder = _MissRecorder(
                    self, plan, send, outcome.token, outcome.epoch, outcome.stale, settled
                )
                await recorder.run(scope, receive)
        finally:
            if claim is not None:
                self._unclaim(plan.key, claim)

    async def _perform(self, step: Step) -> Any:
        """The store I/O of a flow step other than a plain read or a claim."""
        store = self.store
        if isinstance(step, GetOrAcquire):
            assert self._get_or_acquire is not None  # asked only when the store has it
            return await self._get_or_acquire(
                step.key, step.lock_key, step.token, self._lease_ms, step.index_key
            )
        if isinstance(step, Acquire):
            return await store.acquire_fill(
                step.lock_key, step.token, self._lease_ms, step.index_key
            )
        if isinstance(step, Forget):
            return await store.forget(step.key)
        if isinstance(step, WaitLocal):
            pending = self._fills.get(step.key)
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

    # -- stale-while-revalidate ----------------------------------------------------------------

    def _refresh_in_background(self, plan: Lookup, scope: Scope) -> None:
        if plan.key in self._fills:
            return  # this process is already filling it
        if len(self._background) >= MAX_REFRESHES:
            return  # bounded: the entry stays stale a little longer, the server stays responsive
        # Claimed now, not when the task first runs: a second stale hit must not start another.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._fills[plan.key] = done
        task = loop.create_task(self._refresh(plan, scope, done))
        # Keep a reference: the event loop holds tasks weakly.
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # Even a task cancelled before it ran must give the key back.
        task.add_done_callback(lambda _: self._unclaim(plan.key, done))

    def _unclaim(self, key: str, done: asyncio.Future[None]) -> None:
        if self._fills.get(key) is done:
            del self._fills[key]
        if not done.done():
            done.set_result(None)

    async def _refresh(self, plan: Lookup, scope: Scope, done: asyncio.Future[None]) -> None:
        try:
            token = lease_token()
            epoch = await self.store.acquire_fill(
                plan.lock_key, token, self._lease_ms, plan.index_key
            )
            if epoch is None:
                return  # another process is refreshing it: exactly one refresh per entry
            # A plain GET of the full response: the client's validators and ranges stay behind.
            headers = [
                (k, v)
                for k, v in scope["headers"]
                if bytes(k).decode("latin-1").lower() not in REFRESH_DROPPED
            ]
            refresh_scope = {**scope, "method": "GET", "headers": headers}
            recorder = _MissRecorder(
                self,
                dataclasses.replace(plan, head=False),
                _discard,
                token,
                epoch,
                None,
                functools.partial(self._unclaim, plan.key, done),
            )
            await recorder.run(refresh_scope, _EmptyRequest())
        except StoreUnavailable:
            self.bump("errors", plan)
        except Exception:
            logger.exception("background refresh of %r failed", plan.key)
        finally:
            self._unclaim(plan.key, done)


class _MissRecorder:
    """Runs the app and forwards its response unchanged in timing, keeping a copy of a storable
    body; with a lease, writes the entry as soon as the body is known whole (its last message,
    or the declared Content-Length reached), before that last chunk is handed on: a client
    slow to read it holds neither the key's fill nor the requests waiting for it. A stored MISS
    whose whole body comes in its first message carries the ETag its HITs will (the start is
    held until that message). With a stale entry, an app error or 5xx is replaced by the stale
    entry (RFC 5861 §4, stale-if-error). `on_settled` is called once the lease is settled."""

    def __init__(
        self,
        mw: CacheMiddleware,
        plan: Lookup,
        send: Send,
        token: str | None,
        epoch: int,
        stale: CachedResponse | None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.mw = mw
        self.plan = plan
        self.downstream = send
        self.token = token
        self.epoch = epoch
        self.stale = stale
        self.on_settled = on_settled
        self.started = False  # something was forwarded: the answer can no longer be replaced
        self.suppressed = False  # the app's 5xx is being swallowed in favour of the stale entry
        self.held: Message | None = None  # the start, held until the first body message
        self.written = False  # the whole body was stored (or not): the lease is settled
        self.rec = MissRecording(mw.policy, mw.book, plan, token)

    async def run(self, scope: Scope, receive: Receive) -> None:
        mw = self.mw
        try:
            try:
                await mw.app(scope, receive, self.send)
            except Exception:
                if self.stale is None or self.started:
                    raise
                self.suppressed = True  # the app failed before answering: serve stale
            if self.suppressed:
                assert self.stale is not None
                self.held = None
                mw.bump("stale_hits", self.plan)
                await mw._replay(
                    self.plan, self.stale, time.time(), self.downstream, "stale-if-error"
                )
                return
            await self._send_held()  # an app that sent no body message: as it answered
        finally:
            await self._settle()

    async def _settle(self) -> None:
        """However the request ended without the entry written: the lease given back."""
        if self.written:
            return  # `_write` settled it
        if self.token is not None:
            # In a task of its own: a cancelled request (a timeout, a disconnect) must still
            # give the lease back, or the key stays blocked for lock_timeout.
            release = asyncio.ensure_future(self._release(self.token))
            self.mw._background.add(release)
            release.add_done_callback(self.mw._background.discard)
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await asyncio.shield(release)
        self._settled()

    def _settled(self) -> None:
        if self.on_settled is not None:
            on_settled, self.on_settled = self.on_settled, None
            on_settled()

    async def _release(self, token: str) -> None:
        try:
            await self.mw.store.release_fill(self.plan.lock_key, token)
        except StoreUnavailable:
            self.mw.bump("errors", self.plan)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
            return
        if self.suppressed:
            return
        rec = self.rec
        if kind != "http.response.body":
            rec.recording = False  # pathsend, trailers...: not a body we can replay
            await self._send_held()
            await self.downstream(message)
            return
        if not rec.recording:
            await self._send_held()
            await self.downstream(message)
            return
        rec.record(message.get("body", b""))
        if self._whole(message):
            body = rec.whole_body()
            if self.held is not None:
                # The whole body before the headers left: the ETag its HITs will carry.
                etag = rec.etag(body)
                if etag is not None:
                    self.held["headers"].append(etag)
            await self._send_held()
            # Stored before the last chunk is handed on, not after the client has read it:
            # the waiters are woken now. Awaited here rather than in a task alongside the
            # send: a task costs a MISS 3% more instructions (bench/instructions.py) to save
            # its client one store round trip.
            await self._write(body)
            self.written = True
        else:
            await self._send_held()
        await self.downstream(message)

    def _whole(self, message: Message) -> bool:
        """Whether the body being recorded is complete with this message (and not written)."""
        rec = self.rec
        return (
            rec.recording
            and not self.written
            and (not message.get("more_body", False) or rec.size == rec.start.content_length)
        )

    async def _start(self, message: Message) -> None:
        status = message["status"]
        if self.stale is not None and status >= 500:
            self.suppressed = True  # RFC 5861 §4: a 5xx may be replaced by the stale entry
            return
        headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        message["headers"] = self.rec.begin(status, headers, time.time()).headers
        if self.rec.holds_headers:
            # Held until the first body message: if that is the whole body, the MISS carries
            # the ETag it is stored with. Most apps send it in the same breath (Starlette's
            # Response does); a streamed body's headers wait for its first chunk. Only a
            # storable response is held, so never an event stream.
            self.held = message
            return
        self.started = True
        await self.downstream(message)

    async def _send_held(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.started = True
            await self.downstream(held)

    async def _write(self, body: bytes) -> None:
        """Stores the whole body (or gives the lease back), then wakes the fill's waiters."""
        assert self.token is not None
        if not await self._store(body):
            await self._release(self.token)
        self._settled()

    async def _store(self, body: bytes) -> bool:
        rec = self.rec
        assert self.token is not None
        fill = rec.writes(body, time.time())
        if fill is None:
            return False  # incomplete body: not stored, and the lease is released
        writes, index_keys, lifetime = fill
        try:
            ok = await self.mw.store.store_fill(
                self.plan.lock_key, self.token, self.epoch, writes, index_keys, lifetime
            )
        except StoreUnavailable:
            self.mw.bump("errors", self.plan)
            return False
        rec.stored(ok)
        return True


class _RefusedConfig:
    """The policy of a middleware whose config was refused: the first question raises it."""

    def __init__(self, error: ConfigError) -> None:
        self.error = error

    def covers(self, path: str) -> bool:
        raise _fresh(self.error)


async def _refuse(error: ConfigError, scope: Scope, receive: Receive, send: Send) -> None:
    """A refused config at the server's startup: `lifespan.startup.failed` with its one-line
    message (uvicorn, hypercorn and gunicorn's uvicorn worker log it and stop), then raised, as
    Starlette's own lifespan does (its TestClient raises it; servers ignore an error after a
    failure reported). Any other scope raises it. The app's own startup never runs."""
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": str(error)})
    raise _fresh(error)


def _fresh(error: ConfigError) -> ConfigError:
    # A new instance per raise: the kept one would gather every request's traceback.
    return type(error)(*error.args)


async def _wait(future: asyncio.Future[None], timeout: float) -> None:
    # Bounded: past `timeout` the waiter answers from the app rather than wait on.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout)


async def _discard(message: Message) -> None:
    return None


class _EmptyRequest:
    """`receive` of a background refresh: an empty body, then a disconnect."""

    def __init__(self) -> None:
        self.sent = False

    async def __call__(self) -> Message:
        if self.sent:
            return {"type": "http.disconnect"}
        self.sent = True
        return {"type": "http.request", "body": b"", "more_body": False}
