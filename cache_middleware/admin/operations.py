"""What the admin endpoints do, over the cache's async store: invalidate, clear, optimize,
warm, and the figures for stats. Validation (400) and scope checks (403) happen before anything
is deleted; a store failure raises StoreUnavailable (the endpoint answers 503, never a false
success)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from .._core.globs import compile_glob
from .._core.keys import in_venue, path_patterns, tag_index_key, venue_patterns
from .._core.stats import summarize
from ..config import Settings
from ..storage import AsyncStore
from ..wiring import stats_key
from .auth import Principal
from .requests import InvalidateRequest

__all__ = [
    "Forbidden",
    "clear",
    "invalidate",
    "optimize",
    "stats",
    "warm",
]

KEYSPACE_REFRESH = 60.0  # seconds a keyspace count (a SCAN) is reused: never a scan per call
KEYSPACE_LIMIT = 200_000  # keys counted at most; beyond, the figure is a lower bound
HEADER_ALLOWANCE = 8 * 1024  # an entry's record may exceed its body by this much (headers)
WARM_CONCURRENCY = 4
HISTORY_POINTS = 120


class Forbidden(PermissionError):
    """The caller's token does not reach what the request names."""


def _escape(text: str) -> str:
    from .._core.keys import escape_component

    return escape_component(text)


def _check_venue_pattern(pattern: str, prefix: str, venue: str) -> None:
    suffix = f":venue:{_escape(venue)}"
    if not pattern.startswith(f"{prefix}:GET:") or not (
        pattern.endswith(suffix) or pattern.endswith(f"{suffix}:vary:*")
    ):
        raise Forbidden(
            f"pattern {pattern!r} reaches outside venue {venue!r}: a venue token's patterns "
            f"start with '{prefix}:GET:' and end with '{suffix}' (or '{suffix}:vary:*')"
        )


async def invalidate(
    store: AsyncStore, settings: Settings, principal: Principal, request: InvalidateRequest
) -> int:
    prefix, venue = settings.key_prefix, principal.venue
    patterns: list[str] = []
    for pattern in request.patterns:
        if venue is not None:
            _check_venue_pattern(pattern, prefix, venue)
        patterns.append(pattern)
    for path in request.paths:
        patterns.extend(path_patterns(prefix, path, venue))
    for key in request.keys:
        if venue is not None and not (key.startswith(f"{prefix}:GET:") and in_venue(key, venue)):
            raise Forbidden(f"key {key!r} is not an entry of venue {venue!r}")
    indexes = [tag_index_key(prefix, tag, venue) for tag in request.tags]
    if request.dry_run:
        # Each key once, however many selectors reach it: what the deletion would report.
        found: set[str] = set()
        for pattern in patterns:
            found.update(await store.keys_matching(pattern))
        candidates = list(request.keys)
        for index in indexes:
            candidates.extend(await store.index_members(index))
        sizes = await store.sizes(candidates)
        found.update(k for k, size in zip(candidates, sizes, strict=True) if size is not None)
        return len(found)
    count = 0
    for pattern in patterns:
        count += await store.delete_matching(pattern)
    if request.keys:
        count += await store.delete(*request.keys)
    for index in indexes:
        count += await store.delete_index(index)
    if indexes:
        # A tag's entries may be filling right now (a Cache-Tag is only known once the answer
        # is in): move the invalidation epoch so no fill that began before this writes.
        await store.delete(*indexes)
    return count


async def clear(store: AsyncStore, settings: Settings, principal: Principal) -> int:
    prefix = settings.key_prefix
    if principal.venue is not None:
        patterns = venue_patterns(prefix, principal.venue)
    else:
        # Entries, indexes and leases; the shared statistics are kept.
        patterns = [f"{prefix}:{kind}:*" for kind in ("GET", "IDX", "TAG", "LOCK")]
    count = 0
    for pattern in patterns:
        count += await store.delete_matching(pattern)
    return count


