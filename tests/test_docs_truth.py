"""The docs say what the code does: the configuration's field tables, their defaults and every
`ConfigError` message the docs quote are checked against the validator itself.

- docs/configuration.md's tables of top-level, route, `admin` and `near_cache` fields name
  exactly the fields the validator accepts. The accepted sets are read from the validator's own
  "unknown field (allowed: ...)" message, so a field added to config.py without a row in the
  docs fails here. The same holds for the `events:` example in docs/events.md against the event
  bridge's validator.
- Each table's Default column equals what `load_config` gives when the field is left out.
- Every ConfigError message quoted in the user-facing docs has a reproducer in `MESSAGES` below
  (the YAML, dict or call that produces it), and the validator produces exactly that message.
  A new quoted message without a reproducer fails, as does a reproducer whose message left the
  docs.
- Every YAML config block in the docs loads (or fails with the error its comment quotes), and
  so do the sample apps' and the demo's cache.yaml.
"""

from __future__ import annotations

import io
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cache_middleware import ConfigError, load_config
from cache_middleware.cli import main as cli_main
from cache_middleware.events.envelope import load_events_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
EVENTS = ROOT / "docs" / "events.md"
# The pages whose quoted ConfigError messages must be true.
MESSAGE_PAGES = [
    ROOT / "README.md",
    ROOT / "docs" / "configuration.md",
    ROOT / "docs" / "policy.md",
    ROOT / "docs" / "keys.md",
    ROOT / "docs" / "README.md",
    ROOT / "sample_apps" / "README.md",
]
# The pages whose ```yaml blocks must be valid configuration.
YAML_PAGES = [ROOT / "README.md", CONFIGURATION, ROOT / "docs" / "policy.md"]
SAMPLE_CONFIGS = [
    ROOT / "sample_apps" / "cache.yaml",
    ROOT / "cache_middleware" / "demo" / "cache.yaml",
]
# The names a quoted message starts with: a file, a dict, no config, a path as given.
_SOURCE = r"(?:cache\.yaml|<dict>|<default>|/path/to/cache\.yaml)"
_QUOTED = re.compile(rf"^(?:error: |ConfigError: )?{_SOURCE}: |^ConfigError: ")
_ALLOWED = re.compile(r"unknown field \(allowed: ([^)]*)\)$")
TENANT = "123e4567-e89b-12d3-a456-426614174000"


# -- reading the docs -------------------------------------------------------------------------


def split_fences(text: str) -> tuple[str, list[list[str]]]:
    """The prose of a page (fenced blocks removed) and the fenced blocks' lines. A fence may be
    indented (inside a list item)."""
    prose: list[str] = []
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
            continue
        if current is None:
            prose.append(line)
        else:
            current.append(line)
    return "\n".join(prose), blocks


