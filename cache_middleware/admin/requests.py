"""Validation of admin request bodies: a clear 400 message, and nothing done, on bad input."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BadRequest", "InvalidateRequest", "parse_clear", "parse_invalidate", "parse_warm"]

MAX_ITEMS = 100
MAX_LENGTH = 256
MAX_BODY = 64 * 1024
KINDS = ("patterns", "paths", "tags", "keys")


class BadRequest(ValueError):
    """The request body is not what the endpoint accepts; the message says why."""


@dataclass(frozen=True)
class InvalidateRequest:
    patterns: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    dry_run: bool = False


def _object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body over {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise BadRequest("body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return data


def _items(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise BadRequest(f"{name}: must be a list of strings")
    if len(value) > MAX_ITEMS:
        raise BadRequest(f"{name}: at most {MAX_ITEMS} items, got {len(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise BadRequest(f"{name}[{i}]: must be a non-empty string")
        if len(item) > MAX_LENGTH:
            raise BadRequest(f"{name}[{i}]: at most {MAX_LENGTH} characters, got {len(item)}")
        if any(unicodedata.category(c) == "Cc" for c in item):  # C0, DEL and C1 controls
            raise BadRequest(f"{name}[{i}]: control characters are not allowed")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in item):  # `\ud800` in JSON: not text
            raise BadRequest(f"{name}[{i}]: lone surrogates are not allowed")
    return list(value)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false")
    return value


def parse_invalidate(body: bytes) -> InvalidateRequest:
    data = _object(body, {*KINDS, "dry_run"})
    lists = {kind: _items(data, kind) for kind in KINDS}
    total = sum(len(items) for items in lists.values())
    if total == 0:
        raise BadRequest("nothing to invalidate: give patterns, paths, tags or keys")
    if total > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS} items in all, got {total}")
    for i, path in enumerate(lists["paths"]):
        if not path.startswith("/"):
            raise BadRequest(f"paths[{i}]: a request path starts with '/'")
    return InvalidateRequest(**lists, dry_run=_flag(data, "dry_run"))


def parse_warm(body: bytes) -> list[str]:
    data = _object(body, {"paths"})
    paths = _items(data, "paths")
    if not paths:
        raise BadRequest("paths: give at least one path to warm")
    for i, path in enumerate(paths):
        if not path.startswith("/") or path.startswith("//"):
            raise BadRequest(f"paths[{i}]: a request path starts with a single '/'")
    return paths


def parse_clear(body: bytes) -> None:
    data = _object(body, {"confirm"})
    if data.get("confirm") is not True:
        raise BadRequest('clearing removes every entry: send {"confirm": true}')
