"""stale-while-revalidate under WSGI: the stale entry was served; one daemon thread per key
refreshes it behind the response (bounded in number), with the fill lease, as a plain GET."""

from __future__ import annotations

import dataclasses
import logging
import threading
from io import BytesIO
from typing import TYPE_CHECKING, cast

from .._core.flow import RunApp
from .._core.policy import REFRESH_DROPPED, Lookup
from .._core.tokens import lease_token
from ..errors import StoreUnavailable
from ..storage import SyncStore
from .recorder import MissRecorder, ignore_start
from .request import Environ

if TYPE_CHECKING:
    from ..wsgi import WSGICacheMiddleware

__all__ = ["MAX_REFRESHES", "BackgroundRefresh"]

logger = logging.getLogger("cache_middleware")

MAX_REFRESHES = 16  # background refresh threads (stale-while-revalidate) at once, at most


class BackgroundRefresh:
    """WSGICacheMiddleware's refresh behind a stale HIT (a mixin: it shares its state)."""

    store: SyncStore
    _fills_lock: threading.Lock
    _refreshing: int
    _lease_ms: int

    if TYPE_CHECKING:  # provided by WSGICacheMiddleware and its other parts

        def bump(self, name: str, plan: Lookup) -> None: ...
        def _claim(self, key: str) -> threading.Event | None: ...
        def _release(self, key: str) -> None: ...

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
            recorder = MissRecorder(
                cast("WSGICacheMiddleware", self),
                dataclasses.replace(plan, head=False),
                ignore_start,
                RunApp(token, epoch, None),
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