def section(text: str, heading: str) -> str:
    """From `heading` (a whole line) to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = len(lines)
    for i in range(start + 1, len(lines)):
        hashes = len(lines[i]) - len(lines[i].lstrip("#"))
        if 0 < hashes <= level and lines[i][hashes : hashes + 1] == " ":
            end = i
            break
    return "\n".join(lines[start:end])


def first_table(text: str) -> list[dict[str, str]]:
    """The first markdown table of `text`, one dict per row keyed by the header cells."""
    block: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            block.append(line)
        elif block:
            break
    assert block, "no table"
    header = cells(block[0])
    return [dict(zip(header, cells(line), strict=True)) for line in block[2:]]


def cells(line: str) -> list[str]:
    # A `|` inside backticks is not a cell boundary (none occurs in the field tables).
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def field_name(cell: str) -> str:
    match = re.fullmatch(r"`([a-z_]+)`", cell)
    assert match, f"a field cell is one backticked name, got {cell!r}"
    return match.group(1)


def table_fields(heading: str) -> dict[str, dict[str, str]]:
    rows = first_table(section(CONFIGURATION.read_text(encoding="utf-8"), heading))
    return {field_name(row["Field"]): row for row in rows}


def comment_or_line(line: str) -> str:
    """A fenced line's `# ` comment if it has one (where YAML examples quote their error),
    else the line."""
    if line.lstrip().startswith("#") or " # " in line:
        return line.split("# ", 1)[1].strip()
    return line.strip()


def quoted_messages() -> set[str]:
    """Every ConfigError message quoted on the user-facing pages: inline code in prose, and
    lines (or `# ` comments) of fenced blocks, whitespace collapsed."""
    found: set[str] = set()
    for page in MESSAGE_PAGES:
        prose, blocks = split_fences(page.read_text(encoding="utf-8"))
        for match in re.finditer(r"`([^`]+)`", prose):
            text = " ".join(match.group(1).split())
            if _QUOTED.match(text):
                found.add(text)
        for block in blocks:
            for line in block:
                text = comment_or_line(line)
                if _QUOTED.match(text) and text != "cache.yaml: OK":
                    found.add(text)
    return found


# -- what the validator says ------------------------------------------------------------------


def config_error(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value)


def allowed_fields(call: Callable[[], object]) -> set[str]:
    """The field names the validator accepts at one level, from its unknown-field message."""
    match = _ALLOWED.search(config_error(call))
    assert match, "the validator no longer lists the allowed fields"
    return set(match.group(1).split(", "))


def events_with(**extra: Any) -> dict[str, Any]:
    return {"events": {"tenant_id": TENANT, "organization_id": TENANT, **extra}}


# -- the field tables -------------------------------------------------------------------------

ZZ = "zz_not_a_field"
FIELD_TABLES: dict[str, Callable[[], object]] = {
    "## Top-level fields": lambda: load_config({ZZ: 1}),
    "## Route fields": lambda: load_config({"routes": {"/a": {"ttl": 1, ZZ: 1}}}),
    "### `admin`": lambda: load_config({"admin": {ZZ: 1}}),
    "### `near_cache`": lambda: load_config({"near_cache": {ZZ: 1}}),
}


@pytest.mark.parametrize("heading", FIELD_TABLES)
def test_field_table_names_exactly_the_accepted_fields(heading: str) -> None:
    documented = set(table_fields(heading))
    accepted = allowed_fields(FIELD_TABLES[heading])
    assert documented - accepted == set(), f"{heading}: documented but refused"
    assert accepted - documented == set(), f"{heading}: accepted but not documented"


def events_example() -> dict[str, Any]:
    text = section(EVENTS.read_text(encoding="utf-8"), "## Configuration")
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/events.md: no YAML example under Configuration"
    example: dict[str, Any] = yaml.safe_load(block.group(1))["events"]
    return example


def test_events_example_names_every_events_field() -> None:
    """docs/events.md's example is its field reference: it names every field of every level."""
    example = events_example()
    consume = example["consume"]
    levels: list[tuple[str, set[str], Callable[[], object]]] = [
        ("events", set(example), lambda: load_events_config({"events": {ZZ: 1}})),
        (
            "events.publish_retry",
            set(example["publish_retry"]),
            lambda: load_events_config(events_with(publish_retry={ZZ: 1})),
        ),
        (
            "events.consume",
            set(consume),
            lambda: load_events_config(events_with(consume={ZZ: 1})),
        ),
        (
            "events.consume.entities.*",
            set().union(*(set(rule) for rule in consume["entities"].values())),
            lambda: load_events_config(events_with(consume={"entities": {"x": {ZZ: 1}}})),
        ),
        (
            "events.venues.*",
            set().union(*(set(ids) for ids in example["venues"].values())),
            lambda: load_events_config(events_with(venues={"x": {ZZ: 1}})),
        ),
    ]
    for where, documented, call in levels:
        assert documented == allowed_fields(call), where


# -- defaults ---------------------------------------------------------------------------------


def _route_defaults() -> object:
    return load_config({"routes": {"/a": {"ttl": 1}}}).routes[0]


