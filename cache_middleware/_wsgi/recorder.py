"""The WSGI MISS recorder: runs the app, passes its body to the server (pulling a storable
one ahead when it can), keeps what the shared `_core/recording.MissRecording` decides to keep,
and stores it (blocking)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .._core.entry import CachedResponse
from .._core.recording import RecorderBase, stale_detail
from ..errors import StoreUnavailable
from .request import Environ, ExcInfo, StartResponse, status_code, to_bytes, to_str

if TYPE_CHECKING:
    from ..wsgi import WSGICacheMiddleware

__all__ = ["MissRecorder", "Response", "ignore_start"]


def ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
) -> Callable[[bytes], object]:
    return lambda data: None


class MissRecorder(RecorderBase[StartResponse]):
    """Runs the app and passes its response through, keeping a copy of a storable body; with a
    lease, stores it as soon as the body is known whole, before its last chunk is handed to the
    server (whose write to a slow client would otherwise hold the key's fill, and every request
    waiting for it, for the whole download). With a stale entry, an app error or 5xx is replaced
    by the stale entry (RFC 5861 §4, stale-if-error).

    A storable body with a declared Content-Length, or one the app handed over as a list, is
    pulled from the app until whole before any of it goes to the server: it is buffered for
    storing anyway and bounded by max_body_bytes (a longer declared one is not storable), and
    the app (not the client) sets the pace, so nothing waits on the network. The headers go
    with the first chunk (PEP 3333 servers send nothing sooner), so they are held meanwhile and
    the MISS carries the ETag its HITs will. A streamed body with no length is whole only when
    the server asks past its last chunk: stored then, as before."""

    mw: WSGICacheMiddleware
    forwarded = False  # the server's start_response was called: no replacing now
    settled = False  # the lease was stored or given back
    # The app's start_response, not yet passed on (status, headers, exc_info).
    pending: tuple[str, list[tuple[bytes, bytes]], ExcInfo | None] | None = None
    write: Callable[[bytes], object] | None = None  # the server's, once forwarded

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        code = status_code(status)
        if self.stale is not None and self.replaced(code):
            return lambda data: None
        # An exc_info call replaces an earlier start: only the final response may be stored.
        decision = self.rec.begin(code, to_bytes(headers), self.mw.now(), final=exc_info is None)
        if self.freshening is not None and exc_info is None:
            self._refresh_from_head(self.freshening, code, to_bytes(headers))
        self.pending = (status, decision.headers, exc_info)
        if not self.rec.holds_headers:
            self._forward()  # no ETag to add: passed on at once, as the app called it
        return self._write_through

    def _refresh_from_head(
        self, entry: CachedResponse, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        # Written at once: the server may never iterate a HEAD's (empty) body.
        if self.refreshes(entry, status, headers):
            self.settle(self._store(entry.body))

    def _forward(self) -> None:
        """Passes the app's start_response on to the server, if it is still held."""
        if self.pending is not None:
            status, headers, exc_info = self.pending
            self.pending = None
            self.write = self.downstream(status, to_str(headers), exc_info)
            self.forwarded = True

    def _write_through(self, data: bytes) -> object:
        # PEP 3333's write(): the headers must be out before its bytes.
        self._forward()
        self.rec.record(data)
        assert self.write is not None
        return self.write(data)

    def response(self, environ: Environ, on_done: Callable[[], None] | None = None) -> Response:
        """The body iterable for the server; however it ends (even never iterated, only
        closed), the lease is settled and the claim released."""
        self.on_settled = on_done
        return Response(self.run(environ), self.settle)

    def settle(self, stored: bool = False) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            if self.token is not None and not stored:
                try:
                    self.mw.store.release_fill(self.plan.lock_key, self.token)
                except StoreUnavailable:
                    self.mw.bump("errors", self.plan)
        finally:
            if self.on_settled is not None:
                self.on_settled()

    def run(self, environ: Environ) -> Iterator[bytes]:
        """The response body; the lease is settled (stored or released) however it ends."""
        try:
            try:
                result = self.app(environ, self.start_response)
            except Exception:
                if self.stale is None or self.forwarded:
                    raise
                self.suppressed = True  # the app failed before answering: serve stale
                result = []
            try:
                yield from self._pass_body(result)
            except Exception:
                if not self.suppressed:
                    raise
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if self.suppressed:
                assert self.stale is not None
                self.pending = None
                self.mw.bump("stale_hits", self.plan)
                yield from self.mw._replay(
                    self.plan,
                    self.stale,
                    self.mw.now(),
                    self.downstream,
                    stale_detail(self.disconnected),
                )
        finally:
            self.settle()

    def _pass_body(self, result: Iterable[bytes]) -> Iterator[bytes]:
        """The app's chunks for the server; those of a body that `_pulls_ahead` are kept back
        until it is whole and stored."""
        in_memory = isinstance(result, (list, tuple))
        ahead: list[bytes] = []
        for chunk in result:
            if self.suppressed:
                continue
            self.rec.record(chunk)
            if self._pulls_ahead(in_memory):
                ahead.append(chunk)
                if self.rec.length_reached():
                    self._complete()  # the declared length: whole, whatever the iterator says
                    yield from ahead
                    ahead.clear()
                continue
            self._forward()
            yield from ahead
            ahead.clear()
            yield chunk
        if not self.suppressed:
            # Exhausted (reached only when the server asked past the last chunk, or the body
            # was pulled ahead): whole.
            self._complete()
            yield from ahead

    def _pulls_ahead(self, in_memory: bool) -> bool:
        """Whether the body being stored will be whole without waiting on the client: its
        length is declared, or the app handed it over in memory."""
        return (
            self.rec.recording
            and not self.settled
            and (in_memory or self.rec.start.content_length is not None)
        )

    def _complete(self) -> None:
        """The body is whole: the entry is written (or the lease given back) and the waiters
        woken, then the headers go, with the ETag the HITs will carry if they had not left."""
        rec = self.rec
        if rec.recording and not self.settled:
            body = rec.whole_body()
            if self.pending is not None:
                etag = rec.etag(body)
                if etag is not None:
                    self.pending[1].append(etag)
            self.settle(self._store(body))
        self._forward()

    def _store(self, body: bytes) -> bool:
        rec = self.rec
        fill = rec.fill(body, self.mw.now(), self.epoch)
        if fill is None:
            return False  # incomplete body: not stored, and the lease is released
        try:
            ok = self.mw.store.store_fill(fill)
        except StoreUnavailable:
            self.mw.bump("errors", self.plan)
            return False
        rec.stored(ok)
        return True


class Response:
    """What the server iterates. PEP 3333 servers call close() however the response ends, so
    settling there covers a body that was never iterated (its generator's finally never ran)."""

    def __init__(self, body: Iterator[bytes], settle: Callable[[], None]) -> None:
        self._body = body
        self._settle = settle

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._settle()
