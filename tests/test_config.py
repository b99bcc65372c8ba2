"""Config: strict YAML and dict validation, with messages naming file, route and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cache_middleware import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cache.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_contract_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    monkeypatch.setenv("CACHE_ADMIN_TOKEN", "s3cret")
    settings = load_config(
        write(
            tmp_path,
            """
redis_url: redis://127.0.0.1:6379/0
key_prefix: gateway:response
venue_header: X-Venue-Id
user_header: X-User-Id
max_body_bytes: 1048576
routes:
  /api/events: {ttl: 600}
  /api/venues: {ttl: 1800}
  /api/tickets/availability: {ttl: 30}
  /api/search: {ttl: 300, vary_by: [q, category]}
  /api/me: {ttl: 3600, private: true}
  /api/reports: {ttl: 60, condition: "tests.helpers.conditions:only_without_nocache"}
admin:
  token: ${CACHE_ADMIN_TOKEN}
""",
        )
    )
    assert settings.source == "cache.yaml"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert [r.path for r in settings.routes][:2] == ["/api/events", "/api/venues"]
    search = next(r for r in settings.routes if r.path == "/api/search")
    assert search.vary_by == ("q", "category")
    assert next(r for r in settings.routes if r.path == "/api/me").private
    assert settings.admin.token == "s3cret"
    reports = next(r for r in settings.routes if r.path == "/api/reports")
    assert reports.condition_func is not None


def test_env_redis_url_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_REDIS_URL", "redis://other:6379/3")
    assert load_config({"redis_url": "redis://a/0"}).redis_url == "redis://other:6379/3"
    monkeypatch.delenv("CACHE_REDIS_URL")
    assert load_config({}).redis_url is None
    assert not load_config({"redis_url": "memory://"}).uses_redis


def test_env_default_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    assert load_config({"admin": {"token": "${NOPE_TOKEN:-fallback}"}}).admin.token == "fallback"
    with pytest.raises(ConfigError, match=r"^<dict>: admin.token: environment variable NOPE_TOKEN"):
        load_config({"admin": {"token": "${NOPE_TOKEN}"}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"routes": {"/api/search": {"ttl": -5}}},
            "<dict>: routes./api/search.ttl: must be a positive integer, got -5",
        ),
        (
            {"routes": {"/api/search": {"ttl": "60"}}},
            "<dict>: routes./api/search.ttl: must be a positive integer, got '60'",
        ),
        (
            {"routes": {"/api/search": {"ttl": True}}},
            "<dict>: routes./api/search.ttl: must be a positive integer, got True",
        ),
        ({"routes": {"/api/search": {}}}, "<dict>: routes./api/search.ttl: is required"),
        (
            {"routes": {"/api/search": {"tll": 5, "ttl": 5}}},
            "<dict>: routes./api/search.tll: unknown field",
        ),
        ({"routez": {}}, "<dict>: routez: unknown field"),
        ({"routes": {"api/x": {"ttl": 5}}}, "<dict>: routes.api/x: a route must be a path"),
        ({"routes": {"/api/*": {"ttl": 5}}}, "<dict>: routes./api/*: a route is a plain path"),
        ({"routes": {"/a//b": {"ttl": 5}}}, "<dict>: routes./a//b: a route must not contain"),
        ({"routes": {"/a/x{id}": {"ttl": 5}}}, "<dict>: routes./a/x{id}: placeholder"),
        (
            {"routes": {"/a/{id}/{id}": {"ttl": 5}}},
            "<dict>: routes./a/{id}/{id}: placeholder {id} appears twice",
        ),
        (
            {"routes": {"/a": {"ttl": 5, "vary_by": "q"}}},
            "<dict>: routes./a.vary_by: must be a list",
        ),
        (
            {"routes": {"/a": {"ttl": 5, "vary_by": ["q", "q"]}}},
            "<dict>: routes./a.vary_by: lists a parameter twice",
        ),
        (
            {"routes": {"/a": {"ttl": 5, "private": "yes"}}},
            "<dict>: routes./a.private: must be true or false",
        ),
        ({"routes": {"/a": 5}}, "<dict>: routes./a: must be a mapping"),
        (
            {"routes": {"/a": {"ttl": 5, "condition": "nomodule_xyz:f"}}},
            "<dict>: routes./a.condition: cannot import",
        ),
        (
            {"routes": {"/a": {"ttl": 5, "condition": "tests.helpers.conditions"}}},
            "<dict>: routes./a.condition: must be an import string",
        ),
        (
            {"routes": {"/a": {"ttl": 5, "condition": "tests.helpers.conditions:NOT_CALLABLE"}}},
            "is not callable",
        ),
        ({"routes": [{"/a": 5}]}, "<dict>: routes: must be a mapping"),
        ({"redis_url": "http://x"}, "<dict>: redis_url: must be a redis://, rediss://, unix://"),
        ({"key_prefix": "a*b"}, "<dict>: key_prefix: must not contain glob"),
        ({"venue_header": "X Venue"}, "<dict>: venue_header: must be an HTTP header name"),
        ({"max_body_bytes": 0}, "<dict>: max_body_bytes: must be a positive integer, got 0"),
        ({"redis_timeout": 0}, "<dict>: redis_timeout: must be a number of seconds"),
        ({"expose_key_header": 1}, "<dict>: expose_key_header: must be true or false"),
        ({"admin": {"tokn": "x"}}, "<dict>: admin.tokn: unknown field"),
    ],
)
def test_bad_dict_config(
    config: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(message) or message in str(info.value)


def test_issue_example_message(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  /api/search: {ttl: -5, vary_by: [q]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == "cache.yaml: routes./api/search.ttl: must be a positive integer, got -5"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "routes:\n  /a: {ttl: 5}\n  /a: {ttl: 6}\n",
            "cache.yaml: line 3: duplicate key '/a' (first at line 2)",
        ),
        ("routes:\n  /a: {ttl: 5, ttl: 6}\n", "cache.yaml: line 2: duplicate key 'ttl'"),
        ("key_prefix: a\nkey_prefix: b\n", "cache.yaml: line 2: duplicate key 'key_prefix'"),
        (
            "routes:\n  /a: !!python/object:os.system {ttl: 5}\n",
            "cache.yaml: line 2: YAML tags are not allowed",
        ),
        ("routes:\n  /a: {ttl: !!str 5}\n", "cache.yaml: line 2: YAML tags are not allowed"),
        ("routes:\n  /a: {ttl: 5\n", "cache.yaml: line 3: invalid YAML"),
        ("- 1\n- 2\n", "cache.yaml: the top level must be a mapping, got list"),
        ("routes:\n  /a: {tll: 5}\n", "cache.yaml: routes./a.tll: unknown field"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(message)


def test_missing_file_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="config must be a path, a dict or Settings"):
        load_config(42)  # type: ignore[arg-type]


def test_empty_file_means_no_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    settings = load_config(write(tmp_path, ""))
    assert settings.routes == ()
    assert load_config(settings) is settings
