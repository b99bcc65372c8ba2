"""Event envelopes of `seeds/cache-management-events.md`, and the `events:` configuration.

An envelope::

    {"id": "<uuid4>", "type": "cache.invalidated", "version": "1.0",
     "timestamp": "2026-01-23T10:00:00.123Z", "tenantId": "<uuid>",
     "source": {"service": "cache-management"}, "data": {...}}

`data` per type is documented in docs/events.md and pinned by the draft-07 JSON Schemas shipped in
`cache_middleware/events/schemas/<type>.json`.

The configuration is an `events:` mapping, validated as strictly as `config.py` validates the
cache's own (unknown fields, wrong types and malformed UUIDs are a `ConfigError` naming the source
and the field, e.g. ``events.yaml: events.tenant_id: must be a UUID, got 'acme'``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "DEFAULT_EXCHANGE",
    "EVENT_TYPES",
    "INVALIDATION_REASONS",
    "ConsumeSettings",
    "EntityRule",
    "EventsSettings",
    "RetryPolicy",
    "build_envelopes",
    "load_events_config",
    "load_schema",
    "make_envelope",
]

VERSION = "1.0"
SOURCE_SERVICE = "cache-management"
DEFAULT_EXCHANGE = "coder.events"
EVENT_TYPES = ("cache.invalidated", "cache.warmed", "cache.cleared", "cache.optimized")
# `write`: a successful POST/PUT/PATCH/DELETE on a cached route dropped the path's entries.
INVALIDATION_REASONS = ("manual", "data_updated", "user_updated", "expired", "write")
SELECTOR_KINDS = ("patterns", "paths", "tags", "keys")
# The `cacheKey` of one selector: a key glob and an exact key are given as they are, a path glob
# and a tag with a prefix saying what they are.
_DESCRIBE = {"patterns": "{}", "paths": "path:{}", "tags": "tag:{}", "keys": "{}"}
_SINGULAR = {"patterns": "pattern", "paths": "path", "tags": "tag", "keys": "key"}


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """kombu's retry policy for one publish (`Producer.publish(retry_policy=...)`)."""

    max_retries: int = 2
    interval_start: float = 0.0
    interval_step: float = 0.2
    interval_max: float = 1.0

    def as_kombu(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "interval_start": self.interval_start,
            "interval_step": self.interval_step,
            "interval_max": self.interval_max,
        }


@dataclass(frozen=True)
class EntityRule:
    """What a `data.updated` of one entity type invalidates: tag templates and path-glob
    templates, where `{name}` is replaced by the event's `data.<name>` (glob-escaped)."""

    tags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsumeSettings:
    queue: str = "cache-management.invalidations"
    dead_letter_queue: str = "cache-management.invalidations.dead"
    routing_keys: tuple[str, ...] = ("data.updated", "user.updated")
    # entity type -> rule; `user` is used for user.updated
    entities: tuple[tuple[str, EntityRule], ...] = ()
    dedupe_size: int = 10_000
    # Consume in every app process (a daemon thread next to the middleware) instead of, or as
    # well as, a separate `cache-middleware events consume` worker (events/in_process.py).
    in_process: bool = False

    def rule(self, entity: str) -> EntityRule | None:
        return dict(self.entities).get(entity)


@dataclass(frozen=True)
class EventsSettings:
    tenant_id: str
    organization_id: str
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    exchange: str = DEFAULT_EXCHANGE
    # venue -> (tenant_id, organization_id)
    venues: tuple[tuple[str, tuple[str, str]], ...] = ()
    buffer_size: int = 10_000
    max_events_per_invalidation: int = 20
    connect_timeout: float = 2.0
    reconnect_max: float = 5.0  # seconds between reconnection attempts, at most
    # Seconds between AMQP heartbeats (the invalidation worker, the in-process consumer and the
    # publisher): a broker that stops answering
    # (a stall) is found within about two of them. Whole seconds: AMQP negotiates an integer.
    heartbeat: int = 10
    retry: RetryPolicy = RetryPolicy()
    consume: ConsumeSettings = ConsumeSettings()
    # Report entries Redis expired as `cache.invalidated` with reason `expired` (events/expiry.py).
    report_expired: bool = False
    source: str = field(default="<dict>", compare=False)

    def ids_for(self, venue: str | None) -> tuple[str, str]:
        """(tenantId, organizationId) of a venue: its own mapping, else the defaults."""
        if venue is not None:
            for name, ids in self.venues:
                if name == venue:
                    return ids
        return self.tenant_id, self.organization_id


