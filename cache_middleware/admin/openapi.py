"""The OpenAPI 3.0 document of the admin API (served at /openapi.json; docs/admin-api.md).

Kept in step with what the app does by tests/test_admin_openapi.py, which runs schemathesis
against the live app with this document, and keeps docs/openapi.json equal to it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .._core.stats import Counters

__all__ = ["OPENAPI"]

# `backend.type` of /stats: one server (or Sentinel's master), a Cluster, the memory store.
_BACKEND_TYPES = ["redis", "redis-cluster", "memory"]

# No control characters (Unicode Cc: U+0000-U+001F, U+007F-U+009F) in a request body's strings.
_PRINTABLE = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
_REQUEST_PATH = "^/[^\\x00-\\x1f\\x7f-\\x9f]*$"
# A single leading slash: "/", "/a", never "//a" (that would name another host).
_WARM_PATH = "^/([^/\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*)?$"


def _strings(pattern: str = _PRINTABLE, min_items: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "array",
        "maxItems": 100,
        "items": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": pattern},
    }
    if min_items:
        schema["minItems"] = min_items
    return schema


_ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {"success": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}},
}
_NO_STORE = {
    "Cache-Control": {
        "description": "Always `no-store`",
        "required": True,
        "schema": {"type": "string", "enum": ["no-store"]},
    }
}
# Every counter of the stats, as `/stats` reports them (the metrics export the same list).
_COUNTERS = tuple(counter.name for counter in fields(Counters))
_FIGURES: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": "integer", "minimum": 0} for name in _COUNTERS}
    | {"hit_ratio": {"type": "number", "minimum": 0, "maximum": 1}},
}
_ROUTE_OR_VENUE: dict[str, Any] = {**_FIGURES, "required": [*_COUNTERS, "hit_ratio"]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _NO_STORE,
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request body (the message says why); nothing was done",
        401: "Missing or wrong bearer token",
        403: "The token's venue does not reach what the request names; nothing was done",
        413: "Request body over 65536 bytes: refused before more of it was read; nothing was done",
        409: "No CacheMiddleware with this key prefix runs in this process",
        503: "The cache store is unavailable; nothing was done",
    }
    out = {str(s): _json(_ERROR, text[s]) for s in statuses}
    if "401" in out:
        out["401"]["headers"] = {
            **_NO_STORE,
            "WWW-Authenticate": {
                "description": "Always `Bearer`",
                "required": True,
                "schema": {"type": "string", "enum": ["Bearer"]},
            },
        }
    return out


def _post(
    summary: str,
    description: str,
    body: dict[str, Any] | None,
    ok: dict[str, Any],
    *errors: int,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "description": description}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    # Every POST's body passes admin/requests.BodyLimit first: over the limit is a 413.
    operation["responses"] = {"200": _json(ok, "Done"), **_errors(401, *errors, 413)}
    return {"post": operation}


_WARM_RESULT = {
    "type": "object",
    "required": ["path"],
    "properties": {
        "path": {"type": "string"},
        "status": {"type": "integer", "description": "Status the app answered (0: no answer)"},
        "x_cache": {
            "type": "string",
            "nullable": True,
            "description": "The X-Cache header of that answer",
        },
        "error": {
            "type": "string",
            "description": "Why it is not in the cache (failed items only)",
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "cache-middleware admin API",
        "version": "1.0",
        "description": (
            "Mounted at /admin/cache (or wherever the app mounts create_admin_app). Every call "
            "needs Authorization: Bearer <token>; every answer carries Cache-Control: no-store. "
            "See docs/admin-api.md."
        ),
    },
    "servers": [{"url": "/admin/cache", "description": "The usual mount point"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/invalidate": _post(
            "Delete entries by key glob, request-path glob, tag or exact key",
            "At least one item in all, at most 100 items in all (patterns + paths + tags + "
            "keys). A venue token reaches only its venue's entries: paths and tags are scoped "
            "to it, and a pattern or key outside it is a 403. With dry_run, nothing is deleted "
            "and `invalidated` is how many entries would be.",
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "patterns": _strings(),
                    "paths": _strings(_REQUEST_PATH),
                    "tags": _strings(),
                    "keys": _strings(),
                    "dry_run": {"type": "boolean"},
                },
                "anyOf": [
                    {"required": [kind], "properties": {kind: {"minItems": 1}}}
                    for kind in ("patterns", "paths", "tags", "keys")
                ],
            },
            {
                "type": "object",
                "required": ["success", "invalidated", "dry_run"],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "invalidated": {"type": "integer", "minimum": 0},
                    "dry_run": {"type": "boolean"},
                },
            },
            400,
            403,
            503,
        ),
        "/warm": _post(
            "Fetch paths through the cached app so they are stored",
            "Each path (with an optional ?query) is requested with GET through this process's "
            "CacheMiddleware, 4 at a time, with the token's venue header for a venue token. "
            "`success` is false when any path failed; the answer is still a 200.",
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["paths"],
                "properties": {"paths": _strings(_WARM_PATH, min_items=1)},
            },
            {
                "type": "object",
                "required": ["success", "warmed", "failed"],
                "properties": {
                    "success": {"type": "boolean"},
                    "warmed": {"type": "array", "items": _WARM_RESULT},
                    "failed": {"type": "array", "items": _WARM_RESULT},
                },
            },
            400,
            409,
        ),
        "/clear": _post(
            "Remove every entry under the prefix (or the token's venue)",
            "The whole token removes entries, indexes and fill leases under the key prefix "
            "(the shared statistics are kept); a venue token removes its venue's entries and "
            "tag indexes.",
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["confirm"],
                "properties": {"confirm": {"type": "boolean", "enum": [True]}},
            },
            {
                "type": "object",
                "required": ["success", "cleared"],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "cleared": {"type": "integer", "minimum": 0},
                },
            },
            400,
            503,
        ),
        "/optimize": _post(
            "Housekeeping: orphaned index members, unrouted and oversized entries",
            "Takes no request body (one, if sent, is ignored). Whole token only: a venue "
            "token gets a 403.",
            None,
            {
                "type": "object",
                "required": [
                    "success",
                    "orphaned_index_members",
                    "unrouted_entries",
                    "oversized_entries",
                    "bytes_reclaimed",
                ],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "orphaned_index_members": {"type": "integer", "minimum": 0},
                    "unrouted_entries": {"type": "integer", "minimum": 0},
                    "oversized_entries": {"type": "integer", "minimum": 0},
                    "bytes_reclaimed": {"type": "integer", "minimum": 0},
                },
            },
            403,
            503,
        ),
        "/stats": {
            "get": {
                "summary": "Counters of every process, per route and venue; keyspace; backend",
                "description": (
                    "For a venue token: that venue's counters only, with `venues` holding just "
                    "it, empty `routes` and `history`, `backend` reduced to its type, and no "
                    "keyspace figures."
                ),
                "responses": {
                    "200": _json(
                        {
                            **_FIGURES,
                            "properties": {
                                **_FIGURES["properties"],
                                "entries": {"type": "integer", "minimum": 0},
                                "bytes": {"type": "integer", "minimum": 0},
                                "keyspace_sampled_at": {
                                    "type": "number",
                                    "description": "Unix time of the SCAN behind entries/bytes",
                                },
                                "routes": {
                                    "type": "object",
                                    "additionalProperties": _ROUTE_OR_VENUE,
                                },
                                "venues": {
                                    "type": "object",
                                    "additionalProperties": _ROUTE_OR_VENUE,
                                },
                                "backend": {
                                    "type": "object",
                                    "properties": {
                                        "type": {
                                            "type": "string",
                                            "enum": ["redis", "redis-cluster", "memory"],
                                        },
                                        "breaker": {
                                            "type": "string",
                                            "nullable": True,
                                            "enum": ["closed", "open", "half-open", None],
                                        },
                                    },
                                },
                                "near_cache": {
                                    "type": "object",
                                    "description": "This process's near-cache, when configured",
                                    "properties": {
                                        "live": {"type": "boolean"},
                                        "entries": {"type": "integer", "minimum": 0},
                                        "bytes": {"type": "integer", "minimum": 0},
                                        "max_bytes": {"type": "integer", "minimum": 1},
                                        "max_age": {"type": "number"},
                                        "hits": {"type": "integer", "minimum": 0},
                                        "invalidations": {"type": "integer", "minimum": 0},
                                        "flushes": {"type": "integer", "minimum": 0},
                                    },
                                },
                                "history": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["t", "hits", "misses", "hit_ratio"],
                                        "properties": {
                                            "t": {"type": "number"},
                                            "hits": {"type": "integer"},
                                            "misses": {"type": "integer"},
                                            "hit_ratio": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        },
                        "The figures",
                    ),
                    **_errors(401, 503),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "The stats in Prometheus text format",
                "description": "Whole token only: a venue token gets a 403.",
                "responses": {
                    "200": {
                        "description": "Prometheus exposition",
                        "headers": _NO_STORE,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 503),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The HTML dashboard (a page without data: it asks for the token)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Dashboard page",
                        "headers": {
                            **_NO_STORE,
                            "Content-Security-Policy": {
                                "description": "No source but this origin; no inline data",
                                "required": True,
                                "schema": {"type": "string"},
                            },
                        },
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI document"),
                    **_errors(401),
                },
            }
        },
    },
}
