"""What both middlewares are built from, written once: the constructor users call and the
pieces a config gives (settings, policy, store, counters, event wiring, the fill bookkeeping
both lookup drivers share). `CacheMiddleware` (asgi.py) and `WSGICacheMiddleware` (wsgi.py)
each add their own protocol's parts in `_set_up` and open their kind of store in
`_open_store`; a setting added here reaches both."""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Any, Generic, TypeVar

from ._core.flow import Flow, lookup_flow
from ._core.held import PlainRead
from ._core.policy import CachePolicy, Found, Lookup, Resolver
from ._core.stats import StatsBook
from ._core.trend import MissTrend, lookup_takes_lease
from .config import ConfigSource, Settings, load_config
from .events.in_process import maybe_start_in_process
from .events.process_sink import events_of
from .registry import register
from .wiring import FLUSH_INTERVAL, build_policy

__all__ = ["MiddlewareBase"]

AppT = TypeVar("AppT")
StoreT = TypeVar("StoreT")


class MiddlewareBase(Generic[AppT, StoreT]):
    """`Middleware(app, config, user_resolver=..., venue_resolver=..., store=...)`."""

    app: AppT
    settings: Settings
    policy: CachePolicy
    store: StoreT
    _fills: Container[str]  # the keys this process is filling (each adapter's own kind)

    def __init__(
        self,
        app: AppT,
        config: ConfigSource,
        *,
        user_resolver: Resolver | None = None,
        venue_resolver: Resolver | None = None,
        store: StoreT | None = None,
    ) -> None:
        self.app = app
        self._set_up(config, user_resolver, venue_resolver, store)

    def _set_up(
        self,
        config: ConfigSource,
        user_resolver: Resolver | None,
        venue_resolver: Resolver | None,
        store: StoreT | None,
    ) -> None:
        """Everything the config gives; raises ConfigError for a config it refuses."""
        self.settings = settings = load_config(config)
        self.policy = build_policy(
            settings, user_resolver=user_resolver, venue_resolver=venue_resolver
        )
        self.store = self._open_store(settings, store)
        self.book = StatsBook()
        self.stats = self.book.total  # the process totals; per route/venue in self.book
        self._next_flush = time.monotonic() + FLUSH_INTERVAL
        register(self)
        # `events.consume.in_process: true`: invalidate on domain events from this process
        # (a daemon thread; stopped at exit). None when the config does not ask for it.
        self.events_consumer = maybe_start_in_process(config, settings)
        # `events:` in the config: a write that drops entries is published (reason `write`)
        # through the process's one event sink. None, the usual case, costs a write nothing.
        self.events = events_of(config)
        self._lease_ms = int(settings.lock_timeout * 1000)
        # On routes that mostly miss, the lookup also takes the fill lease when it finds
        # nothing (one round trip instead of two), if the store can (the Redis stores can).
        self.trend = MissTrend()
        self._get_or_acquire: Any = getattr(self.store, "get_or_acquire", None)
        # An entry this process holds (near-cache, memory store) is read without I/O.
        self._local_get: Callable[[str], bytes | None] | None = getattr(
            self.store, "local_get", None
        )

    def _open_store(self, settings: Settings, store: StoreT | None) -> StoreT:
        """The store `settings` name (or the one given), behind its near-cache if configured."""
        raise NotImplementedError

    def bump(self, name: str, plan: Lookup) -> None:
        """Count `name` for `plan`'s route and venue."""
        self.book.bump(name, plan.rule.route, plan.venue)

    @staticmethod
    def now() -> float:
        """The wall clock of entries and freshness: each adapter's reads its own module's
        `time`, which tests move."""
        raise NotImplementedError

    def _lookup_flow(
        self, plan: Lookup, prefetched: PlainRead | None, local: Found | None = None
    ) -> Flow:
        """`_core/flow.lookup_flow` for `plan`, on this middleware's policy, counters and
        clock; reading and leasing in one round trip where the store can and the route has
        mostly missed lately."""
        return lookup_flow(
            self.policy,
            self.trend,
            self.book,
            plan,
            prefetched=prefetched,
            local=local,
            takes_lease=self._get_or_acquire is not None
            and lookup_takes_lease(self.trend, plan, self._fills),
            clock=self.now,
        )
