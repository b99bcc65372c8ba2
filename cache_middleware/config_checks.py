"""The field checks of a configuration: each reads one value and returns it checked (and
`${VAR}`-expanded), or raises a `ConfigError` naming the source and the field's place
(``cache.yaml: routes./api/search.ttl: must be a positive integer, got -5``). config.py's
validator builds the route and settings checks on them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .config_types import _CACHE_HEADER_NAMES, ALL_CACHE_HEADERS, MODES
from .errors import ConfigError

__all__ = ["FieldChecks"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PLACEHOLDER_NAME = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_TAG_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FieldChecks:
    """One source's checks (`source`: the file name, or `<dict>`, that errors begin with)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        )

    def expand(self, where: str, value: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            got = os.environ.get(name)
            if not got:  # as in the shell, `:-` applies to unset *and* empty variables
                if default is not None:
                    return default
                if got is None:
                    raise self.fail(where, f"environment variable {name} is not set")
            return got

        return _ENV_REF.sub(replace, value)

    def check_keys(self, where: str, data: Mapping[Any, Any], allowed: set[str]) -> None:
        for key in data:
            if not isinstance(key, str) or key not in allowed:
                spot = f"{where}.{key}" if where else str(key)
                raise self.fail(spot, f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def string(self, where: str, value: Any, *, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        expanded = self.expand(where, value)
        if not expanded:
            raise self.fail(where, f"must be a non-empty string, got {value!r} expanded to ''")
        return expanded

    def positive_int(self, where: str, value: Any) -> int:
        if type(value) is not int or value <= 0:
            raise self.fail(where, f"must be a positive integer, got {value!r}")
        return value

    def positive_number(self, where: str, value: Any, high: float = 60) -> float:
        if type(value) not in (int, float) or not 0 < value <= high:
            raise self.fail(where, f"must be a number of seconds in (0, {high:g}], got {value!r}")
        return float(value)

    def milliseconds(self, where: str, value: Any, high: float = 60_000) -> float:
        if type(value) not in (int, float) or not 0 <= value <= high:
            raise self.fail(
                where, f"must be a number of milliseconds in [0, {high:g}] (0: off), got {value!r}"
            )
        return float(value)

    def non_negative_int(self, where: str, value: Any) -> int:
        if type(value) is not int or value < 0:
            raise self.fail(where, f"must be a whole number of seconds >= 0, got {value!r}")
        return value

    def name_list(self, where: str, value: Any, what: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, f"must be a list of {what}, got {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(where, f"lists a {what[:-1]} twice")
        return tuple(value)

    def cache_headers(self, where: str, value: Any, expose_key: bool | None) -> tuple[str, ...]:
        """A `cache_headers:` list: which of the cache's informational headers to add, in any
        case. `expose_key`: expose_key_header as the file sets it (None: not set); a list
        that contradicts it is refused rather than one of the two silently winning."""
        allowed = ", ".join(ALL_CACHE_HEADERS)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.fail(
                where,
                f"must be a list of header names among {allowed} ([] for none), got {value!r}",
            )
        chosen: set[str] = set()
        for name in value:
            lowered = name.lower()
            if lowered not in _CACHE_HEADER_NAMES:
                raise self.fail(
                    where,
                    f"{name!r} is not a cache header (allowed: {allowed}; Age, ETag and "
                    "Cache-Control are always sent)",
                )
            if lowered in chosen:
                raise self.fail(where, f"lists {_CACHE_HEADER_NAMES[lowered]} twice")
            chosen.add(lowered)
        if expose_key is False and "x-cache-key" in chosen:
            raise self.fail(
                where,
                "lists X-Cache-Key, which expose_key_header: false leaves out; keep one of the two",
            )
        if expose_key is True and "x-cache-key" not in chosen:
            raise self.fail(
                where,
                "leaves out X-Cache-Key, which expose_key_header: true asks for; "
                "keep one of the two",
            )
        return tuple(name for name in ALL_CACHE_HEADERS if name.lower() in chosen)

    def mode(self, where: str, value: Any) -> str:
        if value not in MODES:
            raise self.fail(where, f"must be gateway or standard, got {value!r}")
        return str(value)

    def boolean(self, where: str, value: Any) -> bool:
        if type(value) is not bool:
            raise self.fail(where, f"must be true or false, got {value!r}")
        return value

    def header_name(self, where: str, value: Any) -> str | None:
        name = self.string(where, value)
        if name is not None and not _HEADER_NAME.match(name):
            raise self.fail(where, f"must be an HTTP header name, got {name!r}")
        return name