DEFAULTS: dict[str, Callable[[], object]] = {
    "## Top-level fields": lambda: load_config({}),
    "## Route fields": _route_defaults,
    "### `admin`": lambda: load_config({}).admin,
    "### `near_cache`": lambda: load_config({"near_cache": {}}).near_cache,
}
# Fields the validator accepts but keeps elsewhere than in Settings.
NOT_IN_SETTINGS = {"events"}


def default_matches(cell: str, value: object) -> bool:
    """Whether the Default column's words say `value`: `absent` is None, `empty` an empty
    collection (or a settings object left at its own defaults), `required` has none, and a
    backticked literal is read as YAML."""
    words = cell.split(" ", 1)[0]
    if words == "required":
        return True  # checked by the "is required" message
    if words == "absent":
        return value is None
    if words == "empty":
        return value in ((), {}) or value == type(value)()
    literal = re.fullmatch(r"`([^`]+)`", cell.split(" (", 1)[0])
    assert literal, f"unreadable default {cell!r}"
    expected = yaml.safe_load(literal.group(1))
    if isinstance(expected, list):
        expected = tuple(expected)
    return bool(expected == value and type(expected) in (type(value), int))


@pytest.mark.parametrize("heading", DEFAULTS)
def test_documented_defaults_are_the_defaults(heading: str) -> None:
    settings = DEFAULTS[heading]()
    for name, row in table_fields(heading).items():
        if name in NOT_IN_SETTINGS:
            assert row["Default"].startswith("absent")
            continue
        value = getattr(settings, name)
        assert default_matches(row["Default"], value), (
            f"{heading}: {name} defaults to {value!r}, the docs say {row['Default']!r}"
        )


def test_the_required_route_field_is_required() -> None:
    required = {
        name for name, row in table_fields("## Route fields").items() if row["Required"] == "yes"
    }
    assert required == {"ttl"}
    message = config_error(lambda: load_config({"routes": {"/a": {"private": True}}}))
    assert message == "<dict>: routes./a.ttl: is required"