_TOP = {
    "broker_url",
    "exchange",
    "tenant_id",
    "organization_id",
    "venues",
    "buffer_size",
    "max_events_per_invalidation",
    "connect_timeout",
    "reconnect_max",
    "heartbeat",
    "publish_retry",
    "consume",
    "report_expired",
}
_VENUE = {"tenant_id", "organization_id"}
_RETRY = {"max_retries", "interval_start", "interval_step", "interval_max"}
_CONSUME = {"queue", "dead_letter_queue", "entities", "dedupe_size", "in_process"}
_ENTITY = {"tags", "paths"}


class _Check:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(self, where: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a mapping, got {value!r}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(
                    f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})"
                )
        return value

    def string(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return _expand(self, where, value)

    def uuid(self, where: str, value: Any) -> str:
        text = self.string(where, value)
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            raise self.fail(where, f"must be a UUID, got {text!r}") from None
        return str(parsed)

    def positive_int(self, where: str, value: Any) -> int:
        if type(value) is not int or value <= 0:
            raise self.fail(where, f"must be a positive integer, got {value!r}")
        return value

    def non_negative_int(self, where: str, value: Any) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(where, f"must be an integer >= 0, got {value!r}")
        return value

    def seconds(self, where: str, value: Any, *, zero: bool = False, high: float = 300) -> float:
        number = type(value) in (int, float)
        if not number or not (value >= 0 if zero else value > 0) or value > high:
            bound = "[0" if zero else "(0"
            raise self.fail(
                where, f"must be a number of seconds in {bound}, {high:g}], got {value!r}"
            )
        return float(value)

    def boolean(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {value!r}")
        return value

    def templates(self, where: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)


def _expand(check: _Check, where: str, value: str) -> str:
    import re

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        got = os.environ.get(name)
        if not got:
            if default is not None:
                return default
            if got is None:
                raise check.fail(where, f"environment variable {name} is not set")
        return got or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", replace, value)


def _settings(check: _Check, raw: Any) -> EventsSettings:
    spec = check.mapping("events", raw, _TOP)
    for required in ("tenant_id", "organization_id"):
        if required not in spec:
            raise check.fail(f"events.{required}", "is required (a UUID)")
    kwargs: dict[str, Any] = {
        "tenant_id": check.uuid("events.tenant_id", spec["tenant_id"]),
        "organization_id": check.uuid("events.organization_id", spec["organization_id"]),
        "source": check.source,
    }
    if "broker_url" in spec:
        kwargs["broker_url"] = check.string("events.broker_url", spec["broker_url"])
    if "exchange" in spec:
        kwargs["exchange"] = check.string("events.exchange", spec["exchange"])
    for name in ("buffer_size", "max_events_per_invalidation"):
        if name in spec:
            kwargs[name] = check.positive_int(f"events.{name}", spec[name])
    if "connect_timeout" in spec:
        kwargs["connect_timeout"] = check.seconds("events.connect_timeout", spec["connect_timeout"])
    if "reconnect_max" in spec:
        kwargs["reconnect_max"] = check.seconds("events.reconnect_max", spec["reconnect_max"])
    if "heartbeat" in spec:
        heartbeat = check.positive_int("events.heartbeat", spec["heartbeat"])
        if heartbeat > 600:
            raise check.fail("events.heartbeat", f"must be at most 600 seconds, got {heartbeat}")
        kwargs["heartbeat"] = heartbeat
    if "venues" in spec:
        venues_raw = spec["venues"]
        if not isinstance(venues_raw, Mapping):
            raise check.fail("events.venues", f"must be a mapping venue -> ids, got {venues_raw!r}")
        venues: list[tuple[str, tuple[str, str]]] = []
        for venue, ids in venues_raw.items():
            where = f"events.venues.{venue}"
            if not isinstance(venue, str) or not venue:
                raise check.fail(where, "a venue must be a non-empty string")
            ids = check.mapping(where, ids, _VENUE)
            tenant = check.uuid(f"{where}.tenant_id", ids.get("tenant_id", kwargs["tenant_id"]))
            org = check.uuid(
                f"{where}.organization_id", ids.get("organization_id", kwargs["organization_id"])
            )
            venues.append((venue, (tenant, org)))
        kwargs["venues"] = tuple(venues)
    if "publish_retry" in spec:
        r = check.mapping("events.publish_retry", spec["publish_retry"], _RETRY)
        retry = RetryPolicy()
        kwargs["retry"] = RetryPolicy(
            max_retries=check.non_negative_int(
                "events.publish_retry.max_retries", r.get("max_retries", retry.max_retries)
            ),
            interval_start=check.seconds(
                "events.publish_retry.interval_start",
                r.get("interval_start", retry.interval_start),
                zero=True,
                high=60,
            ),
            interval_step=check.seconds(
                "events.publish_retry.interval_step",
                r.get("interval_step", retry.interval_step),
                zero=True,
                high=60,
            ),
            interval_max=check.seconds(
                "events.publish_retry.interval_max",
                r.get("interval_max", retry.interval_max),
                zero=True,
                high=60,
            ),
        )
    if "consume" in spec:
        kwargs["consume"] = _consume(check, spec["consume"])
    if "report_expired" in spec:
        kwargs["report_expired"] = check.boolean("events.report_expired", spec["report_expired"])
    return EventsSettings(**kwargs)


def _consume(check: _Check, raw: Any) -> ConsumeSettings:
    spec = check.mapping("events.consume", raw, _CONSUME)
    defaults = ConsumeSettings()
    entities: list[tuple[str, EntityRule]] = []
    ents = spec.get("entities", {})
    if not isinstance(ents, Mapping):
        raise check.fail("events.consume.entities", f"must be a mapping, got {ents!r}")
    for entity, rule in ents.items():
        where = f"events.consume.entities.{entity}"
        if not isinstance(entity, str) or not entity:
            raise check.fail(where, "an entity type must be a non-empty string")
        rule = check.mapping(where, rule, _ENTITY)
        tags = check.templates(f"{where}.tags", rule.get("tags", []))
        paths = check.templates(f"{where}.paths", rule.get("paths", []))
        for path in paths:
            if not path.startswith("/"):
                raise check.fail(f"{where}.paths", f"a path glob starts with '/', got {path!r}")
        if not tags and not paths:
            raise check.fail(where, "names no tags and no paths: nothing to invalidate")
        entities.append((entity, EntityRule(tags=tags, paths=paths)))
    return ConsumeSettings(
        queue=check.string("events.consume.queue", spec.get("queue", defaults.queue)),
        dead_letter_queue=check.string(
            "events.consume.dead_letter_queue",
            spec.get("dead_letter_queue", defaults.dead_letter_queue),
        ),
        entities=tuple(entities),
        dedupe_size=check.positive_int(
            "events.consume.dedupe_size", spec.get("dedupe_size", defaults.dedupe_size)
        ),
        in_process=check.boolean(
            "events.consume.in_process", spec.get("in_process", defaults.in_process)
        ),
    )


def load_events_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | EventsSettings,
) -> EventsSettings:
    """Validate the `events:` configuration.

    A path is a YAML file (read with the package's strict loader: no duplicate keys, no tags)
    whose top-level `events:` mapping is the configuration; other top-level keys are the cache's
    own and are ignored here. A mapping is either `{"events": {...}}` or the `events` mapping
    itself.
    """
    if isinstance(config, EventsSettings):
        return config
    if isinstance(config, Mapping):
        check = _Check("<dict>")
        raw: Any = config.get("events", config)
        return _settings(check, raw)
    if isinstance(config, (str, os.PathLike)):
        from ..config import _read_yaml

        path = Path(config)
        data = _read_yaml(path)
        check = _Check(path.name)
        if not isinstance(data, Mapping) or "events" not in data:
            raise ConfigError(f"{path.name}: events: is required (a mapping)")
        return _settings(check, data["events"])
    raise ConfigError(f"events config must be a path or a dict, got {type(config).__name__}")


# -- envelopes ----------------------------------------------------------------------------------


def _now() -> str:
    moment = _dt.datetime.now(_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_envelope(event_type: str, tenant_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": VERSION,
        "timestamp": _now(),
        "tenantId": tenant_id,
        "source": {"service": SOURCE_SERVICE},
        "data": data,
    }


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        return []
    return [str(v) for v in value]


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def build_envelopes(
    event_type: str, data: Mapping[str, Any], settings: EventsSettings
) -> list[dict[str, Any]]:
    """The envelopes one `EventSink.emit(event_type, data)` call publishes.

    `cache.invalidated` becomes one event per selector (pattern, path, tag, key), at most
    `settings.max_events_per_invalidation` of them; beyond, the rest is reported by one summary
    event (`cacheKey` "summary:<n> more selectors", `summary: true`, `omitted` counts per kind).
    All the events of one invalidation share a `correlationId` and carry its total `count`.
    """
    venue = data.get("venue")
    venue = venue if isinstance(venue, str) else None
    tenant_id, org_id = settings.ids_for(venue)
    if event_type == "cache.invalidated":
        return _invalidated(data, settings, venue, tenant_id, org_id)
    body: dict[str, Any]
    if event_type == "cache.warmed":
        body = {
            "organizationId": org_id,
            "venue": venue,
            "paths": _str_list(data.get("paths")),
            "warmed": _int(data.get("warmed")),
            "failed": _int(data.get("failed")),
        }
    elif event_type == "cache.cleared":
        body = {
            "organizationId": org_id,
            "venue": venue,
            "prefix": str(data.get("prefix", "")),
            "count": _int(data.get("count")),
        }
    elif event_type == "cache.optimized":
        body = {"organizationId": org_id, "prefix": str(data.get("prefix", ""))}
        for name in (
            "orphaned_index_members",
            "unrouted_entries",
            "oversized_entries",
            "bytes_reclaimed",
        ):
            body[_camel(name)] = _int(data.get(name))
    else:
        raise ValueError(f"unknown event type {event_type!r} (known: {', '.join(EVENT_TYPES)})")
    return [make_envelope(event_type, tenant_id, body)]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _invalidated(
    data: Mapping[str, Any],
    settings: EventsSettings,
    venue: str | None,
    tenant_id: str,
    org_id: str,
) -> list[dict[str, Any]]:
    reason = data.get("reason", "manual")
    if reason not in INVALIDATION_REASONS:
        reason = "manual"
    common = {
        "organizationId": org_id,
        "reason": reason,
        "venue": venue,
        "count": _int(data.get("count")),
        "correlationId": str(uuid.uuid4()),
    }
    source_event = data.get("source_event_id")
    if isinstance(source_event, str) and source_event:
        common["sourceEventId"] = source_event
    selectors = [(kind, value) for kind in SELECTOR_KINDS for value in _str_list(data.get(kind))]
    # Selectors the caller counted but did not list (a reporter that keeps memory bounded):
    # they can only be part of the summary.
    unlisted = data.get("unlisted")
    unlisted = unlisted if isinstance(unlisted, Mapping) else {}
    extra = {kind: _int(unlisted.get(kind)) for kind in SELECTOR_KINDS}
    limit = settings.max_events_per_invalidation
    out = [
        make_envelope(
            "cache.invalidated",
            tenant_id,
            {
                "cacheKey": _DESCRIBE[kind].format(value),
                "selector": _SINGULAR[kind],
                **common,
            },
        )
        for kind, value in selectors[:limit]
    ]
    rest = selectors[limit:]
    if rest or not selectors or any(extra.values()):
        omitted = {
            kind: sum(1 for k, _ in rest if k == kind) + extra[kind] for kind in SELECTOR_KINDS
        }
        more = sum(omitted.values())
        out.append(
            make_envelope(
                "cache.invalidated",
                tenant_id,
                {
                    "cacheKey": f"summary:{more} more selectors",
                    "selector": "summary",
                    "summary": True,
                    "omitted": omitted,
                    **common,
                },
            )
        )
    return out


def load_schema(event_type: str) -> dict[str, Any]:
    """The draft-07 JSON Schema of one event type's envelope."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    text = (
        resources.files(__package__).joinpath("schemas").joinpath(f"{event_type}.json")
    ).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
