"""YAML (or dict) -> frozen, validated `Settings`. The only module that imports yaml.

Users' files are read strictly: unknown fields, duplicate keys, wrong types and YAML tags are a
`ConfigError` whose message names the source, the route and the field, e.g.
``cache.yaml: routes./api/search.ttl: must be a positive integer, got -5``.
`${NAME}` and `${NAME:-default}` in string values are read from the environment, and the
environment variable CACHE_REDIS_URL, when set, overrides `redis_url`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ._core.rules import is_placeholder, split_route
from .config_checks import (
    _PLACEHOLDER_NAME,
    _TAG_PLACEHOLDER,
    FieldChecks,
)
from .config_types import (
    ALL_CACHE_HEADERS,
    CACHEABLE_STATUSES,
    DEFAULT_COALESCE_WAIT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_MODE,
    DEFAULT_NEAR_BYTES,
    DEFAULT_NEAR_MAX_AGE,
    DEFAULT_PREFIX,
    DEFAULT_REVALIDATE_WINDOW,
    DEFAULT_SLOW_STORE_MS,
    DEFAULT_TIMEOUT,
    TARGETED_FIELD_MODES,
    AdminSettings,
    ConfigSource,
    NearCacheSettings,
    RouteSettings,
    Settings,
)
from .errors import ConfigError

__all__ = [
    "REDIS_SCHEMES",
    "AdminSettings",
    "ConfigSource",
    "NearCacheSettings",
    "RouteSettings",
    "Settings",
    "load_config",
]

# -- strict YAML --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported; "
                "write each route's fields out"
            )
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError as exc:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value"
            ) from exc
        if duplicate:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                f"(first at line {seen[key].start_mark.line + 1})"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_yaml(path: Path) -> Any:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text") from exc
    try:
        for token in yaml.scan(text, Loader=_StrictLoader):
            if isinstance(token, yaml.TagToken):
                raise ConfigError(
                    f"{name}: line {token.start_mark.line + 1}: YAML tags are not allowed"
                )
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        if str(exc).startswith(f"{name}:"):
            raise
        raise ConfigError(f"{name}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{name}: {where}invalid YAML: {problem}") from exc


# -- validation ---------------------------------------------------------------------------------

_TOP_KEYS = {
    "redis_url",
    "key_prefix",
    "venue_header",
    "user_header",
    "max_body_bytes",
    "redis_timeout",
    "memory_max_bytes",
    "expose_key_header",
    "cache_headers",
    "trusted_headers",
    "honor_request_no_cache",
    "key_host",
    "lock_timeout",
    "coalesce_wait",
    "breaker_failures",
    "breaker_cooldown",
    "slow_store_ms",
    "routes",
    "admin",
    "events",  # the event bridge's section, validated by cache_middleware.events
    "near_cache",
    "manager_namespaces",
    "mode",
    "revalidate_window",
    "targeted_fields",
}
_ROUTE_KEYS = {
    "ttl",
    "vary_by",
    "private",
    "condition",
    "statuses",
    "negative_ttl",
    "stale_while_revalidate",
    "stale_if_error",
    "ignore_params",
    "tags",
    "cache_headers",
    "mode",
    "revalidate_window",
}
_ADMIN_KEYS = {"token", "venue_tokens"}
_NEAR_KEYS = {"max_bytes", "max_age"}
# Schemes redis_url accepts: a single server, Sentinel (service name after the sentinels) and
# Cluster (seed nodes); memory:// is the embedded store.
REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
    "memory://",
)


class _Validator(FieldChecks):
    def route_path(self, where: str, path: Any) -> str:
        if not isinstance(path, str) or not path.startswith("/"):
            raise self.fail(where, f"a route must be a path starting with '/', got {path!r}")
        if any(c in path for c in "?#*") or any(ord(c) < 0x21 for c in path):
            raise self.fail(where, "a route is a plain path: no query, fragment, glob or spaces")
        if "//" in path:
            raise self.fail(where, "a route must not contain empty segments ('//')")
        names: set[str] = set()
        for segment in split_route(path):
            if "{" in segment or "}" in segment:
                if not is_placeholder(segment) or not _PLACEHOLDER_NAME.match(segment):
                    raise self.fail(
                        where, f"placeholder {segment!r} must be a whole segment like {{name}}"
                    )
                if segment in names:
                    raise self.fail(where, f"placeholder {segment} appears twice")
                names.add(segment)
        return path

    def condition(self, where: str, value: Any) -> tuple[str, Callable[[Any], bool]]:
        text = self.string(where, value, optional=False)
        assert text is not None
        module_name, sep, attr = text.partition(":")
        if not sep or not module_name or not attr:
            raise self.fail(
                where, f"must be an import string 'package.module:function', got {text!r}"
            )
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise self.fail(where, f"cannot import {text!r}: {exc}") from exc
        if not callable(target):
            raise self.fail(where, f"{text!r} is not callable")
        return text, target

    def route(
        self,
        path: str,
        spec: Any,
        cache_headers: tuple[str, ...] = ALL_CACHE_HEADERS,
        expose_key: bool | None = None,
        mode: str = DEFAULT_MODE,
        revalidate_window: int = DEFAULT_REVALIDATE_WINDOW,
    ) -> RouteSettings:
        """`cache_headers`: the global setting, which the route's own replaces; `expose_key`:
        expose_key_header when `false` (a route may not list X-Cache-Key then); `mode`: the
        global mode, which the route's own replaces; `revalidate_window`: the global one (for a
        standard route), which the route's own replaces."""
        where = f"routes.{path}"
        if not isinstance(spec, Mapping):
            raise self.fail(where, f"must be a mapping like {{ttl: 60}}, got {spec!r}")
        self.check_keys(where, spec, _ROUTE_KEYS)
        if "mode" in spec:
            mode = self.mode(f"{where}.mode", spec["mode"])
        ttl: int | None = None
        if "ttl" in spec:
            ttl = self.positive_int(f"{where}.ttl", spec["ttl"])
        elif mode == "gateway":
            raise self.fail(f"{where}.ttl", "is required")
        if mode == "standard":
            # The response's status and freshness decide there: a list or a second TTL that
            # would be silently ignored is refused.
            for name in ("statuses", "negative_ttl"):
                if name in spec:
                    raise self.fail(
                        f"{where}.{name}",
                        "does not apply to mode: standard, where the response's status and "
                        "freshness decide (RFC 9111); remove it or use mode: gateway",
                    )
            if "revalidate_window" in spec:
                revalidate_window = self.non_negative_int(
                    f"{where}.revalidate_window", spec["revalidate_window"]
                )
        else:
            if "revalidate_window" in spec:
                raise self.fail(
                    f"{where}.revalidate_window",
                    "applies to mode: standard (a gateway route refetches an expired entry); "
                    "remove it or use mode: standard",
                )
            revalidate_window = 0
        vary_by: tuple[str, ...] | None = None
        if spec.get("vary_by") is not None:
            raw = spec["vary_by"]
            if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) and v for v in raw):
                raise self.fail(
                    f"{where}.vary_by", f"must be a list of parameter names, got {raw!r}"
                )
            if len(set(raw)) != len(raw):
                raise self.fail(f"{where}.vary_by", "lists a parameter twice")
            vary_by = tuple(raw)
        private = self.boolean(f"{where}.private", spec.get("private", False))
        condition, func = (None, None)
        if spec.get("condition") is not None:
            condition, func = self.condition(f"{where}.condition", spec["condition"])
        statuses: tuple[int, ...] = (200,)
        if "statuses" in spec:
            raw_statuses = spec["statuses"]
            if not isinstance(raw_statuses, list) or not raw_statuses:
                raise self.fail(
                    f"{where}.statuses", f"must be a list of statuses, got {raw_statuses!r}"
                )
            for status in raw_statuses:
                if type(status) is not int or status not in CACHEABLE_STATUSES:
                    allowed = ", ".join(map(str, sorted(CACHEABLE_STATUSES)))
                    raise self.fail(
                        f"{where}.statuses",
                        f"{status!r} cannot be cached by a shared cache (allowed: {allowed})",
                    )
            statuses = tuple(sorted(set(raw_statuses)))
        negative_ttl = None
        if spec.get("negative_ttl") is not None:
            negative_ttl = self.positive_int(f"{where}.negative_ttl", spec["negative_ttl"])
            if not {404, 410} & set(statuses):
                raise self.fail(
                    f"{where}.negative_ttl", "applies to 404 and 410: list one in statuses"
                )
        swr = self.non_negative_int(
            f"{where}.stale_while_revalidate", spec.get("stale_while_revalidate", 0)
        )
        sie = self.non_negative_int(f"{where}.stale_if_error", spec.get("stale_if_error", 0))
        ignore = self.name_list(f"{where}.ignore_params", spec.get("ignore_params"), "globs")
        tags = self.name_list(f"{where}.tags", spec.get("tags"), "tags")
        if "cache_headers" in spec:
            cache_headers = self.cache_headers(
                f"{where}.cache_headers", spec["cache_headers"], expose_key
            )
        params = {seg[1:-1] for seg in split_route(path) if is_placeholder(seg)}
        for tag in tags:
            if _TAG_PLACEHOLDER.sub("", tag).count("{") or _TAG_PLACEHOLDER.sub("", tag).count("}"):
                raise self.fail(
                    f"{where}.tags", f"{tag!r}: only bare {{name}} placeholders are allowed"
                )
            for name in _TAG_PLACEHOLDER.findall(tag):
                if name not in params:
                    raise self.fail(
                        f"{where}.tags", f"{tag!r} uses {{{name}}}, which the route does not have"
                    )
        return RouteSettings(
            path,
            ttl,
            vary_by,
            private,
            condition,
            func,
            statuses=statuses,
            negative_ttl=negative_ttl,
            stale_while_revalidate=swr,
            stale_if_error=sie,
            ignore_params=ignore,
            tags=tags,
            cache_headers=cache_headers,
            mode=mode,
            revalidate_window=revalidate_window,
        )

    def settings(self, data: Any) -> Settings:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.fail("", f"the top level must be a mapping, got {type(data).__name__}")
        self.check_keys("", data, _TOP_KEYS)
        expose_key = self.boolean("expose_key_header", data.get("expose_key_header", True))
        explicit_expose = expose_key if "expose_key_header" in data else None
        if "cache_headers" in data:
            cache_headers = self.cache_headers(
                "cache_headers", data["cache_headers"], explicit_expose
            )
        else:
            cache_headers = tuple(
                name for name in ALL_CACHE_HEADERS if expose_key or name != "X-Cache-Key"
            )
        mode = self.mode("mode", data.get("mode", DEFAULT_MODE))
        revalidate_window = self.non_negative_int(
            "revalidate_window", data.get("revalidate_window", DEFAULT_REVALIDATE_WINDOW)
        )
        targeted_fields = data.get("targeted_fields", "pass")
        if targeted_fields not in TARGETED_FIELD_MODES:
            raise self.fail("targeted_fields", f"must be pass or strip, got {targeted_fields!r}")
        routes_raw = data.get("routes") or {}
        if not isinstance(routes_raw, Mapping):
            raise self.fail("routes", "must be a mapping of path -> {ttl: ...}")
        routes = tuple(
            self.route(
                self.route_path(f"routes.{path}", path),
                spec,
                cache_headers,
                # A route's own list may leave X-Cache-Key out whatever the global setting, but
                # may not bring it back when expose_key_header: false says never.
                False if explicit_expose is False else None,
                mode,
                revalidate_window,
            )
            for path, spec in routes_raw.items()
        )
        seen: dict[tuple[str, ...], str] = {}
        for route in routes:
            # `/a` and `/a/`, or `/x/{id}` and `/x/{name}`, match exactly the same requests.
            shape = tuple("{}" if is_placeholder(s) else s for s in split_route(route.path))
            if shape in seen:
                raise self.fail(
                    f"routes.{route.path}", f"matches the same paths as routes.{seen[shape]}"
                )
            seen[shape] = route.path
        admin_raw = data.get("admin") or {}
        if not isinstance(admin_raw, Mapping):
            raise self.fail("admin", "must be a mapping like {token: ...}")
        self.check_keys("admin", admin_raw, _ADMIN_KEYS)
        venue_tokens: list[tuple[str, str]] = []
        raw_venue_tokens = admin_raw.get("venue_tokens") or {}
        if not isinstance(raw_venue_tokens, Mapping):
            raise self.fail("admin.venue_tokens", "must be a mapping of venue id -> token")
        for venue, venue_token in raw_venue_tokens.items():
            where = f"admin.venue_tokens.{venue}"
            if not isinstance(venue, str) or not venue:
                raise self.fail("admin.venue_tokens", f"venue ids must be strings, got {venue!r}")
            value = self.string(where, venue_token, optional=False)
            assert value is not None
            venue_tokens.append((venue, value))
        admin = AdminSettings(
            token=self.string("admin.token", admin_raw.get("token")),
            venue_tokens=tuple(venue_tokens),
        )

        redis_url = self.redis_url(data.get("redis_url"))
        prefix = self.string("key_prefix", data.get("key_prefix", DEFAULT_PREFIX), optional=False)
        assert prefix is not None
        if any(c in prefix for c in "*?[]\\") or any(ord(c) < 0x21 for c in prefix):
            raise self.fail("key_prefix", "must not contain glob characters, spaces or controls")
        return Settings(
            routes=routes,
            mode=mode,
            targeted_fields=targeted_fields,
            revalidate_window=revalidate_window,
            redis_url=redis_url,
            key_prefix=prefix,
            venue_header=self.header_name("venue_header", data.get("venue_header")),
            user_header=self.header_name("user_header", data.get("user_header")),
            max_body_bytes=self.positive_int(
                "max_body_bytes", data.get("max_body_bytes", DEFAULT_MAX_BODY)
            ),
            redis_timeout=self.positive_number(
                "redis_timeout", data.get("redis_timeout", DEFAULT_TIMEOUT)
            ),
            memory_max_bytes=self.positive_int(
                "memory_max_bytes", data.get("memory_max_bytes", DEFAULT_MEMORY_BYTES)
            ),
            expose_key_header=expose_key,
            cache_headers=cache_headers,
            trusted_headers=tuple(
                self.header_name("trusted_headers", name) or ""
                for name in self.name_list(
                    "trusted_headers", data.get("trusted_headers"), "header names"
                )
            ),
            honor_request_no_cache=self.boolean(
                "honor_request_no_cache", data.get("honor_request_no_cache", False)
            ),
            key_host=self.boolean("key_host", data.get("key_host", True)),
            lock_timeout=self.positive_number(
                "lock_timeout", data.get("lock_timeout", DEFAULT_LOCK_TIMEOUT), high=3600
            ),
            coalesce_wait=self.positive_number(
                "coalesce_wait", data.get("coalesce_wait", DEFAULT_COALESCE_WAIT), high=600
            ),
            breaker_failures=self.positive_int("breaker_failures", data.get("breaker_failures", 5)),
            breaker_cooldown=self.positive_number(
                "breaker_cooldown", data.get("breaker_cooldown", 5.0), high=3600
            ),
            slow_store_ms=self.milliseconds(
                "slow_store_ms", data.get("slow_store_ms", DEFAULT_SLOW_STORE_MS)
            ),
            admin=admin,
            near_cache=self.near_cache(data.get("near_cache")),
            manager_namespaces=self.namespaces(data.get("manager_namespaces")),
            source=self.source,
        )

    def redis_url(self, raw: Any) -> str | None:
        """The file's `redis_url`, or CACHE_REDIS_URL when set, checked as the stores will read
        it (storage/urls.py): a URL that passes builds a client. The message says where the
        URL came from, since an environment variable is easy to forget."""
        url = self.string("redis_url", raw)
        where = "redis_url"
        env_url = os.environ.get("CACHE_REDIS_URL")
        if env_url:
            url, where = env_url, "redis_url (from the environment variable CACHE_REDIS_URL)"
        if url is None:
            return None
        if not url.startswith(REDIS_SCHEMES):
            schemes = ", ".join(REDIS_SCHEMES[:-1]) + f" or {REDIS_SCHEMES[-1]}"
            raise self.fail(where, f"must be a {schemes} URL, got {_without_password(url)!r}")
        if not url.startswith("memory://"):
            from .storage.urls import check_redis_url  # imports redis: only for Redis URLs

            try:
                check_redis_url(url)
            except ValueError as exc:
                raise self.fail(where, f"{exc} in {_without_password(url)!r}") from exc
        return url

    def namespaces(self, raw: Any) -> tuple[str, ...]:
        """`manager_namespaces: [events, user]`: namespace `events` holds the keys `events:...`."""
        names = self.name_list("manager_namespaces", raw, "namespaces")
        for name in names:
            plain = not any(c in "*?[]\\" or ord(c) < 0x21 or ord(c) == 0x7F for c in name)
            if not plain:
                raise self.fail(
                    "manager_namespaces",
                    f"{name!r}: a namespace is plain text: no glob characters, spaces or controls",
                )
            if name.endswith(":"):
                raise self.fail(
                    "manager_namespaces", f"{name!r}: write it without the trailing ':'"
                )
        return names

    def near_cache(self, raw: Any) -> NearCacheSettings | None:
        if raw is None or raw is False:
            return None
        if raw is True:
            return NearCacheSettings()
        if not isinstance(raw, Mapping):
            raise self.fail("near_cache", f"must be a mapping like {{max_bytes: ...}}, got {raw!r}")
        self.check_keys("near_cache", raw, _NEAR_KEYS)
        return NearCacheSettings(
            max_bytes=self.positive_int(
                "near_cache.max_bytes", raw.get("max_bytes", DEFAULT_NEAR_BYTES)
            ),
            max_age=self.positive_number(
                "near_cache.max_age", raw.get("max_age", DEFAULT_NEAR_MAX_AGE), high=3600
            ),
        )


def _without_password(url: str) -> str:
    """A URL fit for an error message: the credentials masked."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    return f"{scheme}://***@{netloc.rpartition('@')[2]}{slash}{tail}"


def load_config(config: ConfigSource | None = None) -> Settings:
    """Validate a YAML path, a dict of the same shape, or pass a `Settings` through.

    `None` means no routes, on `CACHE_REDIS_URL` or else the memory store (the manager default).
    """
    if isinstance(config, Settings):
        return config
    if config is None:
        return _Validator("<default>").settings({})
    if isinstance(config, Mapping):
        return _Validator("<dict>").settings(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        return _Validator(path.name).settings(_read_yaml(path))
    raise ConfigError(f"config must be a path, a dict or Settings, got {type(config).__name__}")
