"""WSGICacheMiddleware: the WSGI adapter, the same calls into `_core` with start_response.

`app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config="cache.yaml")`. Headers cross into the
core as lower-case byte pairs (latin-1, as PEP 3333 defines them) and back out as str pairs.
The flow is asgi.py's, with threads where that has tasks: coalescing waits on a
`threading.Event`, a stale-while-revalidate refresh runs on a daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ._core.held import PlainRead, reads_plain, replay_held, replay_read
from ._core.policy import (
    Invalidate,
    Lookup,
    Resolver,
    declares_no_body,
)
from ._core.rules import Rule
from ._wsgi.lookup import LookupDriver
from ._wsgi.refresh import BackgroundRefresh
from ._wsgi.request import (
    STREAM_FRAMED,
    Environ,
    ExcInfo,
    StartResponse,
    WSGIApp,
    WsgiRequest,
    environ_name,
    has_unframed_body,
    request_path,
    status_code,
    status_line,
    target_of,
    to_bytes,
    to_str,
)
from .config import ConfigSource, Settings
from .errors import StoreUnavailable
from .events.process_sink import publish_write_invalidation
from .middleware_base import MiddlewareBase
from .storage import SyncStore, make_sync_store
from .storage.tracking import with_near_cache_sync
from .wiring import FLUSH_INTERVAL, STATS_TTL, stats_key

__all__ = ["WSGICacheMiddleware"]


logger = logging.getLogger("cache_middleware")


class WSGICacheMiddleware(LookupDriver, BackgroundRefresh, MiddlewareBase[WSGIApp, SyncStore]):
    """`app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config="cache.yaml")`."""

    def _set_up(
        self,
        config: ConfigSource,
        user_resolver: Resolver | None,
        venue_resolver: Resolver | None,
        store: SyncStore | None,
    ) -> None:
        super()._set_up(config, user_resolver, venue_resolver, store)  # ConfigError: raised
        self._flush_lock = threading.Lock()
        # Fills under way in this process: primary key -> set when the entry is (or is not) in.
        self._fills: dict[str, threading.Event] = {}
        self._fills_lock = threading.Lock()
        # A plain GET whose entry this process holds is answered without its plan; "plain" read
        # from the environ: none of these keys (Content-Length is looked at on its own).
        self._not_plain_environ = frozenset(
            environ_name(name) for name in self.policy.not_plain_headers - {"content-length"}
        )
        self._refreshing = 0  # background refresh threads running

    def _open_store(self, settings: Settings, store: SyncStore | None) -> SyncStore:
        return with_near_cache_sync(
            store if store is not None else make_sync_store(settings), settings
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = request_path(environ)
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
                start_response(status_line(hit[0]), to_str(hit[1]))
                return [hit[2]]
        plan = self.policy.plan(
            environ.get("REQUEST_METHOD", "GET"),
            path,
            environ.get("QUERY_STRING", ""),
            WsgiRequest(environ),
            environ.get("wsgi.url_scheme", "http"),
            target_of(environ),
        )
        if plan is None:
            return self.app(environ, start_response)
        if isinstance(plan, Lookup):
            if environ.get("SERVER_PROTOCOL") in STREAM_FRAMED and has_unframed_body(environ):
                # A GET or HEAD with a body is not the request the key names.
                return self._bypass(environ, start_response, "request-body", plan.rule, plan.venue)
            return self._lookup(plan, environ, start_response, prefetched)
        if isinstance(plan, Invalidate):
            return self._invalidate(plan, environ, start_response)
        return self._bypass(environ, start_response, plan.reason, plan.rule)

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

    @staticmethod
    def now() -> float:
        """The wall clock of entries and freshness (this module's `time`: tests move it)."""
        return time.time()

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
        rule: Rule | None = None,
        venue: str | None = None,
    ) -> Iterable[bytes]:
        self.book.bump("bypasses", None if rule is None else rule.route, venue)
        policy = self.policy

        def start_bypass(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            patched = to_str(policy.bypass_headers(to_bytes(headers), reason, rule))
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
            if exc_info is None and 200 <= status_code(status) < 400:
                try:
                    count = store.delete_index(plan.index_key)
                    # A non-canonical path's canonical forms; Location, Content-Location.
                    for index_key in (*plan.also, *policy.location_index_keys(
                        to_bytes(headers), request_path(environ), environ.get("HTTP_HOST")
                    )):  # fmt: skip
                        count += store.delete_index(index_key)
                    book.bump("invalidations", route)
                except StoreUnavailable:
                    book.bump("errors", route)
                else:
                    publish_write_invalidation(events, path, count)
            patched = to_str(policy.bypass_headers(to_bytes(headers), "method", plan.rule))
            return start_response(status, patched, exc_info)

        return self.app(environ, start_invalidating)