# -- quoted messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What produces a quoted message: `yaml` written to a file named cache.yaml (or `config`
    given as is), with `env` set; `cli` runs `cache-middleware check` and reads its stderr."""

    yaml: str | None = None
    config: Any = None
    env: dict[str, str] = field(default_factory=dict)
    cli: bool = False
    missing_file: bool = False


def _routes(spec: str) -> Case:
    return Case(yaml=f"routes:\n  {spec}\n")


ROUTE_FIELDS = (
    "cache_headers, condition, ignore_params, mode, negative_ttl, private, revalidate_window, "
    "stale_if_error, stale_while_revalidate, "
    "statuses, tags, ttl, vary_by"
)
TOP_FIELDS = (
    "admin, breaker_cooldown, breaker_failures, cache_headers, coalesce_wait, events, "
    "expose_key_header, "
    "honor_request_no_cache, key_host, key_prefix, lock_timeout, manager_namespaces, "
    "max_body_bytes, "
    "memory_max_bytes, mode, near_cache, redis_timeout, redis_url, revalidate_window, routes, "
    "slow_store_ms, targeted_fields, trusted_headers, user_header, venue_header"
)
STATUSES = "200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501"
SCHEMES = (
    "redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster://, "
    "rediss+cluster:// or memory://"
)

# Every quoted message, as the docs write it ("..." stands for any text), and its reproducer.
MESSAGES: dict[str, Case] = {
    "error: cache.yaml: routes./api/search.ttl: must be a positive integer, got -5": Case(
        yaml="routes:\n  /api/search: {ttl: -5}\n", cli=True
    ),
    "cache.yaml: routes./api/search.ttl: must be a positive integer, got -5": _routes(
        "/api/search: {ttl: -5}"
    ),
    f"cache.yaml: routes./api/events.tll: unknown field (allowed: {ROUTE_FIELDS})": _routes(
        "/api/events: {tll: 600}"
    ),
    f"<dict>: routes./a.tll: unknown field (allowed: {ROUTE_FIELDS})": Case(
        config={"routes": {"/a": {"tll": 60}}}
    ),
    "cache.yaml: routes./api/events.ttl: is required": _routes("/api/events: {private: true}"),
    "cache.yaml: routes./api/events.ttl: must be a positive integer, got '600'": _routes(
        "/api/events: {ttl: '600'}"
    ),
    "cache.yaml: routes./api/events.ttl: must be a positive integer, got True": _routes(
        "/api/events: {ttl: true}"
    ),
    "cache.yaml: routes./api/events.ttl: must be a positive integer, got 1.5": _routes(
        "/api/events: {ttl: 1.5}"
    ),
    f"cache.yaml: redis_ur: unknown field (allowed: {TOP_FIELDS})": Case(
        yaml="redis_ur: redis://x\n"
    ),
    "cache.yaml: line 3: duplicate key '/api/events' (first at line 2)": Case(
        yaml="routes:\n  /api/events: {ttl: 60}\n  /api/events: {ttl: 30}\n"
    ),
    "cache.yaml: routes./a/: matches the same paths as routes./a": _routes(
        "/a: {ttl: 60}\n  /a/: {ttl: 30}"
    ),
    "cache.yaml: routes./x/{name}: matches the same paths as routes./x/{id}": _routes(
        "/x/{id}: {ttl: 60}\n  /x/{name}: {ttl: 30}"
    ),
    "cache.yaml: line 2: duplicate key 'key_prefix' (first at line 1)": Case(
        yaml="key_prefix: a\nkey_prefix: b\n"
    ),
    "cache.yaml: line 2: YAML tags are not allowed": Case(
        yaml="routes:\n  /x: !!python/object:os.system {ttl: 1}\n"
    ),
    "cache.yaml: line 1: YAML tags are not allowed": Case(yaml="max_body_bytes: !!int '5'\n"),
    "cache.yaml: routes./api/search.vary_by: must be a list of parameter names, got 'q'": _routes(
        "/api/search: {ttl: 60, vary_by: q}"
    ),
    "cache.yaml: routes./api/search.vary_by: lists a parameter twice": _routes(
        "/api/search: {ttl: 60, vary_by: [q, q]}"
    ),
    "cache.yaml: routes./api/me.private: must be true or false, got 'yes'": _routes(
        "/api/me: {ttl: 60, private: 'yes'}"
    ),
    "cache.yaml: routes./api/venues.statuses: 500 cannot be cached by a shared cache "
    f"(allowed: {STATUSES})": _routes("/api/venues: {ttl: 60, statuses: [200, 500]}"),
    "cache.yaml: routes./api/venues.statuses: 206 cannot be cached by a shared cache "
    f"(allowed: {STATUSES})": _routes("/api/venues: {ttl: 60, statuses: [200, 206]}"),
    "<dict>: routes./api/x.statuses: 500 cannot be cached by a shared cache "
    f"(allowed: {STATUSES})": Case(config={"routes": {"/api/x": {"ttl": 60, "statuses": [500]}}}),
    "<dict>: routes./api/x.statuses: '200' cannot be cached by a shared cache (allowed: ...)": Case(
        config={"routes": {"/api/x": {"ttl": 60, "statuses": ["200"]}}}
    ),
    "cache.yaml: routes./api/venues.statuses: must be a list of statuses, got 404": _routes(
        "/api/venues: {ttl: 60, statuses: 404}"
    ),
    "cache.yaml: routes./api/venues.statuses: must be a list of statuses, got []": _routes(
        "/api/venues: {ttl: 60, statuses: []}"
    ),
    "cache.yaml: routes./api/venues.negative_ttl: applies to 404 and 410: list one in statuses": (
        _routes("/api/venues: {ttl: 60, negative_ttl: 60}")
    ),
    "cache.yaml: routes./api/venues.negative_ttl: must be a positive integer, got 0": _routes(
        "/api/venues: {ttl: 60, statuses: [200, 404], negative_ttl: 0}"
    ),
    "cache.yaml: routes./api/events.stale_while_revalidate: must be a whole number of seconds "
    ">= 0, got -1": _routes("/api/events: {ttl: 60, stale_while_revalidate: -1}"),
    "cache.yaml: routes./api/events.stale_if_error: must be a whole number of seconds >= 0, "
    "got 1.5": _routes("/api/events: {ttl: 60, stale_if_error: 1.5}"),
    "cache.yaml: routes./api/search.ignore_params: must be a list of globs, got 'utm_*'": _routes(
        "/api/search: {ttl: 60, ignore_params: utm_*}"
    ),
    "cache.yaml: routes./api/search.ignore_params: lists a glob twice": _routes(
        "/api/search: {ttl: 60, ignore_params: [utm_*, utm_*]}"
    ),
    "cache.yaml: routes./api/events.tags: must be a list of tags, got 'events'": _routes(
        "/api/events: {ttl: 60, tags: events}"
    ),
    "cache.yaml: routes./api/events.tags: lists a tag twice": _routes(
        "/api/events: {ttl: 60, tags: [events, events]}"
    ),
    "cache.yaml: routes./api/x/{id}.tags: 'item-{nope}' uses {nope}, which the route does not "
    "have": _routes('/api/x/{id}: {ttl: 60, tags: ["item-{nope}"]}'),
    "cache.yaml: routes./api/x/{id}.tags: 'item-{id': only bare {name} placeholders are "
    "allowed": _routes('/api/x/{id}: {ttl: 60, tags: ["item-{id"]}'),
    "cache.yaml: routes./api/r.condition: must be an import string 'package.module:function', "
    "got 'nope'": _routes("/api/r: {ttl: 60, condition: 'nope'}"),
    "cache.yaml: routes./api/r.condition: cannot import 'nomod_xyz:f': No module named "
    "'nomod_xyz'": _routes("/api/r: {ttl: 60, condition: 'nomod_xyz:f'}"),
    "cache.yaml: routes./api/r.condition: cannot import 'os:nope_fn': module 'os' has no "
    "attribute 'nope_fn'": _routes("/api/r: {ttl: 60, condition: 'os:nope_fn'}"),
    "cache.yaml: routes./api/r.condition: 'os:sep' is not callable": _routes(
        "/api/r: {ttl: 60, condition: 'os:sep'}"
    ),
    "error: cache.yaml: routes./api/reports.condition: cannot import 'myapp.cache:is_cacheable': "
    "No module named 'myapp'": Case(
        yaml='routes:\n  /api/reports: {ttl: 60, condition: "myapp.cache:is_cacheable"}\n',
        cli=True,
    ),
    "cache.yaml: routes.api/events: a route must be a path starting with '/', got "
    "'api/events'": _routes("api/events: {ttl: 60}"),
    "cache.yaml: routes./api/*: a route is a plain path: no query, fragment, glob or spaces": (
        _routes("/api/*: {ttl: 60}")
    ),
    "cache.yaml: routes./api//x: a route must not contain empty segments ('//')": _routes(
        "/api//x: {ttl: 60}"
    ),
    "cache.yaml: routes./api/x{id}: placeholder 'x{id}' must be a whole segment like {name}": (
        _routes("/api/x{id}: {ttl: 60}")
    ),
    "cache.yaml: routes./api/{id}/{id}: placeholder {id} appears twice": _routes(
        "/api/{id}/{id}: {ttl: 60}"
    ),
    "cache.yaml: routes./api/x: must be a mapping like {ttl: 60}, got 600": _routes("/api/x: 600"),
    "cache.yaml: routes: must be a mapping of path -> {ttl: ...}": Case(
        yaml="routes:\n  - /api/x\n"
    ),
    "cache.yaml: the top level must be a mapping, got list": Case(yaml="- routes\n"),
    f"cache.yaml: redis_url: must be a {SCHEMES} URL, got 'http://localhost'": Case(
        yaml="redis_url: http://localhost\n"
    ),
    "cache.yaml: redis_url (from the environment variable CACHE_REDIS_URL): must be a "
    f"{SCHEMES} URL, got 'http://x'": Case(
        yaml="redis_url: memory://\n", env={"CACHE_REDIS_URL": "http://x"}
    ),
    "cache.yaml: redis_url: the port 'notaport' is not a number from 1 to 65535 in "
    "'redis://127.0.0.1:notaport/0'": Case(yaml="redis_url: redis://127.0.0.1:notaport/0\n"),
    "cache.yaml: redis_url (from the environment variable CACHE_REDIS_URL): the database "
    "'notadb' is not a number (0, 1, 2...) in 'redis://127.0.0.1:6379/notadb'": Case(
        yaml="routes: {}\n", env={"CACHE_REDIS_URL": "redis://127.0.0.1:6379/notadb"}
    ),
    "cache.yaml: key_prefix: must not contain glob characters, spaces or controls": Case(
        yaml="key_prefix: 'gw:*'\n"
    ),
    "cache.yaml: key_prefix: must be a non-empty string, got ''": Case(yaml="key_prefix: ''\n"),
    "cache.yaml: venue_header: must be an HTTP header name, got 'X Venue'": Case(
        yaml="venue_header: 'X Venue'\n"
    ),
    "cache.yaml: user_header: must be a non-empty string, got 5": Case(yaml="user_header: 5\n"),
    "cache.yaml: redis_timeout: must be a number of seconds in (0, 60], got 100": Case(
        yaml="redis_timeout: 100\n"
    ),
    "cache.yaml: max_body_bytes: must be a positive integer, got 0": Case(
        yaml="max_body_bytes: 0\n"
    ),
    "cache.yaml: memory_max_bytes: must be a positive integer, got 0": Case(
        yaml="memory_max_bytes: 0\n"
    ),
    "cache.yaml: expose_key_header: must be true or false, got 'no'": Case(
        yaml="expose_key_header: 'no'\n"
    ),
    "cache.yaml: trusted_headers: must be a list of header names, got 'X-Forwarded-Host'": Case(
        yaml="trusted_headers: X-Forwarded-Host\n"
    ),
    "cache.yaml: trusted_headers: must be an HTTP header name, got 'X Forwarded Host'": Case(
        yaml="trusted_headers: [X Forwarded Host]\n"
    ),
    "cache.yaml: trusted_headers: lists a header name twice": Case(
        yaml="trusted_headers: [Forwarded, Forwarded]\n"
    ),
    "cache.yaml: honor_request_no_cache: must be true or false, got 'yes'": Case(
        yaml="honor_request_no_cache: 'yes'\n"
    ),
    "cache.yaml: key_host: must be true or false, got 'no'": Case(yaml="key_host: 'no'\n"),
    "cache.yaml: lock_timeout: must be a number of seconds in (0, 3600], got 7200": Case(
        yaml="lock_timeout: 7200\n"
    ),
    "cache.yaml: coalesce_wait: must be a number of seconds in (0, 600], got 601": Case(
        yaml="coalesce_wait: 601\n"
    ),
    "cache.yaml: breaker_failures: must be a positive integer, got 0": Case(
        yaml="breaker_failures: 0\n"
    ),
    "cache.yaml: slow_store_ms: must be a number of milliseconds in [0, 60000] (0: off), "
    "got -1": Case(yaml="slow_store_ms: -1\n"),
    "cache.yaml: breaker_cooldown: must be a number of seconds in (0, 3600], got 0": Case(
        yaml="breaker_cooldown: 0\n"
    ),
    "cache.yaml: near_cache: must be a mapping like {max_bytes: ...}, got 5": Case(
        yaml="near_cache: 5\n"
    ),
    "cache.yaml: near_cache.size: unknown field (allowed: max_age, max_bytes)": Case(
        yaml="near_cache: {size: 1}\n"
    ),
    "cache.yaml: near_cache.max_age: must be a number of seconds in (0, 3600], got 0": Case(
        yaml="near_cache: {max_age: 0}\n"
    ),
    "cache.yaml: near_cache.max_bytes: must be a positive integer, got 1.5": Case(
        yaml="near_cache: {max_bytes: 1.5}\n"
    ),
    "cache.yaml: manager_namespaces: must be a list of namespaces, got 'events'": Case(
        yaml="manager_namespaces: events\n"
    ),
    "cache.yaml: manager_namespaces: 'ev*': a namespace is plain text: no glob characters, "
    "spaces or controls": Case(yaml="manager_namespaces: ['ev*']\n"),
    "cache.yaml: manager_namespaces: 'events:': write it without the trailing ':'": Case(
        yaml="manager_namespaces: ['events:']\n"
    ),
    "cache.yaml: admin.tokn: unknown field (allowed: token, venue_tokens)": Case(
        yaml="admin: {tokn: x}\n"
    ),
    "cache.yaml: admin: must be a mapping like {token: ...}": Case(yaml="admin: abc\n"),
    "cache.yaml: admin.venue_tokens: must be a mapping of venue id -> token": Case(
        yaml="admin: {venue_tokens: [lisbon]}\n"
    ),
    "cache.yaml: admin.venue_tokens.lisbon: must be a non-empty string, got ''": Case(
        yaml="admin: {venue_tokens: {lisbon: ''}}\n"
    ),
    "cache.yaml: admin.venue_tokens: venue ids must be strings, got 5": Case(
        yaml="admin: {venue_tokens: {5: x}}\n"
    ),
    "cache.yaml: admin.token: environment variable NOPE_UNSET_VAR is not set": Case(
        yaml="admin:\n  token: ${NOPE_UNSET_VAR}\n"
    ),
    "cache.yaml: admin.token: environment variable CACHE_ADMIN_TOKEN is not set": Case(
        yaml="admin:\n  token: ${CACHE_ADMIN_TOKEN}\n"
    ),
    "cache.yaml: key_prefix: must be a non-empty string, got '${P:-}' expanded to ''": Case(
        yaml="key_prefix: ${P:-}\n"
    ),
    "cache.yaml: admin.token: must be a non-empty string, got '${CACHE_ADMIN_TOKEN}' expanded "
    "to ''": Case(yaml="admin:\n  token: ${CACHE_ADMIN_TOKEN}\n", env={"CACHE_ADMIN_TOKEN": ""}),
    "cache.yaml: line 3: invalid YAML: expected ',' or '}', but got '<stream end>'": Case(
        yaml="routes:\n  /a: {ttl: 5\n"
    ),
    "cache.yaml: line 2: a mapping key must be a plain value": Case(
        yaml="routes:\n  ? [a, b]\n  : {ttl: 5}\n"
    ),
    "cache.yaml: line 4: YAML merge keys (<<) are not supported; write each route's fields "
    "out": Case(yaml="routes:\n  /a: &r {ttl: 60}\n  /b:\n    <<: *r\n    private: true\n"),
    "/path/to/cache.yaml: cannot read config: No such file or directory": Case(missing_file=True),
    "ConfigError: config must be a path, a dict or Settings, got int": Case(config=5),
}


def test_every_quoted_message_has_a_reproducer() -> None:
    quoted = quoted_messages()
    assert quoted - set(MESSAGES) == set(), "quoted in the docs, no reproducer in MESSAGES"
    assert set(MESSAGES) - quoted == set(), "a reproducer whose message the docs no longer quote"


def produce(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The message the case's input gets, written as the docs write it."""
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.missing_file:
        missing = tmp_path / "nowhere" / "cache.yaml"
        return config_error(lambda: load_config(missing)).replace(
            str(tmp_path / "nowhere"), "/path/to"
        )
    if case.yaml is None:
        message = config_error(lambda: load_config(case.config))
        return message if isinstance(case.config, dict) else f"ConfigError: {message}"
    path = tmp_path / "cache.yaml"
    path.write_text(case.yaml, encoding="utf-8")
    if not case.cli:
        return config_error(lambda: load_config(path))
    monkeypatch.chdir(tmp_path)  # `check` imports conditions from here, where no myapp is
    monkeypatch.setattr(sys, "path", list(sys.path))
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        assert cli_main(["check", "cache.yaml"]) == 1
    return err.getvalue().strip()


