"""What the admin endpoints do, over the cache's async store: invalidate, clear, optimize,
warm, and the figures for stats. Validation (400) and scope checks (403) happen before anything
is deleted; a store failure raises StoreUnavailable (the endpoint answers 503, never a false
success).

What an invalidation may reach (docs/security.md, "Admin API abuse"):

* Every key and glob stays inside the cache's own namespaces: the key prefix and the shared
  manager's `manager_namespaces` from the config. A Redis database may hold other applications'
  keys (`session:abc`); a glob must start with one of `{namespace}:` as plain text, so a bare `*`
  or `*:config` is refused (400, `OutsideNamespaces`), and so is a key outside them.
* A glob costs at most MAX_PATTERN_LENGTH characters and MAX_PATTERN_WILDCARDS wildcards (400).
* A venue token reaches only its venue's entries. Whether a glob stays in a venue is read from
  the glob as Redis parses it (`_core.globs.parse_glob`), not from how its text ends: an
  unbalanced `[` turns `...*[:venue:lisbon` into a class. A glob that ends with the literal
  `:venue:{venue}` matches only that venue's entries (the last two components of an entry key
  are always a marker and its value: query parameter names can never be `venue`). A glob for
  the venue's Vary variants (`...:venue:{venue}:vary:*`) cannot be exact, since a query value
  may read `venue` (`?a=venue&lisbon=vary`), so each key it matches is parsed
  (`entry_venue`) and only the venue's own are deleted. Exact keys are parsed the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core.globs import (
    Token,
    compile_glob,
    ends_with_literal,
    literal_head,
    parse_glob,
    wildcard_count,
)
from .._core.keys import (
    entry_venue,
    escape_component,
    path_patterns,
    tag_index_key,
    venue_patterns,
)
from .._core.stats import summarize
from ..config import Settings
from ..storage import AsyncStore
from ..wiring import stats_key
from .auth import Principal
from .requests import BadRequest, InvalidateRequest

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_PATTERN_WILDCARDS",
    "Forbidden",
    "OutsideNamespaces",
    "check_glob",
    "check_key_namespace",
    "check_pattern_namespace",
    "clear",
    "entry_venue",
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
# A glob's cost: Redis' matcher, and the memory store's, take up to key length x pattern length
# per key, over every key of the database.
MAX_PATTERN_LENGTH = 256
MAX_PATTERN_WILDCARDS = 16
DELETE_BATCH = 500


class Forbidden(PermissionError):
    """The caller's token does not reach what the request names."""


class OutsideNamespaces(BadRequest):
    """A key or glob reaches beyond the cache's own namespaces (400; a ValueError to a CLI)."""


def namespaces(settings: Settings) -> tuple[str, ...]:
    """The key namespaces that are the cache's: its key prefix, then the manager's."""
    return (settings.key_prefix, *settings.manager_namespaces)


def _namespace_list(settings: Settings) -> str:
    return ", ".join(f"'{ns}:'" for ns in namespaces(settings))