def _entry_path(key: str, prefix: str) -> str | None:
    """The request path an entry key was built from, or None for a key that is not an entry."""
    head = f"{prefix}:GET:"
    if not key.startswith(head):
        return None
    escaped = key[len(head) :].split(":", 1)[0]
    out: list[str] = []
    raw = bytearray()
    i = 0
    while i < len(escaped):
        if escaped[i] == "%" and escaped.startswith("%u", i):
            out.append(raw.decode("utf-8", "surrogateescape"))
            raw.clear()
            out.append(chr(int(escaped[i + 2 : i + 6], 16)))
            i += 6
        elif escaped[i] == "%":
            raw.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += escaped[i].encode("utf-8")
            i += 1
    out.append(raw.decode("utf-8", "surrogateescape"))
    return "".join(out)


async def optimize(store: AsyncStore, settings: Settings, match: Any) -> dict[str, int]:
    """Housekeeping that pays for itself: orphaned index members, entries of routes no longer
    configured, entries over the size limit. Returns what was removed and the bytes reclaimed."""
    prefix = settings.key_prefix
    report = {
        "orphaned_index_members": 0,
        "unrouted_entries": 0,
        "oversized_entries": 0,
        "bytes_reclaimed": 0,
    }
    keys = await store.keys_matching(f"{prefix}:GET:*", KEYSPACE_LIMIT)
    sizes = await store.sizes(keys)
    limit = settings.max_body_bytes + HEADER_ALLOWANCE
    doomed: list[str] = []
    for key, size in zip(keys, sizes, strict=True):
        if size is None:
            continue
        path = _entry_path(key, prefix)
        if path is not None and match(path) is None:
            report["unrouted_entries"] += 1
        elif size > limit:
            report["oversized_entries"] += 1
        else:
            continue
        doomed.append(key)
        report["bytes_reclaimed"] += size + len(key)
    for start in range(0, len(doomed), 500):
        await store.delete(*doomed[start : start + 500])
    # Then the indexes: what was just deleted is orphaned too.
    for kind in ("IDX", "TAG"):
        for index in await store.keys_matching(f"{prefix}:{kind}:*", KEYSPACE_LIMIT):
            members = await store.index_members(index)
            sizes = await store.sizes(members)
            gone = [m for m, size in zip(members, sizes, strict=True) if size is None]
            if gone:
                report["orphaned_index_members"] += await store.prune_index(index, gone)
                report["bytes_reclaimed"] += sum(len(m.encode()) for m in gone)
    return report


_keyspace: dict[str, tuple[float, int, int]] = {}
_history: dict[str, deque[dict[str, Any]]] = {}


async def _keyspace_figures(store: AsyncStore, prefix: str) -> tuple[int, int, float]:
    now = time.time()
    cached = _keyspace.get(prefix)
    if cached is not None and now - cached[0] < KEYSPACE_REFRESH:
        return cached[1], cached[2], cached[0]
    keys = await store.keys_matching(f"{prefix}:GET:*", KEYSPACE_LIMIT)
    sizes = await store.sizes(keys)
    entries = sum(1 for size in sizes if size is not None)
    total = sum(size + len(key) for key, size in zip(keys, sizes, strict=True) if size)
    _keyspace[prefix] = (now, entries, total)
    return entries, total, now


