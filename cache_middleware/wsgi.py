"""WSGICacheMiddleware: the WSGI adapter, the same calls into `_core` with start_response.

`app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config="cache.yaml")`. Headers cross into the
core as lower-case byte pairs (latin-1, as PEP 3333 defines them) and back out as str pairs.
The flow is asgi.py's, with threads where that has tasks: coalescing waits on a
`threading.Event`, a stale-while-revalidate refresh runs on a daemon thread.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from io import BytesIO
from types import TracebackType
from typing import Any

from ._core.entry import CachedResponse
from ._core.flow import (
    Acquire,
    Claim,
    Forget,
    Get,
    GetOrAcquire,
    PassOn,
    Release,
    Serve,
    Step,
    WaitLocal,
    WaitRemote,
    drive_sync,
    lookup_flow,
)
from ._core.held import PlainRead, reads_plain, replay_held, replay_read
from ._core.policy import (
    REFRESH_DROPPED,
    Invalidate,
    Lookup,
    RequestView,
    declares_no_body,
)
from ._core.recording import MissRecording
from ._core.rules import Rule
from ._core.stats import StatsBook
from ._core.tokens import lease_token
from ._core.trend import MissTrend, lookup_takes_lease
from .config import ConfigSource, load_config
from .errors import StoreUnavailable
from .events.in_process import maybe_start_in_process
from .events.process_sink import events_of, publish_write_invalidation
from .registry import register
from .storage import SyncStore, make_sync_store
from .storage.tracking import with_near_cache_sync
from .wiring import FLUSH_INTERVAL, STATS_TTL, build_policy, stats_key

__all__ = ["WSGICacheMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

logger = logging.getLogger("cache_middleware")

POLL_INTERVAL = 0.02  # how often a request waiting on another process's fill looks again
MAX_REFRESHES = 16  # background refresh threads (stale-while-revalidate) at once, at most

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"


def _to_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _to_str(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


@functools.lru_cache(maxsize=256)
def _environ_name(header: str) -> str:
    """`x-forwarded-host` -> `HTTP_X_FORWARDED_HOST` (PEP 3333), CONTENT_* without the prefix."""
    if header in ("content-type", "content-length"):
        return header.upper().replace("-", "_")
    return "HTTP_" + header.upper().replace("-", "_")


def _request_path(environ: Environ) -> str:
    # PEP 3333 hands PATH_INFO over as latin-1-decoded bytes; decode it as werkzeug does, so the
    # key is built from the same path the app's router matches.
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        return raw.encode("latin-1").decode("utf-8", "replace") or "/"
    except UnicodeEncodeError:  # a server that already decoded it (not PEP 3333, but seen)
        return str(raw) or "/"


def _target(environ: Environ) -> str | None:
    """The raw request-target path (gunicorn's RAW_URI, else REQUEST_URI: werkzeug, uWSGI and
    mod_wsgi set it), for the path guard; None when the server gives neither."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw.partition("?")[0] if isinstance(raw, str) else None


_GetOrAcquire = Callable[[str, str, str, int, "str | None"], tuple[bytes | None, int | None]]


# HTTP/2 and HTTP/3 frame a body by the stream, not by Content-Length or Transfer-Encoding: a
# bridge (a2wsgi) passes such a body in wsgi.input with no CONTENT_LENGTH at all.
_STREAM_FRAMED = frozenset({"HTTP/2", "HTTP/2.0", "HTTP/3", "HTTP/3.0"})


def _has_unframed_body(environ: Environ) -> bool:
    """Whether an HTTP/2 or HTTP/3 request without a Content-Length has body bytes. One byte is
    read to know; it is put back in front of the rest, so the app still reads the whole body.
    The stream's own end frames the input (no wait beyond the request), unlike HTTP/1.x, where
    only the headers are read."""
    if environ.get("CONTENT_LENGTH"):
        return False  # a declared length is checked with the other headers by plan()
    stream = environ.get("wsgi.input")
    if stream is None:
        return False
    first = stream.read(1)
    if not first:
        return False
    environ["wsgi.input"] = _Prefixed(first, stream)
    return True


