"""stale-while-revalidate under ASGI: the stale entry was served; one task per key refreshes
it behind the response (bounded in number), with the fill lease, as a plain GET."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, cast

from .._core.flow import RunApp
from .._core.policy import REFRESH_DROPPED, Lookup
from .._core.tokens import lease_token
from ..errors import StoreUnavailable
from ..storage import AsyncStore
from .recorder import EmptyRequest, MissRecorder, discard
from .request import Scope

if TYPE_CHECKING:
    from ..asgi import CacheMiddleware

__all__ = ["MAX_REFRESHES", "BackgroundRefresh"]

logger = logging.getLogger("cache_middleware")

# Background refreshes (stale-while-revalidate) under way at once, at most.
MAX_REFRESHES = 16


class BackgroundRefresh:
    """CacheMiddleware's refresh behind a stale HIT (a mixin: it shares the middleware's state)."""

    store: AsyncStore
    _fills: dict[str, asyncio.Future[None]]
    _background: set[asyncio.Task[None]]
    _lease_ms: int

    if TYPE_CHECKING:  # provided by CacheMiddleware and its other parts

        def bump(self, name: str, plan: Lookup) -> None: ...

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
            recorder = MissRecorder(
                cast("CacheMiddleware", self),
                dataclasses.replace(plan, head=False),
                discard,
                RunApp(token, epoch, None),
                functools.partial(self._unclaim, plan.key, done),
            )
            await recorder.run(refresh_scope, EmptyRequest())
        except StoreUnavailable:
            self.bump("errors", plan)
        except Exception:
            logger.exception("background refresh of %r failed", plan.key)
        finally:
            self._unclaim(plan.key, done)