def check_glob(pattern: str, what: str = "pattern") -> tuple[Token, ...]:
    """The glob's tokens, after bounding its cost: a BadRequest (a ValueError) says why not."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise BadRequest(f"{what}: at most {MAX_PATTERN_LENGTH} characters, got {len(pattern)}")
    tokens = parse_glob(pattern)
    wildcards = wildcard_count(tokens)
    if wildcards > MAX_PATTERN_WILDCARDS:
        raise BadRequest(
            f"{what}: at most {MAX_PATTERN_WILDCARDS} wildcards ('*' runs, '?' and [...] "
            f"classes), got {wildcards}"
        )
    return tokens


def check_pattern_namespace(
    pattern: str, tokens: tuple[Token, ...], settings: Settings, what: str = "pattern"
) -> None:
    """Refuse a glob that could match a key outside the cache's namespaces: its literal head
    (the text before its first wildcard, as Redis reads it) must start with `{namespace}:`."""
    head = literal_head(tokens)
    if any(head.startswith(f"{ns}:".encode()) for ns in namespaces(settings)):
        return
    if all(token.kind == "star" for token in tokens):
        raise OutsideNamespaces(
            f"{what}: {pattern!r} would delete every key in the Redis database, other "
            f"applications' included; the cache's keys start with {_namespace_list(settings)}"
        )
    raise OutsideNamespaces(
        f"{what}: {pattern!r} reaches outside the cache's namespaces: a pattern must start with "
        f"{_namespace_list(settings)} as plain text (add the shared cache manager's namespaces "
        "to manager_namespaces in the config)"
    )


def check_key_namespace(key: str, settings: Settings, what: str = "key") -> None:
    if not any(key.startswith(f"{ns}:") for ns in namespaces(settings)):
        raise OutsideNamespaces(
            f"{what}: {key!r} is not the cache's: keys start with {_namespace_list(settings)} "
            "(add the shared cache manager's namespaces to manager_namespaces in the config)"
        )


def _literal_run(tokens: tuple[Token, ...], text: bytes, start: int) -> bool:
    """Whether literal tokens spell `text` somewhere from token `start` on."""
    for at in range(start, len(tokens) - len(text) + 1):
        if ends_with_literal(tokens[at : at + len(text)], text):
            return True
    return False


def _venue_pattern_is_exact(
    pattern: str, tokens: tuple[Token, ...], prefix: str, venue: str
) -> bool:
    """A venue token's glob: True when every key it matches is the venue's entry; False when
    it names the venue's Vary variants, whose matches must each be checked (`entry_venue`);
    Forbidden otherwise."""
    head = f"{prefix}:GET:".encode()
    suffix = f":venue:{escape_component(venue)}".encode()
    if literal_head(tokens).startswith(head):
        if ends_with_literal(tokens, suffix):
            return True
        if _literal_run(tokens, suffix + b":vary:", len(head)):
            return False
    raise Forbidden(
        f"pattern {pattern!r} reaches outside venue {venue!r}: a venue token's patterns start "
        f"with '{prefix}:GET:' and end with '{suffix.decode()}' (or hold "
        f"'{suffix.decode()}:vary:'), written as plain text: no wildcard or [class] may stand "
        "for any of it"
    )


def _is_exact_for_venue(pattern: str, venue: str) -> bool:
    """Whether a glob the cache built itself (paths, clear) ends with the venue's segment."""
    return ends_with_literal(parse_glob(pattern), f":venue:{escape_component(venue)}".encode())


async def _move_epoch(store: AsyncStore, prefix: str) -> None:
    """Void the fills under way, as `delete_matching` does before its scan: `delete` moves the
    epoch of the cache a key names even when nothing is there, and `{prefix}:GET:` (the head of
    every entry key, the entry of no request: a path is never empty) is never there."""
    await store.delete(f"{prefix}:GET:")


async def _delete_keys(store: AsyncStore, keys: list[str]) -> int:
    count = 0
    for start in range(0, len(keys), DELETE_BATCH):
        count += await store.delete(*keys[start : start + DELETE_BATCH])
    return count


class _Selection:
    """What an invalidation deletes: globs whose every match is in scope, globs whose matches
    are each checked (a venue's Vary variants), exact keys and tag indexes."""

    def __init__(self) -> None:
        self.exact: list[str] = []
        self.checked: list[str] = []
        self.keys: list[str] = []
        self.indexes: list[str] = []

    def add_glob(self, pattern: str, exact: bool) -> None:
        (self.exact if exact else self.checked).append(pattern)