async def stats(store: AsyncStore, settings: Settings, middlewares: list[Any]) -> dict[str, Any]:
    """Every process's counters (the shared tally, after adding this process's), the keyspace
    figures (reused for a minute), the backend's facts and this admin's recent history."""
    for mw in middlewares:
        flush = mw.flush_stats
        if asyncio.iscoroutinefunction(flush):
            await flush()
        else:
            await asyncio.to_thread(flush)
    body: dict[str, Any] = summarize(await store.read_stats(stats_key(settings.key_prefix)))
    entries, size, sampled_at = await _keyspace_figures(store, settings.key_prefix)
    body["entries"] = entries
    body["bytes"] = size
    body["keyspace_sampled_at"] = sampled_at
    backend = await store.info()
    breakers: set[str] = set()
    for mw in middlewares:
        state = getattr(getattr(mw.store, "breaker", None), "state", None)
        if isinstance(state, str):
            breakers.add(state)
    if breakers and backend.get("breaker") is None:
        backend["breaker"] = "open" if "open" in breakers else sorted(breakers)[0]
    body["backend"] = backend
    # This process's near-cache, if its middlewares have one (each process has its own).
    near = next((n for mw in middlewares if (n := getattr(mw.store, "near", None))), None)
    if near is not None:
        body["near_cache"] = near.figures()
    history = _history.setdefault(settings.key_prefix, deque(maxlen=HISTORY_POINTS))
    history.append(
        {
            "t": round(time.time(), 3),
            "hits": body["hits"],
            "misses": body["misses"],
            "hit_ratio": body["hit_ratio"],
        }
    )
    body["history"] = list(history)
    return body


async def warm(
    settings: Settings,
    principal: Principal,
    middlewares: list[Any],
    paths: list[str],
    host: bytes = b"localhost",
    scheme: str = "http",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fetch `paths` through this process's middleware, at most WARM_CONCURRENCY at a time, so
    each lands in the cache exactly as a client's request would put it there. The Host and
    scheme are the admin request's own (keys include the origin): warm through the host your
    clients use."""
    if not middlewares:
        raise LookupError(
            "no CacheMiddleware with this key_prefix runs in this process: nothing to warm "
            "through (build the admin app in the same process as the middleware)"
        )
    mw = middlewares[0]
    gate = asyncio.Semaphore(WARM_CONCURRENCY)
    venue_header = settings.venue_header

    async def one(target: str) -> tuple[str, int, dict[str, str]]:
        async with gate:
            path, _, query = target.partition("?")
            headers = [(b"host", host), (b"user-agent", b"cache-middleware-warm")]
            if principal.venue is not None and venue_header:
                headers.append((venue_header.lower().encode(), principal.venue.encode()))
            if hasattr(mw, "store") and asyncio.iscoroutinefunction(mw.store.get):
                return await _warm_asgi(mw, path, query, headers, scheme)
            return await asyncio.to_thread(_warm_wsgi, mw, path, query, headers, scheme)

    results = await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)
    warmed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for target, result in zip(paths, results, strict=True):
        if isinstance(result, BaseException):
            failed.append({"path": target, "error": f"{type(result).__name__}: {result}"})
            continue
        _, status, headers = result
        state = headers.get("x-cache")
        if status == 200 and state in ("MISS", "HIT", "STALE"):
            warmed.append({"path": target, "status": status, "x_cache": state})
        else:
            detail = headers.get("cache-status", "")
            reason = detail.split("detail=", 1)[1] if "detail=" in detail else "not cacheable"
            failed.append({"path": target, "status": status, "x_cache": state, "error": reason})
    return warmed, failed


async def _warm_asgi(
    mw: Any, path: str, query: str, headers: list[tuple[bytes, bytes]], scheme: str
) -> tuple[str, int, dict[str, str]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": query.encode("latin-1", "replace"),
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("localhost", 80),
    }
    sent = False
    start: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: as a client that keeps listening
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)

    await mw(scope, receive, send)
    names = {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
        for k, v in start.get("headers", [])
    }
    return path, int(start.get("status", 0)), names


def _warm_wsgi(
    mw: Any, path: str, query: str, headers: list[tuple[bytes, bytes]], scheme: str
) -> tuple[str, int, dict[str, str]]:
    from io import BytesIO

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": BytesIO(),
        "wsgi.errors": BytesIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        environ["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode("latin-1")
    start: dict[str, Any] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        start["status"] = int(status.split(" ", 1)[0])
        start["headers"] = {k.lower(): v for k, v in response_headers}
        return lambda data: None

    result = mw(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return path, int(start.get("status", 0)), dict(start.get("headers", {}))


def glob_matches(pattern: str, key: str) -> bool:
    return compile_glob(pattern).match(key)
