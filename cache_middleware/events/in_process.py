"""In-process invalidation: the app's own processes consume `data.updated` / `user.updated`.

With `events.consume.in_process: true` the middleware starts an `InProcessConsumer` next to itself
(`maybe_start_in_process(config, settings)`): the `InvalidationWorker` runs in a daemon thread of
the app process with a sync store of its own (`make_sync_store(settings)`), so no separate
`cache-middleware events consume` worker is needed.

* Memory store (`settings.uses_redis` is False): every process holds its own entries, so every
  process must see every event. Each one consumes from a queue of its own, exclusive and
  auto-deleted (`{consume.queue}.{host}.{pid}.{random}`), bound to the same routing keys. Events
  published while a process is disconnected from the broker are not seen by it (its queue goes
  away with its connection); its entries still expire by their TTL.
* Redis (shared): the processes share the durable `consume.queue`, so each event is handled
  once, by one of them, against the shared store (a separate worker may share it too).
* The thread reconnects by itself (backoff up to `events.reconnect_max`). `stop(timeout)` stops
  it and flushes the events it publishes. AMQP heartbeats every `events.heartbeat` seconds find
  a stalled broker, as in `cache-middleware events consume`.
* A broker fault is said once, by the worker's own lines (events/consumer.py): the first line
  at WARNING ("lost the connection to ..." or "cannot reach ..."), the attempts that follow at
  DEBUG, then "reconnected to ..., consuming from ... (N s without the broker)" at INFO.
* A process forked after the consumer started (gunicorn `--preload`) gets a consumer of its own,
  started in the child: threads do not survive a fork, and a child's memory store is its own.
* One consumer per process and configuration: asking again returns the running one.
* The invalidations are published as `cache.invalidated` (reason `data_updated` /
  `user_updated`) through `sink`, by default the process's sink for the configuration
  (`process_sink.sink_for`: the one the admin app and the cache manager use too); on the
  memory store each process reports its own invalidation. With `events.report_expired` the
  consumer also runs the expiry reporter (events/expiry.py; one process reports, by lease).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

from ..config import ConfigSource, Settings
from .envelope import EventsSettings
from .process_sink import events_settings_of, flush_sink, sink_for
from .sink import EventSink

__all__ = [
    "InProcessConsumer",
    "events_settings_of",
    "maybe_start_in_process",
    "start_in_process_consumer",
]

logger = logging.getLogger("cache_middleware.events")


def _queue_name(events: EventsSettings) -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return f"{events.consume.queue}.{host}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


class InProcessConsumer:
    """The invalidation worker in a daemon thread of the app process."""

    def __init__(
        self,
        settings: Settings,
        events: EventsSettings,
        sink: EventSink | None = None,
        *,
        safety_interval: float = 0.5,
        requeue_pause: float = 0.5,
        expiry_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.events = events
        self.shared = settings.uses_redis
        self.safety_interval = safety_interval
        self.requeue_pause = requeue_pause
        self.expiry_interval = expiry_interval
        self._given_sink = sink
        self._started = False
        self._stopped = False
        self._fresh()

    def _fresh(self) -> None:
        """Everything that belongs to one process (built again in a forked child)."""
        from ..storage.factory import make_sync_store
        from .consumer import InvalidationWorker
        from .expiry import ExpiryReporter

        kombu: Any = importlib.import_module("kombu")
        self.pid = os.getpid()
        # The process's sink for these events (events/process_sink.py) unless one was given:
        # shared with the admin app and the manager, so flushed at stop, closed at exit.
        self._own_sink = self._given_sink is None
        given = self._given_sink
        self.sink: EventSink = sink_for(self.events) if given is None else given
        self.store = make_sync_store(self.settings)
        self.queue_name = self.events.consume.queue if self.shared else _queue_name(self.events)
        self._stop_event = threading.Event()
        self.consuming = threading.Event()  # set while consuming, cleared on a connection loss
        self.connection: Any = kombu.Connection(
            self.events.broker_url,
            heartbeat=self.events.heartbeat,
            connect_timeout=self.events.connect_timeout,
        )
        # What the worker raises when the broker fails: the attempt below gives up at once
        # (kombu's OperationalError), or a connection fails (the transport's own errors).
        self._broker_errors: tuple[type[BaseException], ...] = (
            kombu.exceptions.OperationalError,
            *self.connection.connection_errors,
            *self.connection.channel_errors,
        )
        consumer = self

        class Worker(InvalidationWorker):
            # One connection attempt per round: the thread's own loop backs off and sees stop().
            @contextlib.contextmanager
            def establish_connection(self) -> Iterator[Any]:
                consumer.consuming.clear()
                with self.create_connection() as conn:
                    conn.ensure_connection(max_retries=0, timeout=consumer.events.connect_timeout)
                    yield conn

            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)  # "connected" / "reconnected" (INFO)
                consumer._ready()

            def on_consume_end(self, *args: Any, **kwargs: Any) -> None:
                consumer.consuming.clear()

        self.worker: Any = Worker(
            self.connection,
            self.events,
            self.settings,
            self.store,
            self.sink,
            requeue_pause=self.requeue_pause,
            exclusive_queue=None if self.shared else self.queue_name,
        )
        self.reporter = (
            ExpiryReporter(self.settings, self.events, self.sink, interval=self.expiry_interval)
            if self.events.report_expired
            else None
        )
        self._failing = False  # the thread's loop failed for a reason other than the broker
        self._thread = threading.Thread(
            target=self._run, name="cache-middleware-invalidations", daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> InProcessConsumer:
        if not self._started:
            self._started = True
            self._thread.start()
            if self.reporter is not None:
                self.reporter.start()
            _live.add(self)
            logger.info(
                "in-process invalidation: consuming %s from %s (%s)",
                ", ".join(self.events.consume.routing_keys),
                self.queue_name,
                "shared queue" if self.shared else "this process's own queue",
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop consuming (a message being handled is finished first), stop the expiry reporter,
        and publish the events still buffered in the consumer's own sink, within `timeout`."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._stop_event.set()
        self.worker.should_stop = True
        _live.discard(self)
        _forget(self)
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self.reporter is not None:
            self.reporter.stop(max(0.1, deadline - time.monotonic()))
        if self._own_sink:
            flush_sink(self.sink, max(0.1, deadline - time.monotonic()))
        if self.shared:
            with contextlib.suppress(Exception):
                self.store.close()
        with contextlib.suppress(Exception):
            self.connection.release()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_consuming(self, timeout: float) -> bool:
        """Wait until the consumer is bound and consuming (tests, health checks)."""
        return self.consuming.wait(timeout)

    # -- the thread ------------------------------------------------------------------------------

    def _ready(self) -> None:
        if self._failing:
            logger.info("in-process invalidation: consuming again")
            self._failing = False
        self.consuming.set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop_event.is_set():
            try:
                self.worker.run(safety_interval=self.safety_interval)
                backoff = 0.1
            except Exception as exc:
                self.consuming.clear()
                if self._stop_event.is_set():
                    break
                if isinstance(exc, self._broker_errors):
                    # The worker's voice, so a fault is one WARNING however it shows (a lost
                    # connection it already said, or a first attempt refused), then DEBUG.
                    # The next attempt also waits for kombu's restart limit (one a second).
                    retry_in = max(backoff, self.worker.restart_limit.expected_time(1))
                    self.worker._broker_fault(
                        "cannot reach %s (%s: %s): retrying in %.1f s", exc, retry_in
                    )
                elif not self._failing:
                    self._failing = True
                    logger.exception("in-process invalidation: the consumer failed: restarting")
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, self.events.reconnect_max)

    def _after_fork_in_child(self) -> None:
        # The parent's thread is not here, and its connections and locks are the parent's:
        # build this process's own (not closing the inherited sockets) and start again.
        self._started = False
        self._fresh()
        self.start()


def start_in_process_consumer(
    settings: Settings, events: EventsSettings, sink: EventSink | None = None, **options: Any
) -> InProcessConsumer:
    """Start the invalidation worker in this process (see the module docstring)."""
    return InProcessConsumer(settings, events, sink, **options).start()


# -- one consumer per process and configuration -------------------------------------------------

_lock = threading.Lock()
_running: dict[tuple[Any, ...], InProcessConsumer] = {}
_live: weakref.WeakSet[InProcessConsumer] = weakref.WeakSet()


def _identity(settings: Settings, events: EventsSettings) -> tuple[Any, ...]:
    return (settings.redis_url, settings.key_prefix, events)


def _forget(consumer: InProcessConsumer) -> None:
    with _lock:
        for key, running in list(_running.items()):
            if running is consumer:
                del _running[key]


def maybe_start_in_process(
    config: ConfigSource | None, settings: Settings
) -> InProcessConsumer | None:
    """The middleware's hook: start (or return the already running) in-process consumer when the
    config's `events.consume.in_process` is true; None when it is off, the config has no
    `events:` section (or is a `Settings` object) or kombu is not installed (logged)."""
    events = events_settings_of(config)
    if events is None or not events.consume.in_process:
        return None
    try:
        importlib.import_module("kombu")
    except ImportError:
        logger.warning(
            "%s: events.consume.in_process is set but kombu is not installed "
            "(pip install 'cache-middleware[events]'): no in-process invalidation",
            events.source,
        )
        return None
    key = _identity(settings, events)
    with _lock:
        running = _running.get(key)
        if running is not None and not running._stopped:
            return running
        consumer = _running[key] = start_in_process_consumer(settings, events)
    return consumer


def _stop_all() -> None:
    for consumer in list(_live):
        with contextlib.suppress(Exception):
            consumer.stop(2.0)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for consumer in list(_live):
        if consumer.pid != os.getpid() and not consumer._stopped:
            try:
                consumer._after_fork_in_child()
            except Exception:
                logger.exception("in-process invalidation: cannot restart after fork")


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
