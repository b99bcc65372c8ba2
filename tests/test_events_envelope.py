"""Envelopes of the Kombu event bridge: shape, per-type data, flood control, configuration."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

jsonschema = (
    importlib.import_module("jsonschema")
    if os.environ.get("CI")
    else pytest.importorskip("jsonschema")
)

from cache_middleware.errors import ConfigError  # noqa: E402
from cache_middleware.events.envelope import (  # noqa: E402
    EVENT_TYPES,
    build_envelopes,
    load_events_config,
    load_schema,
)

TENANT = "123e4567-e89b-12d3-a456-426614174000"
ORG = "123e4567-e89b-12d3-a456-426614174001"
VENUE_TENANT = "00000000-0000-4000-8000-00000000000a"
VENUE_ORG = "00000000-0000-4000-8000-00000000000b"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# What the admin sub-app hands the sink (cache_middleware/admin/app.py).
ADMIN_DATA: dict[str, dict[str, Any]] = {
    "cache.invalidated": {
        "reason": "manual",
        "venue": None,
        "patterns": ["gateway:response:GET:/api/events*"],
        "paths": ["/api/products/*"],
        "tags": ["product:42"],
        "keys": ["gateway:response:GET:/api/me:user:alice"],
        "count": 7,
    },
    "cache.warmed": {"venue": None, "paths": ["/a", "/b"], "warmed": 1, "failed": 1},
    "cache.cleared": {"venue": None, "prefix": "gateway:response", "count": 12},
    "cache.optimized": {
        "prefix": "gateway:response",
        "orphaned_index_members": 3,
        "unrouted_entries": 1,
        "oversized_entries": 0,
        "bytes_reclaimed": 4096,
    },
}


def settings(**extra: Any) -> Any:
    return load_events_config({"tenant_id": TENANT, "organization_id": ORG, **extra})


def validate(envelope: dict[str, Any]) -> None:
    """Against the shipped schema, formats (uuid, date-time) checked; plus what JSON Schema
    cannot say: the id is a version-4 UUID and the timestamp is UTC with a Z."""
    schema = load_schema(envelope["type"])
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    validator.validate(envelope)
    assert uuid.UUID(envelope["id"]).version == 4
    assert TIMESTAMP.match(envelope["timestamp"]), envelope["timestamp"]
    moment = dt.datetime.strptime(envelope["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert abs((now - moment).total_seconds()) < 60


def test_format_checking_is_active() -> None:
    """A schema run without format checks would pass anything: make sure ours rejects."""
    (good,) = build_envelopes("cache.cleared", ADMIN_DATA["cache.cleared"], settings())
    validate(good)
    for field, value in (("tenantId", "acme"), ("timestamp", "yesterday"), ("id", "x")):
        bad = {**good, field: value}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(
                load_schema("cache.cleared"), format_checker=jsonschema.FormatChecker()
            ).validate(bad)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_builds_a_valid_envelope(event_type: str) -> None:
    envelopes = build_envelopes(event_type, ADMIN_DATA[event_type], settings())
    assert envelopes
    for envelope in envelopes:
        validate(envelope)
        assert envelope["type"] == event_type
        assert envelope["version"] == "1.0"
        assert envelope["tenantId"] == TENANT
        assert envelope["source"] == {"service": "cache-management"}
        assert envelope["data"]["organizationId"] == ORG
        json.dumps(envelope)  # JSON all the way down


def test_data_per_type() -> None:
    s = settings()
    (warmed,) = build_envelopes("cache.warmed", ADMIN_DATA["cache.warmed"], s)
    assert warmed["data"] == {
        "organizationId": ORG,
        "venue": None,
        "paths": ["/a", "/b"],
        "warmed": 1,
        "failed": 1,
    }
    (cleared,) = build_envelopes("cache.cleared", ADMIN_DATA["cache.cleared"], s)
    assert cleared["data"] == {
        "organizationId": ORG,
        "venue": None,
        "prefix": "gateway:response",
        "count": 12,
    }
    (optimized,) = build_envelopes("cache.optimized", ADMIN_DATA["cache.optimized"], s)
    assert optimized["data"] == {
        "organizationId": ORG,
        "prefix": "gateway:response",
        "orphanedIndexMembers": 3,
        "unroutedEntries": 1,
        "oversizedEntries": 0,
        "bytesReclaimed": 4096,
    }


def test_invalidated_one_event_per_selector() -> None:
    envelopes = build_envelopes("cache.invalidated", ADMIN_DATA["cache.invalidated"], settings())
    keys = [(e["data"]["selector"], e["data"]["cacheKey"]) for e in envelopes]
    assert keys == [
        ("pattern", "gateway:response:GET:/api/events*"),
        ("path", "path:/api/products/*"),
        ("tag", "tag:product:42"),
        ("key", "gateway:response:GET:/api/me:user:alice"),
    ]
    assert {e["data"]["reason"] for e in envelopes} == {"manual"}
    assert {e["data"]["count"] for e in envelopes} == {7}
    assert len({e["data"]["correlationId"] for e in envelopes}) == 1
    assert len({e["id"] for e in envelopes}) == 4


def test_invalidated_flood_is_capped_with_one_summary() -> None:
    keys = [f"gateway:response:GET:/item/{i}" for i in range(50)]
    data = {
        "reason": "data_updated",
        "venue": None,
        "tags": ["t1", "t2"],
        "keys": keys,
        "count": 52,
    }
    envelopes = build_envelopes("cache.invalidated", data, settings(max_events_per_invalidation=20))
    assert len(envelopes) == 21
    for envelope in envelopes:
        validate(envelope)
    summary = envelopes[-1]["data"]
    assert summary["summary"] is True and summary["selector"] == "summary"
    assert summary["cacheKey"] == "summary:32 more selectors"
    assert summary["omitted"] == {"patterns": 0, "paths": 0, "tags": 0, "keys": 32}
    assert summary["reason"] == "data_updated"
    assert all("summary" not in e["data"] for e in envelopes[:-1])
    assert len({e["data"]["correlationId"] for e in envelopes}) == 1


def test_reason_is_one_of_the_documented() -> None:
    data = {**ADMIN_DATA["cache.invalidated"], "reason": "because"}
    for envelope in build_envelopes("cache.invalidated", data, settings()):
        assert envelope["data"]["reason"] == "manual"
    for reason in ("user_updated", "expired"):
        data = {**ADMIN_DATA["cache.invalidated"], "reason": reason}
        (first, *_) = build_envelopes("cache.invalidated", data, settings())
        assert first["data"]["reason"] == reason


def test_seed_example_validates_against_the_shipped_schema() -> None:
    example = {
        "id": "550e8400-e29b-41d4-a716-446655440000",
        "type": "cache.invalidated",
        "version": "1.0",
        "timestamp": "2026-01-23T10:00:00Z",
        "tenantId": "123e4567-e89b-12d3-a456-426614174000",
        "source": {"service": "cache-management"},
        "data": {
            "cacheKey": "user:123:profile",
            "organizationId": "123e4567-e89b-12d3-a456-426614174000",
            "reason": "data_updated",
        },
    }
    jsonschema.Draft7Validator(
        load_schema("cache.invalidated"), format_checker=jsonschema.FormatChecker()
    ).validate(example)


def test_venue_mapping_picks_the_venues_ids() -> None:
    s = settings(venues={"arena": {"tenant_id": VENUE_TENANT, "organization_id": VENUE_ORG}})
    (cleared,) = build_envelopes(
        "cache.cleared", {**ADMIN_DATA["cache.cleared"], "venue": "arena"}, s
    )
    assert cleared["tenantId"] == VENUE_TENANT
    assert cleared["data"]["organizationId"] == VENUE_ORG
    assert cleared["data"]["venue"] == "arena"
    (other,) = build_envelopes("cache.cleared", {**ADMIN_DATA["cache.cleared"], "venue": "x"}, s)
    assert other["tenantId"] == TENANT


def test_unknown_type_raises() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        build_envelopes("cache.exploded", {}, settings())
    with pytest.raises(ValueError):
        load_schema("cache.exploded")


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"organization_id": ORG}, "<dict>: events.tenant_id: is required"),
        ({"tenant_id": "acme", "organization_id": ORG}, "events.tenant_id: must be a UUID"),
        (
            {"tenant_id": TENANT, "organization_id": ORG, "tennant": 1},
            "events.tennant: unknown field",
        ),
        (
            {"tenant_id": TENANT, "organization_id": ORG, "venues": {"a": {"tenant_id": "no"}}},
            "events.venues.a.tenant_id: must be a UUID, got 'no'",
        ),
        (
            {"tenant_id": TENANT, "organization_id": ORG, "buffer_size": 0},
            "events.buffer_size: must be a positive integer",
        ),
        (
            {"tenant_id": TENANT, "organization_id": ORG, "publish_retry": {"max_retries": -1}},
            "events.publish_retry.max_retries",
        ),
        (
            {"tenant_id": TENANT, "organization_id": ORG, "reconnect_max": "5"},
            "events.reconnect_max: must be a number of seconds",
        ),
        (
            {
                "tenant_id": TENANT,
                "organization_id": ORG,
                "consume": {"entities": {"product": {}}},
            },
            "events.consume.entities.product: names no tags and no paths",
        ),
    ],
)
def test_config_errors_name_the_field(events: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_events_config({"events": events})
    assert message in str(info.value)


def test_config_from_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_TENANT", TENANT)
    path = tmp_path / "cache.yaml"
    path.write_text(
        "routes: {/api/x: {ttl: 5}}\n"
        "events:\n"
        "  tenant_id: ${EVENTS_TENANT}\n"
        f"  organization_id: '{ORG.upper()}'\n"
        "  broker_url: ${BROKER:-memory://}\n"
        "  publish_retry: {max_retries: 5, interval_max: 2}\n"
        "  consume:\n"
        "    entities:\n"
        "      product: {tags: ['product:{id}'], paths: ['/api/products/{id}']}\n"
    )
    s = load_events_config(path)
    assert s.tenant_id == TENANT and s.organization_id == ORG  # canonical lower-case
    assert s.broker_url == "memory://"
    assert s.retry.as_kombu()["max_retries"] == 5
    rule = s.consume.rule("product")
    assert rule is not None and rule.tags == ("product:{id}",)
    path.write_text("events:\n  tenant_id: x\n  tenant_id: y\n")
    with pytest.raises(ConfigError, match=r"cache\.yaml: line 3: duplicate key"):
        load_events_config(path)
    path.write_text(f"events:\n  tenant_id: {TENANT}\n  organization_id: nope\n")
    with pytest.raises(ConfigError, match=r"^cache\.yaml: events\.organization_id: must be a UUID"):
        load_events_config(path)
    path.write_text("routes: {}\n")
    with pytest.raises(ConfigError, match="events: is required"):
        load_events_config(path)
