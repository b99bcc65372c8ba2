"""The invalidation worker: consumes `data.updated` and `user.updated` from `coder.events`.

Each message is an envelope (`id`, `type`, `data`, ...). What it invalidates comes from the
`events.consume.entities` configuration::

    events:
      consume:
        entities:
          product:                      # data.updated with data.entityType == "product"
            tags: ["product:{entityId}"]
            paths: ["/api/products/{entityId}", "/api/products/{entityId}/*"]
          user:                         # user.updated (and data.updated of entityType "user")
            paths: ["/api/users/{userId}"]

`{name}` is replaced by `data.<name>` of the event (`{entityId}` and `{userId}` also accept
`data.id`). In a path template `*` and `?` are wildcards and everything else, a substituted
value included, is literal: values are key-escaped and glob-escaped, so an id `4*2` matches only
`4*2`. `user.updated` also always invalidates that user's private entries (keys with
`:user:<id>`).

Delivery: the queue is durable; a message is acknowledged after the store did its deletions;
a store failure requeues it (after a short pause); an event id already handled (an in-memory
window of `dedupe_size` ids) is acknowledged without doing it twice; a message that cannot be
handled (not JSON, not an envelope, a placeholder missing from its data) is published to the
dead-letter queue, with the reason in its `x-error` header, then acknowledged.

Broker faults: AMQP heartbeats every `events.heartbeat` seconds (checked while idle) find a
broker that stopped answering with its connection open (a stall); every other wait for a reply
is bounded by `connect_timeout`. A failed connection is dropped without waiting for the
broker's goodbye, and the worker reconnects (every `reconnect_max` seconds at most); a message
it had not acknowledged is redelivered by the broker.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .._core.globs import escape_glob
from .._core.keys import entry_globs, escape_component, escape_path_glob, tag_index_key
from ..config import Settings
from ..errors import StoreUnavailable
from ..storage.base import SyncStore
from .envelope import EventsSettings, load_events_config
from .sink import EventSink

__all__ = ["BadEvent", "InvalidationWorker", "invalidation_plan", "run_consumer"]

logger = logging.getLogger("cache_middleware.events")

_kombu: Any = importlib.import_module("kombu")
_mixin: Any = importlib.import_module("kombu.mixins")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ALIASES = {"entityId": ("entityId", "entity_id", "id"), "userId": ("userId", "user_id", "id")}


class BadEvent(ValueError):
    """A message that can never be handled: it goes to the dead-letter queue."""


class _Stopped(Exception):
    """`should_stop` was set while the worker was waiting for the broker."""


def _value(data: Mapping[str, Any], name: str) -> str:
    for candidate in _ALIASES.get(name, (name,)):
        value = data.get(candidate)
        if isinstance(value, bool):
            continue
        if isinstance(value, (str, int)) and str(value):
            return str(value)
    raise BadEvent(f"placeholder {{{name}}}: data.{name} is missing or not a string/number")


def _path_patterns(prefix: str, template: str, data: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(escape_path_glob(template[pos : match.start()]))
        parts.append(escape_glob(escape_component(_value(data, match.group(1)))))
        pos = match.end()
    parts.append(escape_path_glob(template[pos:]))
    return entry_globs(prefix, "".join(parts))


def _fill_tag(template: str, data: Mapping[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: _value(data, m.group(1)), template)


def invalidation_plan(
    envelope: Any, events: EventsSettings, prefix: str
) -> tuple[list[str], list[str], dict[str, list[str]]] | None:
    """(key globs, tag index keys, description) for one envelope; None when the configuration
    maps nothing to it. Raises BadEvent for a malformed envelope."""
    if not isinstance(envelope, Mapping):
        raise BadEvent("not a JSON object")
    event_id, event_type, data = envelope.get("id"), envelope.get("type"), envelope.get("data")
    if not isinstance(event_id, str) or not event_id:
        raise BadEvent("envelope has no id")
    if event_type not in ("data.updated", "user.updated"):
        raise BadEvent(f"unexpected event type {event_type!r}")
    if not isinstance(data, Mapping):
        raise BadEvent("envelope data is not an object")
    patterns: list[str] = []
    tags: list[str] = []
    if event_type == "user.updated":
        entity = "user"
        user = escape_glob(escape_component(_value(data, "userId")))
        patterns += [f"{prefix}:GET:*:user:{user}", f"{prefix}:GET:*:user:{user}:*"]
    else:
        raw = data.get("entityType", data.get("entity_type"))
        if not isinstance(raw, str) or not raw:
            raise BadEvent("data.updated without data.entityType")
        entity = raw
    rule = events.consume.rule(entity)
    if rule is None and not patterns:
        return None
    if rule is not None:
        for template in rule.paths:
            patterns += _path_patterns(prefix, template, data)
        tags = [_fill_tag(template, data) for template in rule.tags]
    indexes = [tag_index_key(prefix, tag) for tag in tags]
    return patterns, indexes, {"patterns": patterns, "tags": tags}


class InvalidationWorker(_mixin.ConsumerMixin):  # type: ignore[misc]
    """A kombu ConsumerMixin: `run()` until `should_stop` is set."""

    def __init__(
        self,
        connection: Any,
        events: EventsSettings,
        settings: Settings,
        store: SyncStore,
        sink: EventSink | None = None,
        requeue_pause: float = 0.5,
        *,
        exclusive_queue: str | None = None,
    ) -> None:
        """`exclusive_queue`: consume from a queue of this name that only this connection uses
        and the broker deletes when it closes (a per-process store must see every event), instead
        of the shared durable `consume.queue` (each event handled once by one worker)."""
        self.connection = connection
        self.events = events
        self.settings = settings
        self.store = store
        self.sink = sink
        self.requeue_pause = requeue_pause
        self.exchange = _kombu.Exchange(events.exchange, type="topic", durable=True)
        consume = events.consume
        bindings = [_kombu.binding(self.exchange, routing_key=key) for key in consume.routing_keys]
        if exclusive_queue is None:
            self.queue = _kombu.Queue(consume.queue, bindings=bindings, durable=True)
        else:
            self.queue = _kombu.Queue(
                exclusive_queue,
                bindings=bindings,
                durable=False,
                exclusive=True,
                auto_delete=True,
            )
        self.dead_letter = _kombu.Queue(consume.dead_letter_queue, durable=True)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.handled = 0
        self.dead_lettered = 0
        self.connections = 0  # times consuming started: 1 + the reconnections
        # When the current broker fault (a loss, a stall, an unreachable broker) began; None
        # while consuming. Its first line is a WARNING, the retries that follow are DEBUG.
        self._fault_since: float | None = None
        self._outage: float | None = None  # how long the fault that just ended lasted
        try:
            self.broker = str(connection.as_uri())  # the password masked
        except Exception:
            self.broker = "<broker>"

    # -- what `cache-middleware events consume` tells on stderr (the CLI sets the level) --------

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """kombu's loop, with the connection losses reported on our logger (kombu's own says
        only "Connection to broker lost" on its). A stall ends here too: the heartbeats kombu
        checks while idle stop coming, or a reply does not come within `connect_timeout`."""
        errors = self.connection.connection_errors + self.connection.channel_errors
        while not self.should_stop:
            try:
                if self.restart_limit.can_consume(_tokens):
                    for _ in self.consume(limit=None, **kwargs):
                        pass
                else:
                    time.sleep(self.restart_limit.expected_time(_tokens))
            except _Stopped:
                break
            except errors as exc:
                if self.should_stop:
                    break
                self._broker_fault("lost the connection to %s (%s: %s): reconnecting", exc)

    def _broker_fault(self, message: str, exc: BaseException, *args: Any) -> None:
        """Said once per fault: the first line at WARNING, the rest until consuming again at
        DEBUG (a broker away for an hour is one warning, not one per attempt)."""
        first = self._fault_since is None
        if first:
            self._fault_since = time.monotonic()
        log = logger.warning if first else logger.debug
        log(message, self.broker, type(exc).__name__, exc or "no answer in time", *args)

    @contextlib.contextmanager
    def establish_connection(self) -> Iterator[Any]:
        # Retries every `reconnect_max` seconds at most (kombu's default backs off to 30 s),
        # and gives up between attempts once `should_stop` is set. Each attempt is bounded by
        # `connect_timeout`, the AMQP handshake included (a broker that accepts and never
        # answers).
        with self.create_connection() as conn:
            conn.ensure_connection(
                self.on_connection_error,
                self.connect_max_retries,
                interval_start=min(0.1, self.events.reconnect_max),
                interval_step=min(0.5, self.events.reconnect_max),
                interval_max=self.events.reconnect_max,
                callback=self._unless_stopping,
            )
            yield conn

    @contextlib.contextmanager
    def Consumer(self) -> Iterator[tuple[Any, Any, list[Any]]]:
        """kombu's, with every wait for the broker bounded: a stalled broker answers nothing,
        and py-amqp waits for a reply (a declaration, a cancel, a close) on a socket without a
        timeout. A connection that failed is dropped without the goodbye; a clean stop says it
        within `connect_timeout`, then drops the connection all the same."""
        with self.establish_connection() as conn:
            _bound_waits(conn, self.events.connect_timeout)
            try:
                self.on_connection_revived()
                channel = conn.default_channel
                make = functools.partial(
                    _kombu.Consumer, channel, on_decode_error=self.on_decode_error
                )
                consumers = self.get_consumers(make, channel)
                for consumer in consumers:
                    consumer.consume()
                self._fault_ended()
                yield conn, channel, consumers
            except BaseException:
                conn.collect()  # close the socket; never wait for a broker that failed
                raise
            try:
                for consumer in consumers:
                    consumer.cancel()
                self.on_consume_end(conn, channel)
            except conn.connection_errors + conn.channel_errors:
                conn.collect()

    def _fault_ended(self) -> None:
        since, self._fault_since = self._fault_since, None
        self._outage = None if since is None else time.monotonic() - since

    def _unless_stopping(self) -> None:
        if self.should_stop:
            raise _Stopped

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        self._broker_fault("cannot reach %s (%s: %s): retrying in %.1f s", exc, interval)

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kw: Any) -> None:
        self.connections += 1
        if self.connections == 1:
            logger.info("connected to %s, consuming from %s", self.broker, self.queue.name)
        else:
            logger.info(
                "reconnected to %s, consuming from %s (%.1f s without the broker)",
                self.broker,
                self.queue.name,
                self._outage or 0.0,
            )

    def get_consumers(self, consumer: Any, channel: Any) -> list[Any]:
        self.exchange(channel).declare()
        self.dead_letter(channel).declare()
        return [consumer(queues=[self.queue], on_message=self.on_message, prefetch_count=16)]

    def on_message(self, message: Any) -> None:
        try:
            envelope = json.loads(message.body)
        except (ValueError, TypeError) as exc:
            self._dead_letter(message, f"not JSON: {exc}")
            return
        event_id = envelope.get("id") if isinstance(envelope, dict) else None
        if isinstance(event_id, str) and event_id in self._seen:
            logger.info("event %s already handled: acknowledged again", event_id)
            message.ack()
            return
        try:
            plan = invalidation_plan(envelope, self.events, self.settings.key_prefix)
            if plan is not None:
                self._invalidate(envelope, *plan)
        except BadEvent as exc:
            self._dead_letter(message, str(exc))
            return
        except (StoreUnavailable, OSError) as exc:
            logger.warning("store unavailable handling %s (%s): requeued", event_id, exc)
            time.sleep(self.requeue_pause)
            message.requeue()
            return
        assert isinstance(event_id, str)
        self._seen[event_id] = None
        while len(self._seen) > self.events.consume.dedupe_size:
            self._seen.popitem(last=False)
        self.handled += 1
        message.ack()

    def _invalidate(
        self,
        envelope: Mapping[str, Any],
        patterns: list[str],
        indexes: list[str],
        described: dict[str, list[str]],
    ) -> None:
        count = 0
        for pattern in patterns:
            count += self.store.delete_matching(pattern)
        for index in indexes:
            count += self.store.delete_index(index)
        if indexes:
            self.store.delete(*indexes)
        if self.sink is not None:
            reason = "user_updated" if envelope["type"] == "user.updated" else "data_updated"
            self.sink.emit(
                "cache.invalidated",
                {
                    "reason": reason,
                    "venue": None,
                    "patterns": described["patterns"],
                    "tags": described["tags"],
                    "count": count,
                    "source_event_id": envelope["id"],
                },
            )

    def _dead_letter(self, message: Any, reason: str) -> None:
        # The reason and where the message came from, never its body (it may be large, or hold
        # what the log must not).
        logger.warning(
            "dead-lettered a message (routing key %s, event id %s) to %s: %s",
            (message.delivery_info or {}).get("routing_key", "?"),
            _event_id(message.body),
            self.dead_letter.name,
            reason,
        )
        producer = _kombu.Producer(message.channel)
        producer.publish(
            message.body,
            exchange="",
            routing_key=self.dead_letter.name,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            headers={**(message.headers or {}), "x-error": reason[:500]},
            delivery_mode=2,
        )
        self.dead_lettered += 1
        message.ack()


def _bound_waits(conn: Any, seconds: float) -> None:
    """Give the AMQP socket a timeout, so a wait for a reply the broker never sends ends with
    `socket.timeout` (a connection error) after `seconds`. Reads for messages set their own
    timeout (kombu's `safety_interval`) and restore this one; transports without a socket
    (`memory://`) have nothing to bound."""
    transport = getattr(getattr(conn, "connection", None), "transport", None)
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)


def _event_id(body: Any) -> str:
    """The `id` of a message body when it is an envelope with a short string id, else "?"."""
    try:
        envelope = json.loads(body)
    except (ValueError, TypeError):
        return "?"
    event_id = envelope.get("id") if isinstance(envelope, dict) else None
    return event_id if isinstance(event_id, str) and 0 < len(event_id) <= 100 else "?"


def load_consumer_config(config_path: str | os.PathLike[str]) -> tuple[Settings, EventsSettings]:
    """The cache settings and the `events:` settings of one YAML file."""
    from ..config import _read_yaml, _Validator

    path = Path(config_path)
    data = _read_yaml(path)
    events = load_events_config(path)
    rest = {k: v for k, v in data.items() if k != "events"}
    return _Validator(path.name).settings(rest), events


def run_consumer(
    config_path: str | os.PathLike[str], *, stop: threading.Event | None = None
) -> None:
    """Run the invalidation worker of a config file until interrupted (Ctrl-C / SIGTERM as
    KeyboardInterrupt), or until `stop` is set. The invalidations it does are published as
    `cache.invalidated` through the process's sink (events/process_sink.py); with
    `events.report_expired` it also reports the entries Redis expires (events/expiry.py).

    It logs on `cache_middleware.events`: "connected to <broker>" (INFO); each broker fault (a
    lost or dropped connection, a stall found by the `events.heartbeat` heartbeats or by a
    reply not coming within `connect_timeout`, an unreachable broker) once, at WARNING, its
    retries at DEBUG, and "reconnected to <broker>" (INFO) when it consumes again; each
    dead-lettered message (WARNING, with its reason)."""
    from ..storage.factory import make_sync_store
    from .expiry import ExpiryReporter
    from .process_sink import flush_process_sinks, sink_for

    settings, events = load_consumer_config(config_path)
    if not settings.uses_redis:
        logger.warning(
            "%s: the cache is the in-process memory store: this worker invalidates its own "
            "memory, not the app's; set events.consume.in_process: true to consume in the app "
            "processes instead",
            settings.source,
        )
    store = make_sync_store(settings)
    sink = sink_for(events)
    reporter = ExpiryReporter(settings, events, sink).start() if events.report_expired else None
    connection = _kombu.Connection(
        events.broker_url, heartbeat=events.heartbeat, connect_timeout=events.connect_timeout
    )
    try:
        worker = InvalidationWorker(connection, events, settings, store, sink)
        if stop is not None:
            threading.Thread(
                target=_stop_when_set, args=(stop, worker), name="consumer-stop", daemon=True
            ).start()
        logger.info("invalidation worker: connecting to %s", worker.broker)
        # The loop wakes this often while idle to see `stop` and to send and check heartbeats
        # (twice per heartbeat, so the broker never misses one of ours).
        wake = min(0.25 if stop is not None else 1.0, events.heartbeat / 2)
        worker.run(safety_interval=wake)
    except KeyboardInterrupt:
        logger.info("invalidation worker stopping")
    finally:
        if reporter is not None:
            reporter.stop(2)
        flush_process_sinks(5)
        store.close()
        connection.release()


def _stop_when_set(stop: threading.Event, worker: InvalidationWorker) -> None:
    stop.wait()
    worker.should_stop = True