class _Prefixed:
    """A wsgi.input whose first byte was read already: it comes back first."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def read(self, size: int | None = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.read() if size is None else self._rest.read(size))
        if size == 0:
            return b""
        head = self._take_head()
        more = -1 if size is None or size < 0 else size - len(head)
        return head + bytes(self._rest.read(more) if more != 0 else b"")

    def readline(self, size: int = -1) -> bytes:
        if not self._head:
            return bytes(self._rest.readline(size))
        head = self._take_head()
        if head.endswith(b"\n") or size == len(head):
            return head
        return head + bytes(self._rest.readline(size - len(head) if size > 0 else -1))

    def __iter__(self) -> Iterator[bytes]:
        line = self.readline()
        while line:
            yield line
            line = self.readline()


class _WsgiRequest:
    __slots__ = ("environ",)

    def __init__(self, environ: Environ) -> None:
        self.environ = environ

    def header(self, name: str) -> str | None:
        if not name:
            return None
        if name == "content-type":
            value = self.environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = self.environ.get("CONTENT_LENGTH")
        else:
            value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value if isinstance(value, str) else None

    def has_any(self, names: frozenset[str]) -> bool:
        environ = self.environ
        return any(_environ_name(name) in environ for name in names)

    def default_user(self) -> str | None:
        user = self.environ.get("REMOTE_USER")
        return user if isinstance(user, str) and user else None

    def native(self) -> object:
        return self.environ

    def view(self) -> RequestView:
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in self.environ.items()
            if key.startswith("HTTP_") and isinstance(value, str)
        }
        # PEP 3333 keeps these two out of HTTP_*; the ASGI view has them, so this one must too.
        for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
            value = self.environ.get(key)
            if isinstance(value, str) and value:
                headers[name] = value
        return RequestView(
            method=self.environ.get("REQUEST_METHOD", "GET"),
            path=_request_path(self.environ),
            query_string=self.environ.get("QUERY_STRING", ""),
            headers=headers,
        )


class WSGICacheMiddleware:
    def __init__(
        self,
        app: WSGIApp,
        config: ConfigSource,
        *,
        user_resolver: Callable[[object], str | None] | None = None,
        venue_resolver: Callable[[object], str | None] | None = None,
        store: SyncStore | None = None,
    ) -> None:
        self.app = app
        self.settings = load_config(config)
        self.policy = build_policy(
            self.settings, user_resolver=user_resolver, venue_resolver=venue_resolver
        )
        self.store = with_near_cache_sync(
            store if store is not None else make_sync_store(self.settings), self.settings
        )
        self.book = StatsBook()
        self.stats = self.book.total  # the process totals; per route/venue in self.book
        self._next_flush = time.monotonic() + FLUSH_INTERVAL
        self._flush_lock = threading.Lock()
        register(self)
        # `events.consume.in_process: true`: invalidate on domain events from this process
        # (a daemon thread; stopped at exit). None when the config does not ask for it.
        self.events_consumer = maybe_start_in_process(config, self.settings)
        # `events:` in the config: a write that drops entries is published (reason `write`)
        # through the process's one event sink. None, the usual case, costs a write nothing.
        self.events = events_of(config)
        self._lease_ms = int(self.settings.lock_timeout * 1000)
        # Fills under way in this process: primary key -> set when the entry is (or is not) in.
        self._fills: dict[str, threading.Event] = {}
        self._fills_lock = threading.Lock()
        # On routes that mostly miss, the lookup also takes the fill lease when it finds
        # nothing (one round trip instead of two), if the store can (RedisStore can).
        self.trend = MissTrend()
        self._get_or_acquire: _GetOrAcquire | None = getattr(self.store, "get_or_acquire", None)
        # A plain GET whose entry this process holds is answered without its plan; "plain" read
        # from the environ: none of these keys (Content-Length is looked at on its own).
        self._local_get: Callable[[str], bytes | None] | None = getattr(
            self.store, "local_get", None
        )
        self._not_plain_environ = frozenset(
            _environ_name(name) for name in self.policy.not_plain_headers - {"content-length"}
        )
        self._refreshing = 0  # background refresh threads running

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = _request_path(environ)
        if not self.policy.covers(path):
            return self.app(environ, start_response)
        if time.monotonic() >= self._next_flush:
            self._next_flush = time.monotonic() + FLUSH_INTERVAL
            threading.Thread(target=self.flush_stats, name="cache-stats", daemon=True).start()
        prefetched: PlainRead | None = None
        plain = self._plain_key(environ, path)
        if plain is not None:
            # The short way (`_core/held.py`): what this process holds, else one GET.
            hit = replay_held(
                self.policy, plain, self._local_get, self.book, self.trend, time.time()
            )
            if hit is None and reads_plain(self.trend, plain):
                prefetched = self._read_plain(plain[1])
                hit = replay_read(
                    self.policy, plain, prefetched, self.book, self.trend, time.time()
                )
            if hit is not None:
                start_response(_status_line(hit[0]), _to_str(hit[1]))
                return [hit[2]]
        plan = self.policy.plan(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("QUERY_STRING", ""),
            _WsgiRequest(environ),
            environ.get("wsgi.url_scheme", "http"),
            _target(environ),
        )
        if plan is None:
            return self.app(environ, start_response)
        if isinstance(plan, Lookup):
            if environ.get("SERVER_PROTOCOL") in _STREAM_FRAMED and _has_unframed_body(environ):
                # A GET or HEAD with a body is not the request the key names.
                return self._bypass(
                    environ, start_response, "request-body", plan.rule.route, plan.venue
                )
            return self._lookup(plan, environ, start_response, prefetched)
        if isinstance(plan, Invalidate):
            return self._invalidate(plan, environ, start_response)
        return self._bypass(environ, start_response, plan.reason, plan.rule.route)

    def _plain_key(self, environ: Environ, path: str) -> tuple[Rule, str, bytes | None] | None:
        """(rule, key, X-Cache-Key value) of a plain GET seen before (`plain_key_of`), else
        None. The environ must hold none of the headers a plan reads; an empty or zero
        Content-Length (some servers always set one) is what `plan()` takes for none."""
        length = environ.get("CONTENT_LENGTH")
        if not self._not_plain_environ.isdisjoint(environ) or not declares_no_body(
            length if isinstance(length, str) else None
        ):
            return None
        host = environ.get("HTTP_HOST")
        plain = self.policy.plain_key_of(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("QUERY_STRING", ""),
            host if isinstance(host, str) else None,
            environ.get("wsgi.url_scheme", "http"),
        )
        return plain

    def _read_plain(self, key: str) -> PlainRead:
        """One GET of a plain key, handed on to the full path if it is not a fresh HIT."""
        try:
            return PlainRead(key, self.store.get(key))
        except StoreUnavailable as exc:
            return PlainRead(key, None, exc)

    # -- statistics ------------------------------------------------------------------------------

    def bump(self, name: str, plan: Lookup) -> None:
        self.book.bump(name, plan.rule.route, plan.venue)

    def flush_stats(self) -> None:
        """Add this process's counters to the shared tally: one batched write per interval."""
        if not self._flush_lock.acquire(blocking=False):
            return  # a flush is under way
        try:
            deltas = self.book.drain()
            if not deltas:
                return
            try:
                self.store.add_stats(stats_key(self.settings.key_prefix), deltas, STATS_TTL)
            except StoreUnavailable:
                self.book.undrain(deltas)  # written with the next flush instead
        finally:
            self._flush_lock.release()

    # -- the request paths ---------------------------------------------------------------------

    def _bypass(
        self,
        environ: Environ,
        start_response: StartResponse,
        reason: str,
        route: str | None = None,
        venue: str | None = None,
    ) -> Iterable[bytes]:
        self.book.bump("bypasses", route, venue)
        policy = self.policy

        def start_bypass(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            patched = _to_str(policy.bypass_headers(_to_bytes(headers), reason))
            return start_response(status, patched, exc_info)

        return self.app(environ, start_bypass)

    def _invalidate(
        self, plan: Invalidate, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        route = plan.rule.route
        self.book.bump("bypasses", route)
        policy, store, book, events = self.policy, self.store, self.book, self.events
        path = environ.get("PATH_INFO", "")

        def start_invalidating(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            # RFC 9111 §4.4: only a non-error answer means the resource changed. Dropped
            # before the answer leaves, so a client that reads after writing sees it.
            if exc_info is None and 200 <= _status_code(status) < 400:
                try:
                    count = store.delete_index(plan.index_key)
                    for index_key in plan.also:  # a non-canonical path's canonical forms
                        count += store.delete_index(index_key)
                    book.bump("invalidations", route)
                except StoreUnavailable:
                    book.bump("errors", route)
                else:
                    publish_write_invalidation(events, path, count)
            patched = _to_str(policy.bypass_headers(_to_bytes(headers), "method"))
            return start_response(status, patched, exc_info)

        return self.app(environ, start_invalidating)

    def _lookup(
        self,
        plan: Lookup,
        environ: Environ,
        start_response: StartResponse,
        prefetched: PlainRead | None = None,
    ) -> Iterable[bytes]:
        """Drive `_core/flow.lookup_flow` with blocking I/O, then do what it ends with. This
        process's claims on keys it fills are events in `self._fills`."""
        flow = lookup_flow(
            self.policy,
            self.trend,
            self.book,
            plan,
            prefetched=prefetched,
            takes_lease=self._get_or_acquire is not None
            and lookup_takes_lease(self.trend, plan, self._fills),
            clock=time.time,
        )
        claimed = False

        def perform(step: Step) -> Any:
            nonlocal claimed
            if isinstance(step, Get):
                return self.store.get(step.key)
            if isinstance(step, Claim):
                claimed = self._claim(step.key) is None
                return claimed
            if isinstance(step, Release):
                if claimed:
                    claimed = False
                    self._release(step.key)
                return None
            if isinstance(step, GetOrAcquire):
                assert self._get_or_acquire is not None  # asked only when the store has it
                return self._get_or_acquire(
                    step.key, step.lock_key, step.token, self._lease_ms, step.index_key
                )
            if isinstance(step, Acquire):
                return self.store.acquire_fill(
                    step.lock_key, step.token, self._lease_ms, step.index_key
                )
            if isinstance(step, Forget):
                return self.store.forget(step.key)
            if isinstance(step, WaitLocal):
                event = self._fills.get(step.key)
                if event is not None:
                    event.wait(self.settings.coalesce_wait)
                return None
            if isinstance(step, WaitRemote):
                return self._wait_remote(step.key, step.lock_key)
            raise AssertionError(f"unknown flow step {step!r}")

        try:
            outcome = drive_sync(flow, perform)
        except BaseException:
            if claimed:
                self._release(plan.key)
            raise
        if isinstance(outcome, Serve):
            if outcome.refresh:
                self._refresh_in_background(plan, environ)
            return self._replay(plan, outcome.entry, outcome.now, start_response, outcome.stale)
        if isinstance(outcome, PassOn):
            return self._bypass(
                environ, start_response, outcome.detail, plan.rule.route, plan.venue
            )
        recorder = _MissRecorder(
            self, plan, start_response, outcome.token, outcome.epoch, outcome.stale
        )
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
        start_response(_status_line(status), _to_str(headers))
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

    def _refresh_in_background(self, plan: Lookup, environ: Environ) -> None:
        with self._fills_lock:
            if self._refreshing >= MAX_REFRESHES:
                return  # bounded: the entry stays stale a little longer, the server responsive
            self._refreshing += 1
        if self._claim(plan.key) is not None:
            with self._fills_lock:
                self._refreshing -= 1
            return  # this process is already filling it
        # A plain GET of the full response: the client's validators and ranges stay behind.
        dropped = {"HTTP_" + name.upper().replace("-", "_") for name in REFRESH_DROPPED}
        copy = {
            k: v
            for k, v in environ.items()
            if (not k.startswith("wsgi.") or k in _WSGI_KEEP) and k not in dropped
        }
        copy.update({"REQUEST_METHOD": "GET", "CONTENT_LENGTH": "0", "wsgi.input": BytesIO()})
        thread = threading.Thread(
            target=self._refresh, args=(plan, copy), name="cache-refresh", daemon=True
        )
        thread.start()

    def _refresh(self, plan: Lookup, environ: Environ) -> None:
        try:
            token = lease_token()
            epoch = self.store.acquire_fill(plan.lock_key, token, self._lease_ms, plan.index_key)
            if epoch is None:
                return  # another process is refreshing it: exactly one refresh per entry
            recorder = _MissRecorder(
                self, dataclasses.replace(plan, head=False), _ignore_start, token, epoch, None
            )
            for _ in recorder.run(environ):
                pass
        except StoreUnavailable:
            self.bump("errors", plan)
        except Exception:
            logger.exception("background refresh of %r failed", plan.key)
        finally:
            self._release(plan.key)
            with self._fills_lock:
                self._refreshing -= 1


_WSGI_KEEP = frozenset(
    {
        "wsgi.url_scheme",
        "wsgi.version",
        "wsgi.errors",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
    }
)


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0


def _ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
) -> Callable[[bytes], object]:
    return lambda data: None


class _MissRecorder:
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

    def __init__(
        self,
        mw: WSGICacheMiddleware,
        plan: Lookup,
        start_response: StartResponse,
        token: str | None,
        epoch: int,
        stale: CachedResponse | None,
    ) -> None:
        self.mw = mw
        self.plan = plan
        self.downstream = start_response
        self.token = token
        self.epoch = epoch
        self.stale = stale
        self.suppressed = False
        self.forwarded = False  # the server's start_response was called: no replacing now
        self.settled = False
        self.on_done: Callable[[], None] | None = None
        # The app's start_response, not yet passed on (status, headers, exc_info).
        self.pending: tuple[str, list[tuple[bytes, bytes]], ExcInfo | None] | None = None
        self.write: Callable[[bytes], object] | None = None  # the server's, once forwarded
        self.rec = MissRecording(mw.policy, mw.book, plan, token)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        code = _status_code(status)
        if self.stale is not None and code >= 500:
            self.suppressed = True  # RFC 5861 §4: a 5xx may be replaced by the stale entry
            return lambda data: None
        # An exc_info call replaces an earlier start: only the final response may be stored.
        decision = self.rec.begin(code, _to_bytes(headers), time.time(), final=exc_info is None)
        self.pending = (status, decision.headers, exc_info)
        if not self.rec.holds_headers:
            self._forward()  # no ETag to add: passed on at once, as the app called it
        return self._write_through

    def _forward(self) -> None:
        """Passes the app's start_response on to the server, if it is still held."""
        if self.pending is not None:
            status, headers, exc_info = self.pending
            self.pending = None
            self.write = self.downstream(status, _to_str(headers), exc_info)
            self.forwarded = True

    def _write_through(self, data: bytes) -> object:
        # PEP 3333's write(): the headers must be out before its bytes.
        self._forward()
        self.rec.record(data)
        assert self.write is not None
        return self.write(data)

    def response(self, environ: Environ, on_done: Callable[[], None] | None = None) -> _Response:
        """The body iterable for the server; however it ends (even never iterated, only
        closed), the lease is settled and the claim released."""
        self.on_done = on_done
        return _Response(self.run(environ), self.settle)

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
            if self.on_done is not None:
                self.on_done()

    def run(self, environ: Environ) -> Iterator[bytes]:
        """The response body; the lease is settled (stored or released) however it ends."""
        try:
            try:
                result = self.mw.app(environ, self.start_response)
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
                    self.plan, self.stale, time.time(), self.downstream, "stale-if-error"
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
        assert self.token is not None
        fill = rec.writes(body, time.time())
        if fill is None:
            return False  # incomplete body: not stored, and the lease is released
        writes, index_keys, lifetime = fill
        try:
            ok = self.mw.store.store_fill(
                self.plan.lock_key, self.token, self.epoch, writes, index_keys, lifetime
            )
        except StoreUnavailable:
            self.mw.bump("errors", self.plan)
            return False
        rec.stored(ok)
        return True


class _Response:
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
