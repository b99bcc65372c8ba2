"""CacheMiddleware: the pure-ASGI adapter.

Reads like a script of calls into `_core` (decisions) and `storage` (bytes): plan the request,
replay a HIT, or run the app and record what it sends. Per-request state lives in a
`_MissRecorder`, never on the middleware. Any storage failure fails open: the app answers and
the response says `X-Cache: BYPASS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core.entry import CorruptEntry, decode_entry
from ._core.policy import Bypass, Lookup, RequestView
from ._core.stats import Counters
from .config import ConfigSource, load_config
from .errors import StoreUnavailable
from .storage import AsyncStore, make_async_store
from .wiring import build_policy

__all__ = ["CacheMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("cache_middleware")


class _AsgiRequest:
    """The `RequestSource` of an ASGI scope: looks things up only when a decision asks."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def header(self, name: str) -> str | None:
        wanted = name.encode("latin-1")
        for key, value in self.scope["headers"]:
            if key.lower() == wanted:
                return bytes(value).decode("latin-1")
        return None

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
        headers: dict[str, str] = {}
        for key, value in self.scope["headers"]:
            headers.setdefault(bytes(key).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        return RequestView(
            method=self.scope["method"],
            path=self.scope["path"],
            query_string=self.scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
        )


class CacheMiddleware:
    """`app.add_middleware(CacheMiddleware, config="cache.yaml")`."""

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
        self.settings = load_config(config)
        self.policy = build_policy(
            self.settings, user_resolver=user_resolver, venue_resolver=venue_resolver
        )
        self.store = store if store is not None else make_async_store(self.settings)
        self.stats = Counters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        plan = self.policy.plan(
            scope["method"],
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            _AsgiRequest(scope),
        )
        if plan is None:
            await self.app(scope, receive, send)
            return
        if isinstance(plan, Bypass):
            await self._bypass(scope, receive, send)
            return
        await self._lookup(plan, scope, receive, send)

    async def _bypass(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.bypasses += 1
        policy = self.policy

        async def send_bypass(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = policy.bypass_headers(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, send_bypass)

    async def _lookup(self, plan: Lookup, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = await self.store.get(plan.key)
        except StoreUnavailable:
            self.stats.errors += 1
            await self._bypass(scope, receive, send)
            return
        if raw is not None:
            try:
                entry = decode_entry(raw)
            except CorruptEntry as exc:
                logger.warning("dropping unreadable cache entry %r: %s", plan.key, exc)
                await self._forget(plan.key)
            else:
                self.stats.hits += 1
                headers = self.policy.respond_hit(plan, entry, time.time())
                await send(
                    {"type": "http.response.start", "status": entry.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": b"" if plan.head else entry.body})
                return
        recorder = _MissRecorder(self, plan, send)
        await self.app(scope, receive, recorder.send)

    async def _forget(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except StoreUnavailable:
            self.stats.errors += 1


class _MissRecorder:
    """Forwards the app's response unchanged in timing, keeping a copy of a storable body."""

    __slots__ = ("body", "headers", "mw", "plan", "recording", "send_downstream", "size", "status")

    def __init__(self, mw: CacheMiddleware, plan: Lookup, send: Send) -> None:
        self.mw = mw
        self.plan = plan
        self.send_downstream = send
        self.recording = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            decision = self.mw.policy.start_miss(self.plan, self.status, self.headers)
            self.recording = decision.store
            # Counted as the X-Cache header says: an unstorable answer went out as BYPASS.
            if decision.store:
                self.mw.stats.misses += 1
            else:
                self.mw.stats.bypasses += 1
            message["headers"] = decision.headers
            await self.send_downstream(message)
            return
        if kind != "http.response.body":
            self.recording = False  # pathsend, trailers...: not a body we can replay
            await self.send_downstream(message)
            return
        if self.recording:
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.mw.policy.max_body_bytes:
                # Too big to keep: stop buffering and let the rest stream through.
                self.recording = False
                self.body.clear()
            elif chunk:
                self.body.append(bytes(chunk))
        await self.send_downstream(message)
        if self.recording and not message.get("more_body", False):
            self.recording = False
            await self._store()

    async def _store(self) -> None:
        mw = self.mw
        record = mw.policy.encode_miss(
            self.plan, self.status, self.headers, b"".join(self.body), time.time()
        )
        try:
            await mw.store.set(self.plan.key, record, self.plan.rule.ttl)
        except StoreUnavailable:
            mw.stats.errors += 1
            return
        mw.stats.stores += 1
