"""The OpenAPI 3.0 document of the admin API (served at /openapi.json; docs/admin-api.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_STRINGS = {
    "type": "array",
    "maxItems": 100,
    "items": {"type": "string", "minLength": 1, "maxLength": 256},
}
_ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {"success": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}},
}
_FIGURES: dict[str, Any] = {
    "type": "object",
    "properties": {
        name: {"type": "integer"}
        for name in (
            "hits",
            "stale_hits",
            "misses",
            "bypasses",
            "stores",
            "errors",
            "coalesced",
            "invalidations",
            "lost_leases",
        )
    }
    | {"hit_ratio": {"type": "number"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request body; nothing was done",
        401: "Missing or wrong bearer token",
        403: "The token's venue does not reach what the request names; nothing was done",
        409: "No CacheMiddleware with this key prefix runs in this process",
        503: "The cache store is unavailable; nothing was done",
    }
    return {str(s): _json(_ERROR, text[s]) for s in statuses}


def _post(summary: str, body: dict[str, Any], ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": _json(ok, "Done"), **_errors(401, *errors)},
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "cache-middleware admin API",
        "version": "1.0",
        "description": "Mounted at /admin/cache. Every call needs Authorization: Bearer <token>.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/invalidate": _post(
            "Delete entries by key glob, request-path glob, tag or exact key",
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "patterns": _STRINGS,
                    "paths": _STRINGS,
                    "tags": _STRINGS,
                    "keys": _STRINGS,
                    "dry_run": {"type": "boolean"},
                },
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
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["paths"],
                "properties": {"paths": _STRINGS},
            },
            {
                "type": "object",
                "required": ["success", "warmed", "failed"],
                "properties": {
                    "success": {"type": "boolean"},
                    "warmed": {"type": "array", "items": {"type": "object"}},
                    "failed": {"type": "array", "items": {"type": "object"}},
                },
            },
            400,
            409,
            503,
        ),
        "/clear": _post(
            "Remove every entry under the prefix (or the token's venue)",
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
            {"type": "object", "additionalProperties": False},
            {
                "type": "object",
                "required": ["success", "bytes_reclaimed"],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "orphaned_index_members": {"type": "integer"},
                    "unrouted_entries": {"type": "integer"},
                    "oversized_entries": {"type": "integer"},
                    "bytes_reclaimed": {"type": "integer"},
                },
            },
            400,
            403,
            503,
        ),
        "/stats": {
            "get": {
                "summary": "Counters of every process, per route and venue; keyspace; backend",
                "responses": {
                    "200": _json(
                        {
                            **_FIGURES,
                            "properties": {
                                **_FIGURES["properties"],
                                "entries": {"type": "integer", "nullable": True},
                                "bytes": {"type": "integer", "nullable": True},
                                "routes": {"type": "object", "additionalProperties": _FIGURES},
                                "venues": {"type": "object", "additionalProperties": _FIGURES},
                                "backend": {"type": "object"},
                                "history": {"type": "array", "items": {"type": "object"}},
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
                "responses": {
                    "200": {
                        "description": "Prometheus exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 503),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The HTML dashboard",
                "responses": {
                    "200": {
                        "description": "Dashboard page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
    },
}