def says(quoted: str, message: str) -> bool:
    """`quoted` (where "..." stands for any text) is `message`."""
    pattern = ".*".join(re.escape(part) for part in quoted.split("..."))
    return re.fullmatch(pattern, message) is not None


@pytest.mark.parametrize("quoted", sorted(MESSAGES))
def test_quoted_message_is_what_the_validator_says(
    quoted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = produce(MESSAGES[quoted], tmp_path, monkeypatch)
    assert says(quoted, message), f"the docs quote\n  {quoted}\nthe validator says\n  {message}"


# -- YAML blocks and sample configs -----------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ERROR_COMMENT = re.compile(r"# (cache\.yaml: .*)$")
# `# NAME= (set, empty)` in a block: the example is about NAME set to the empty string.
_SET_EMPTY = re.compile(r"# ([A-Za-z_][A-Za-z0-9_]*)= ")


def yaml_blocks() -> Iterator[tuple[str, str]]:
    for page in YAML_PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^( *)```yaml\n(.*?)^ *```", text, re.M | re.S):
            indent = len(match.group(1))
            body = "\n".join(line[indent:] for line in match.group(2).splitlines())
            line = text[: match.start()].count("\n") + 1
            yield f"{page.relative_to(ROOT)}:{line}", body


@pytest.fixture
def myapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `myapp.cache:is_cacheable` condition the docs' examples name."""
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cache.py").write_text("def is_cacheable(request):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(("where", "body"), list(yaml_blocks()), ids=lambda v: v[:40])
def test_yaml_block_is_valid_config(
    where: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, myapp: None
) -> None:
    """Each block loads with the variables it names set (to a UUID, which every field that
    takes one accepts; to '' where a comment says `NAME=`), or fails with the first error its
    comments quote."""
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    for name in _ENV_REF.findall(body):
        monkeypatch.setenv(name, TENANT)
    for name in _SET_EMPTY.findall(body):
        monkeypatch.setenv(name, "")
    path = tmp_path / "cache.yaml"
    path.write_text(body, encoding="utf-8")
    expected = [m.group(1) for line in body.splitlines() if (m := _ERROR_COMMENT.search(line))]
    if expected:
        assert config_error(lambda: load_config(path)) == expected[0], where
        return
    load_config(path)
    if "events" in (yaml.safe_load(body) or {}):
        load_events_config(path)


@pytest.mark.parametrize("path", SAMPLE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_sample_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    assert load_config(path).routes


def test_route_table_printed_by_check_is_the_documented_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, myapp: None
) -> None:
    """configuration.md's complete file, and what `cache-middleware check` printed for it."""
    text = section(CONFIGURATION.read_text(encoding="utf-8"), "## A complete file")
    body = re.search(r"```yaml\n(.*?)```", text, re.S)
    console = re.search(r"```console\n(.*?)```", text, re.S)
    assert body and console
    lines = console.group(1).splitlines()
    assert lines[0] == "$ export CACHE_ADMIN_TOKEN=s3cret"
    assert lines[1] == "$ cache-middleware check cache.yaml"
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("CACHE_ADMIN_TOKEN", "s3cret")
    (tmp_path / "cache.yaml").write_text(body.group(1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["check", "cache.yaml"]) == 0
    assert out.getvalue().splitlines() == lines[2:]


def test_the_sample_search_route_does_what_its_comments_say() -> None:
    """sample_apps/cache.yaml: a parameter outside vary_by is not cached (it once said such
    parameters were ignored), and an ignore_params one is not keyed."""
    from starlette.testclient import TestClient

    from sample_apps.starlette_app import create_app

    q = uuid.uuid4().hex  # the sample's memory store is shared by the whole test process
    with TestClient(create_app()) as client:
        unlisted = client.get(f"/api/search?q={q}&page=2")
        first = client.get(f"/api/search?q={q}&utm_source=a")
        plain = client.get(f"/api/search?q={q}")
        second = client.get(f"/api/search?q={q}&utm_source=b")
    assert unlisted.headers["x-cache"] == "BYPASS"
    assert "detail=unlisted-param" in unlisted.headers["cache-status"]
    assert "detail=ignored-param" in first.headers["cache-status"]  # never fills the entry
    assert (plain.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
