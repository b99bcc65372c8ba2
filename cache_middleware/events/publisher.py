"""`KombuEventSink`: publishes lifecycle events to the `coder.events` topic exchange.

`emit()` builds the envelopes, serializes them and appends them to a bounded in-memory buffer: it
never blocks on the broker and never raises. One background thread publishes the buffer in order
(routing key = event type, JSON, persistent, with publisher confirms so an event leaves the
buffer only once the broker has it). With the broker down the events wait in the buffer and are
flushed when it answers again; when the buffer is full the oldest events are dropped, counted
and logged once per burst. A broker that stops answering while its connection stays open (a
stall: a paused node, a network that drops packets silently) is found out too: each publish
waits for its confirm at most `connect_timeout` seconds (every other wait for the broker
too), and AMQP heartbeats (every `events.heartbeat` seconds, checked while idle) end a
connection the broker no longer answers on; a failed connection is dropped without waiting for
the broker's goodbye. A stall or an outage is logged once when publishing starts failing and
once when it works again (a stall found while idle, with no event waiting, at INFO).
`flush(timeout)` publishes what is buffered within the time limit and stays open (a lifespan
shutdown); `close(timeout)` does the same and stops the thread.

Most code does not build one: `process_sink.sink_for(config)` returns the process's sink for a
configuration, shared by every source of events.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .envelope import EventsSettings, build_envelopes, load_events_config

__all__ = ["KombuEventSink"]

logger = logging.getLogger("cache_middleware.events")

# kombu is only partly typed: used through `Any`, so mypy needs no override for it.
_kombu: Any = importlib.import_module("kombu")
Connection: Any = _kombu.Connection
Exchange: Any = _kombu.Exchange
Producer: Any = _kombu.Producer


class KombuEventSink:
    """An `EventSink` that publishes to RabbitMQ (or any kombu transport) in the background."""

    def __init__(
        self,
        settings: EventsSettings | Mapping[str, Any] | str,
        *,
        broker_url: str | None = None,
        start: bool = True,
    ) -> None:
        self.settings = load_events_config(settings)
        self.broker_url = broker_url or self.settings.broker_url
        try:
            self._display_url = str(Connection(self.broker_url).as_uri())  # password masked
        except Exception:
            self._display_url = "<broker>"
        self.exchange = Exchange(self.settings.exchange, type="topic", durable=True)
        # (routing key, JSON body) in publishing order
        self._buffer: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the thread: work to do, or try now
        self._drained = threading.Condition(self._lock)  # flush(): an event left the buffer
        self._closing = False
        self._deadline: float | None = None
        self._connection: Any = None
        self._producer: Any = None
        self.published = 0
        self.dropped = 0
        self.failures = 0  # publish attempts that failed (timeouts, lost connections)
        self._failing = False  # between the first failure of a stall or outage and its end
        self._burst_dropped = 0
        self._thread = self._new_thread()
        if start:
            self._thread.start()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="cache-middleware-events", daemon=True)

    # -- the caller's side: never blocks, never raises --------------------------------------------

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            messages = [
                (envelope["type"], json.dumps(envelope, separators=(",", ":"), default=str))
                for envelope in build_envelopes(event_type, data, self.settings)
            ]
        except Exception:
            logger.exception("cannot build %s event: dropped", event_type)
            return
        with self._wake:
            if self._closing:
                logger.warning("event sink closed: %s event dropped", event_type)
                return
            room = self.settings.buffer_size
            for message in messages:
                if len(self._buffer) >= room:
                    self._buffer.popleft()
                    self.dropped += 1
                    self._burst_dropped += 1
                    if self._burst_dropped == 1:
                        logger.warning(
                            "event buffer full (%d events, broker %s unreachable or slow): "
                            "dropping the oldest events",
                            room,
                            self._safe_url(),
                        )
                self._buffer.append(message)
            self._wake.notify()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self, timeout: float = 5.0) -> int:
        """Publish what is buffered, for at most `timeout` seconds, and stay open (a lifespan
        shutdown: the process may serve again). A thread waiting out a backoff tries at once.
        Returns how many events are still buffered."""
        deadline = time.monotonic() + timeout
        with self._wake:
            self._wake.notify_all()
            while self._buffer and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._drained.wait(remaining)
            return len(self._buffer)

    def close(self, timeout: float = 5.0) -> int:
        """Publish what is buffered, for at most `timeout` seconds; return how many events were
        left unpublished (0 when everything went out)."""
        with self._wake:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout + 0.5)
        with self._lock:
            left = len(self._buffer)
        if left:
            logger.warning("event sink closed with %d events unpublished", left)
        if not self._thread.is_alive():
            self._disconnect(failed=False)
        return left

    # -- the publishing thread --------------------------------------------------------------------

    def _safe_url(self) -> str:
        return self._display_url

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._wake:
                while not self._buffer and not self._closing:
                    # Idle: wake twice per heartbeat, so the broker never misses one of ours.
                    if not self._wake.wait(self.settings.heartbeat / 2):
                        self._keep_alive()
                if not self._buffer or self._past_deadline():
                    self._drained.notify_all()
                    return
                routing_key, body = self._buffer[0]
            try:
                self._publish(routing_key, body)
            except Exception as exc:
                self._disconnect()
                if self._past_deadline():
                    return
                self._publish_failed(exc)
                with self._wake:
                    wait = backoff
                    if self._deadline is not None:
                        wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                    self._wake.wait(wait)
                backoff = min(backoff * 2, self.settings.reconnect_max)
                continue
            backoff = 0.05
            if self._failing:
                self._failing = False
                logger.info(
                    "publishing to %s again (%d events buffered)", self._safe_url(), self.pending
                )
            with self._wake:
                if self._buffer and self._buffer[0] == (routing_key, body):
                    self._buffer.popleft()
                self.published += 1
                self._drained.notify_all()
                if not self._buffer and self._burst_dropped:
                    logger.warning(
                        "event buffer drained: %d events were dropped while it was full",
                        self._burst_dropped,
                    )
                    self._burst_dropped = 0

    def _publish_failed(self, exc: BaseException) -> None:
        """One warning per stall or outage (the first failure), the retries at DEBUG."""
        self.failures += 1
        first = not self._failing
        self._failing = True
        log = logger.warning if first else logger.debug
        log(
            "cannot publish to %s (%s: %s): %d events buffered, retrying until it answers",
            self._safe_url(),
            type(exc).__name__,
            exc or "no answer in time",
            self.pending,
        )

    def _keep_alive(self) -> None:
        """Idle: send and check heartbeats, so a dead connection is found before an event
        needs it (called with the lock held; a heartbeat is one small frame)."""
        connection = self._connection
        if connection is None:
            return
        try:
            # Read what the broker sent meanwhile (its heartbeats) first: unread, they count
            # as missed, and a healthy idle connection would be dropped every two heartbeats.
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=0)
            connection.heartbeat_check()
        except Exception as exc:
            self._disconnect()
            logger.info(
                "broker connection to %s lost while idle (%s: %s): reconnecting on the next event",
                self._safe_url(),
                type(exc).__name__,
                exc,
            )

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _connect(self) -> Any:
        if self._producer is None:
            timeout = self.settings.connect_timeout
            if self._deadline is not None:
                timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
            connection = Connection(
                self.broker_url,
                connect_timeout=timeout,
                transport_options={"confirm_publish": True},
                # Seconds between AMQP heartbeats: the broker and this process each give up
                # on a connection silent for two of them.
                heartbeat=self.settings.heartbeat,
            )
            try:
                connection.ensure_connection(max_retries=1, timeout=timeout)
                _bound_waits(connection, self.settings.connect_timeout)
                producer = Producer(connection.channel(), exchange=self.exchange)
                self.exchange(producer.channel).declare()
            except Exception:
                connection.collect()  # never wait for the goodbye of a broker that failed
                raise
            self._connection, self._producer = connection, producer
        return self._producer

    def _publish(self, routing_key: str, body: str) -> None:
        producer = self._connect()
        producer.publish(
            body,
            routing_key=routing_key,
            exchange=self.exchange,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,  # persistent
            retry=True,
            retry_policy=self.settings.retry.as_kombu(),
            # A broker that takes the message and never confirms it (a stall) must not hold
            # this thread, and with it every event behind, until the buffer overflows.
            timeout=self.settings.connect_timeout,
            confirm_timeout=self.settings.connect_timeout,
        )

    def _after_fork_in_child(self) -> None:
        """In a child forked after the thread started: the thread is not here, and the lock,
        the connection and the buffered events are the parent's (it publishes those). Build
        this process's own and start again. The inherited connection is dropped, not closed:
        closing it would say goodbye to the broker on the parent's socket."""
        was_running = self._thread.ident is not None and not self._closing
        self._connection = self._producer = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._buffer = deque()
        self._burst_dropped = 0
        self._thread = self._new_thread()
        if was_running:
            self._thread.start()

    def _disconnect(self, failed: bool = True) -> None:
        """Drop the connection. One that failed is dropped without the goodbye: a stalled
        broker never answers it, and the wait would hold this thread (and, from `_keep_alive`,
        every `emit()` behind the lock). A clean close says goodbye, within `connect_timeout`."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is None:
            return
        try:
            if failed:
                connection.collect()
            else:
                connection.release()
        except Exception:
            logger.debug("error closing the broker connection", exc_info=True)
            with contextlib.suppress(Exception):
                connection.collect()


def _bound_waits(connection: Any, seconds: float) -> None:
    """Give the AMQP socket a timeout, so a wait for a reply the broker never sends (a channel
    open, a declaration, a close) ends with `socket.timeout` after `seconds`. The waits for a
    confirm and for heartbeats set their own timeout and restore this one; transports without
    a socket (`memory://`) have nothing to bound."""
    transport = getattr(getattr(connection, "connection", None), "transport", None)
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)
