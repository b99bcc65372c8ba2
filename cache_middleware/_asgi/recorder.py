"""The ASGI MISS recorder: runs the app, forwards its messages as they come, keeps what the
shared `_core/recording.MissRecording` decides to keep, and stores it (awaited)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .._core.entry import CachedResponse
from .._core.recording import RecorderBase, stale_detail
from ..errors import StoreUnavailable
from .request import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ..asgi import CacheMiddleware

__all__ = ["EmptyRequest", "MissRecorder", "discard"]


class MissRecorder(RecorderBase[Send]):
    """Runs the app and forwards its response unchanged in timing, keeping a copy of a storable
    body; with a lease, writes the entry as soon as the body is known whole (its last message,
    or the declared Content-Length reached), before that last chunk is handed on: a client
    slow to read it holds neither the key's fill nor the requests waiting for it. A stored MISS
    whose whole body comes in its first message carries the ETag its HITs will (the start is
    held until that message). With a stale entry, an app error or 5xx is replaced by the stale
    entry (RFC 5861 §4, stale-if-error). `on_settled` is called once the lease is settled."""

    mw: CacheMiddleware
    started = False  # something was forwarded: the answer can no longer be replaced
    held: Message | None = None  # the start, held until the first body message
    written = False  # the whole body was stored (or not): the lease is settled

    async def run(self, scope: Scope, receive: Receive) -> None:
        mw = self.mw
        try:
            try:
                await self.app(scope, receive, self.send)
            except Exception:
                if self.stale is None or self.started:
                    raise
                self.suppressed = True  # the app failed before answering: serve stale
            if self.suppressed:
                assert self.stale is not None
                self.held = None
                mw.bump("stale_hits", self.plan)
                await mw._replay(
                    self.plan,
                    self.stale,
                    mw.now(),
                    self.downstream,
                    stale_detail(self.disconnected),
                )
                return
            if self.held is not None:  # an app that sent no body message: as it answered
                await self._send_held()
        finally:
            if not self.written:  # else `_write` settled it (no coroutine for nothing)
                await self._settle()

    async def _settle(self) -> None:
        """However the request ended without the entry written: the lease given back."""
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
        elif self.held is not None:
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
        if self.stale is not None and self.replaced(status):
            return
        headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        message["headers"] = self.rec.begin(status, headers, self.mw.now()).headers
        if self.freshening is not None:
            await self._refresh_from_head(self.freshening, status, headers)
        if self.rec.holds_headers:
            # Held until the first body message: if that is the whole body, the MISS carries
            # the ETag it is stored with. Most apps send it in the same breath (Starlette's
            # Response does); a streamed body's headers wait for its first chunk. Only a
            # storable response is held, so never an event stream.
            self.held = message
            return
        self.started = True
        await self.downstream(message)

    async def _refresh_from_head(
        self, entry: CachedResponse, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if self.refreshes(entry, status, headers):
            await self._write(entry.body)
            self.written = True

    async def _send_held(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.started = True
            await self.downstream(held)

    async def _write(self, body: bytes) -> None:
        """Stores the whole body (or gives the lease back), then wakes the fill's waiters."""
        token = self.token
        assert token is not None
        rec = self.rec
        fill = rec.fill(body, self.mw.now(), self.epoch)
        written = False
        if fill is not None:  # None: an incomplete body, not stored (the lease is released)
            try:
                ok = await self.mw.store.store_fill(fill)
            except StoreUnavailable:
                self.mw.bump("errors", self.plan)
            else:
                rec.stored(ok)
                written = True
        if not written:
            await self._release(token)
        self._settled()


async def discard(message: Message) -> None:
    return None


class EmptyRequest:
    """`receive` of a background refresh: an empty body, then a disconnect."""

    def __init__(self) -> None:
        self.sent = False

    async def __call__(self) -> Message:
        if self.sent:
            return {"type": "http.disconnect"}
        self.sent = True
        return {"type": "http.request", "body": b"", "more_body": False}
