"""WSGICacheMiddleware: the WSGI adapter, the same calls into `_core` with start_response.

`app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config="cache.yaml")`. Headers cross into the
core as lower-case byte pairs (latin-1, as PEP 3333 defines them) and back out as str pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from ._core.entry import CorruptEntry, decode_entry
from ._core.policy import Bypass, Lookup, RequestView
from ._core.stats import Counters
from .config import ConfigSource, load_config
from .errors import StoreUnavailable
from .storage import SyncStore, make_sync_store
from .wiring import build_policy

__all__ = ["WSGICacheMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

logger = logging.getLogger("cache_middleware")

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"


def _to_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _to_str(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


def _request_path(environ: Environ) -> str:
    # PEP 3333 hands PATH_INFO over as latin-1-decoded bytes; decode it as werkzeug does, so the
    # key is built from the same path the app's router matches.
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        return raw.encode("latin-1").decode("utf-8", "replace") or "/"
    except UnicodeEncodeError:  # a server that already decoded it (not PEP 3333, but seen)
        return str(raw) or "/"


class _WsgiRequest:
    __slots__ = ("environ",)

    def __init__(self, environ: Environ) -> None:
        self.environ = environ

    def header(self, name: str) -> str | None:
        if name == "content-type":
            value = self.environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = self.environ.get("CONTENT_LENGTH")
        else:
            value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value if isinstance(value, str) else None

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
        self.store = store if store is not None else make_sync_store(self.settings)
        self.stats = Counters()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        plan = self.policy.plan(
            environ.get("REQUEST_METHOD", "GET"),
            _request_path(environ),
            environ.get("QUERY_STRING", ""),
            _WsgiRequest(environ),
        )
        if plan is None:
            return self.app(environ, start_response)
        if isinstance(plan, Bypass):
            return self._bypass(environ, start_response)
        return self._lookup(plan, environ, start_response)

    def _bypass(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.stats.bypasses += 1
        policy = self.policy

        def start_bypass(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            patched = _to_str(policy.bypass_headers(_to_bytes(headers)))
            return start_response(status, patched, exc_info)

        return self.app(environ, start_bypass)

    def _lookup(
        self, plan: Lookup, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            raw = self.store.get(plan.key)
        except StoreUnavailable:
            self.stats.errors += 1
            return self._bypass(environ, start_response)
        if raw is not None:
            try:
                entry = decode_entry(raw)
            except CorruptEntry as exc:
                logger.warning("dropping unreadable cache entry %r: %s", plan.key, exc)
                self._forget(plan.key)
            else:
                self.stats.hits += 1
                headers = self.policy.respond_hit(plan, entry, time.time())
                start_response(_status_line(entry.status), _to_str(headers))
                return [b"" if plan.head else entry.body]
        recorder = _MissRecorder(self, plan, start_response)
        return recorder.run(self.app(environ, recorder.start_response))

    def _forget(self, key: str) -> None:
        try:
            self.store.delete(key)
        except StoreUnavailable:
            self.stats.errors += 1


class _MissRecorder:
    """Passes the app's response through, keeping a copy of a storable body."""

    def __init__(
        self, mw: WSGICacheMiddleware, plan: Lookup, start_response: StartResponse
    ) -> None:
        self.mw = mw
        self.plan = plan
        self.downstream = start_response
        self.recording = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        try:
            self.status = int(status.split(" ", 1)[0])
        except ValueError:
            self.status = 0
        self.headers = _to_bytes(headers)
        decision = self.mw.policy.start_miss(self.plan, self.status, self.headers)
        # An exc_info call replaces an earlier start: only the final response may be stored.
        self.recording = decision.store and exc_info is None
        if exc_info is None:
            # Counted as the X-Cache header says: an unstorable answer went out as BYPASS.
            if decision.store:
                self.mw.stats.misses += 1
            else:
                self.mw.stats.bypasses += 1
        self.body.clear()
        self.size = 0
        write = self.downstream(status, _to_str(decision.headers), exc_info)

        def write_through(data: bytes) -> object:
            self._record(data)
            return write(data)

        return write_through

    def _record(self, chunk: bytes) -> None:
        if not self.recording:
            return
        self.size += len(chunk)
        if self.size > self.mw.policy.max_body_bytes:
            self.recording = False
            self.body.clear()
        elif chunk:
            self.body.append(bytes(chunk))

    def run(self, result: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in result:
                self._record(chunk)
                yield chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        # Reached only when the server consumed the whole body (not on a client disconnect).
        if self.recording:
            self._store()

    def _store(self) -> None:
        mw = self.mw
        record = mw.policy.encode_miss(
            self.plan, self.status, self.headers, b"".join(self.body), time.time()
        )
        try:
            mw.store.set(self.plan.key, record, self.plan.rule.ttl)
        except StoreUnavailable:
            mw.stats.errors += 1
            return
        mw.stats.stores += 1
