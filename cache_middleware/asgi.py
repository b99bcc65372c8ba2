"""CacheMiddleware: the pure-ASGI adapter.

Reads like a script of calls into `_core` (decisions) and `storage` (bytes): plan the request;
replay a fresh HIT; serve stale and refresh in the background; or fill: one request per key
runs the app (coalescing in this process with a future, across processes with a Redis lease)
while the others wait for its entry. Per-request state lives in a `MissRecorder`, never on the
middleware. Any storage failure fails open: the app answers and the response says BYPASS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ._asgi.lookup import LookupDriver
from ._asgi.refresh import BackgroundRefresh
from ._asgi.request import (
    HEADER_FRAMED,
    AsgiRequest,
    Message,
    Peeked,
    Receive,
    Scope,
    Send,
    target_of,
)
from ._asgi.startup import RefusedConfig, refuse
from ._core.held import PlainRead, reads_plain, replay_held, replay_read
from ._core.policy import (
    CachePolicy,
    Invalidate,
    Lookup,
    Resolver,
)
from ._core.rules import Rule
from .config import ConfigSource, Settings
from .errors import ConfigError, StoreUnavailable
from .events.process_sink import flush_events, publish_write_invalidation
from .middleware_base import MiddlewareBase
from .storage import AsyncStore, make_async_store
from .storage.tracking import with_near_cache_async
from .wiring import FLUSH_INTERVAL, STATS_TTL, stats_key

__all__ = ["CacheMiddleware"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("cache_middleware")


class CacheMiddleware(LookupDriver, BackgroundRefresh, MiddlewareBase[ASGIApp, AsyncStore]):
    """`app.add_middleware(CacheMiddleware, config="cache.yaml")`."""

    policy: CachePolicy

    def _set_up(
        self,
        config: ConfigSource,
        user_resolver: Resolver | None,
        venue_resolver: Resolver | None,
        store: AsyncStore | None,
    ) -> None:
        # A bad config is kept, not raised: Starlette and FastAPI build their middleware on the
        # first call, the lifespan scope, and an exception there makes uvicorn's (and
        # hypercorn's) "auto" lifespan conclude that lifespan is unsupported and serve 500s.
        # Kept, it fails the server's startup with its message (or, where the server runs no
        # lifespan, every request raises it). Invariant 5 of DESIGN.md.
        self.config_error: ConfigError | None = None
        try:
            super()._set_up(config, user_resolver, venue_resolver, store)
        except ConfigError as exc:
            self.config_error = exc
            # Every request asks `policy.covers` first: this one raises the error, so a
            # refused config costs a working one nothing on its hot path.
            self.policy = RefusedConfig(exc)  # type: ignore[assignment]
            return
        self._flushing: asyncio.Task[None] | None = None
        # Fills under way in this process: primary key -> done when the entry is (or is not) in.
        self._fills: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _open_store(self, settings: Settings, store: AsyncStore | None) -> AsyncStore:
        return with_near_cache_async(
            store if store is not None else make_async_store(settings), settings
        )

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
        query = scope.get("query_string", b"").decode("latin-1")
        scheme = scope.get("scheme", "http")
        # (rule, key, X-Cache-Key value) of a plain GET seen before (`plain_key`), else None.
        plain = self.policy.plain_key(
            scope["method"], scope["path"], query, scope["headers"], scheme
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
            scope["method"], scope["path"], query, AsgiRequest(scope), scheme, target_of(scope)
        )
        if plan is None:
            await self.app(scope, receive, send)
        elif isinstance(plan, Lookup):
            if scope.get("http_version") not in HEADER_FRAMED:
                peeked = Peeked(await receive(), receive)
                receive = peeked
                if peeked.has_body:
                    # A GET or HEAD with a body is not the request the key names.
                    await self._bypass(scope, receive, send, "request-body", plan.rule, plan.venue)
                    return
            await self._lookup(plan, scope, receive, send, prefetched)
        elif isinstance(plan, Invalidate):
            await self._invalidate(plan, scope, receive, send)
        else:
            await self._bypass(scope, receive, send, plan.reason, plan.rule)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan and websocket scopes: a refused config fails the startup (and raises on a
        websocket); the in-process event consumer is stopped at shutdown."""
        if self.config_error is not None:
            await refuse(self.config_error, scope, receive, send)
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

    @staticmethod
    def now() -> float:
        """The wall clock of entries and freshness (this module's `time`: tests move it)."""
        return time.time()

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
        rule: Rule | None = None,
        venue: str | None = None,
    ) -> None:
        self.book.bump("bypasses", None if rule is None else rule.route, venue)
        policy = self.policy

        async def send_bypass(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = policy.bypass_headers(message.get("headers", []), reason, rule)
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
                        # A non-canonical path's canonical forms; Location, Content-Location.
                        for index_key in (*plan.also, *policy.location_index_keys(
                            message.get("headers", []), path, _host(scope)
                        )):  # fmt: skip
                            count += await store.delete_index(index_key)
                        book.bump("invalidations", route)
                    except StoreUnavailable:
                        book.bump("errors", route)
                    else:
                        publish_write_invalidation(events, path, count)
                message["headers"] = policy.bypass_headers(
                    message.get("headers", []), "method", plan.rule
                )
            await send(message)

        await self.app(scope, receive, send_invalidating)


def _host(scope: Scope) -> str | None:
    """The request's Host (ASGI headers are lower-cased bytes)."""
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value).decode("latin-1")
    return None