def _select(settings: Settings, principal: Principal, request: InvalidateRequest) -> _Selection:
    """Every item checked before anything is deleted: 400 or 403 for the first bad one."""
    prefix, venue = settings.key_prefix, principal.venue
    selection = _Selection()
    for i, pattern in enumerate(request.patterns):
        tokens = check_glob(pattern, f"patterns[{i}]")
        if venue is None:
            check_pattern_namespace(pattern, tokens, settings, f"patterns[{i}]")
            selection.add_glob(pattern, True)
        else:
            selection.add_glob(pattern, _venue_pattern_is_exact(pattern, tokens, prefix, venue))
    for i, path in enumerate(request.paths):
        wildcards = path.count("*") + path.count("?")
        if wildcards > MAX_PATTERN_WILDCARDS:
            raise BadRequest(
                f"paths[{i}]: at most {MAX_PATTERN_WILDCARDS} wildcards ('*' and '?'), "
                f"got {wildcards}"
            )
        for pattern in path_patterns(prefix, path, venue):
            selection.add_glob(pattern, venue is None or _is_exact_for_venue(pattern, venue))
    for i, key in enumerate(request.keys):
        if venue is None:
            check_key_namespace(key, settings, f"keys[{i}]")
        elif entry_venue(key, prefix) != escape_component(venue):
            raise Forbidden(f"key {key!r} is not an entry of venue {venue!r}")
        selection.keys.append(key)
    selection.indexes = [tag_index_key(prefix, tag, venue) for tag in request.tags]
    return selection


def _keeper(settings: Settings, principal: Principal) -> Callable[[str], bool]:
    own = escape_component(principal.venue) if principal.venue is not None else None
    prefix = settings.key_prefix
    return lambda key: entry_venue(key, prefix) == own


async def invalidate(
    store: AsyncStore, settings: Settings, principal: Principal, request: InvalidateRequest
) -> int:
    selection = _select(settings, principal, request)
    keep = _keeper(settings, principal)
    if request.dry_run:
        # Each key once, however many selectors reach it: what the deletion would report.
        found: set[str] = set()
        for pattern in selection.exact:
            found.update(await store.keys_matching(pattern))
        for pattern in selection.checked:
            found.update(k for k in await store.keys_matching(pattern) if keep(k))
        candidates = list(selection.keys)
        for index in selection.indexes:
            candidates.extend(await store.index_members(index))
        sizes = await store.sizes(candidates)
        found.update(k for k, size in zip(candidates, sizes, strict=True) if size is not None)
        return len(found)
    count = 0
    for pattern in selection.exact:
        count += await store.delete_matching(pattern)
    if selection.checked:
        await _move_epoch(store, settings.key_prefix)
        for pattern in selection.checked:
            doomed = [k for k in await store.keys_matching(pattern) if keep(k)]
            count += await _delete_keys(store, doomed)
    if selection.keys:
        count += await store.delete(*selection.keys)
    for index in selection.indexes:
        count += await store.delete_index(index)
    if selection.indexes:
        # A tag's entries may be filling right now (a Cache-Tag is only known once the answer
        # is in): move the invalidation epoch so no fill that began before this writes.
        await store.delete(*selection.indexes)
    return count


async def clear(store: AsyncStore, settings: Settings, principal: Principal) -> int:
    prefix, venue = settings.key_prefix, principal.venue
    if venue is None:
        # Entries, indexes and leases; the shared statistics are kept.
        patterns = [f"{prefix}:{kind}:*" for kind in ("GET", "IDX", "TAG", "LOCK")]
        checked: list[str] = []
    else:
        patterns = [p for p in venue_patterns(prefix, venue) if _is_exact_for_venue(p, venue)]
        checked = [p for p in venue_patterns(prefix, venue) if not _is_exact_for_venue(p, venue)]
    count = 0
    for pattern in patterns:
        count += await store.delete_matching(pattern)
    keep = _keeper(settings, principal)
    for pattern in checked:  # the venue's Vary variants: each key's venue read, not guessed
        count += await _delete_keys(
            store, [k for k in await store.keys_matching(pattern) if keep(k)]
        )
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
