"""The `cache-middleware` command: an operator's day from a shell.

`demo` serves the sample app; `check` validates a config (and with `--connect` reaches Redis
and the broker); `stats`, `invalidate` and `clear` act on a running cache through its Redis, as
the admin API does, publishing the same lifecycle events; `events consume` runs the worker.

Exit codes (docs/cli.md): 0 done; 1 the config is invalid, or names no Redis to act on;
2 a usage error (argparse's own, `clear` without `--yes`, a bad selector); 3 the store or the
broker cannot be reached (nothing was done); 4 done, but events could not be published.
Failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import Settings, load_config
from .errors import ConfigError, StoreUnavailable

__all__ = ["format_route_table", "main"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_EVENTS_UNPUBLISHED = 4

# An operator's command may SCAN a large keyspace over a network: each Redis call gets this long
# at least (the app's `redis_timeout` is tuned for the request path, 100 ms by default).
CLI_REDIS_TIMEOUT = 5.0
# Keys `check --connect` counts under the prefix at most (one SCAN pass; beyond, "N+").
COUNT_LIMIT = 1_000_000
# How long buffered events get to reach the broker before the command exits.
EVENTS_FLUSH_TIMEOUT = 5.0


class CommandFailed(Exception):
    """One line for stderr and the exit code: how every command reports a failure."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def format_route_table(settings: Settings) -> str:
    backend = settings.redis_url if settings.uses_redis else (settings.redis_url or "memory://")
    lines = [
        f"{settings.source}: OK",
        f"store: {backend}   key_prefix: {settings.key_prefix}   "
        f"max_body_bytes: {settings.max_body_bytes}",
    ]
    if settings.venue_header:
        lines.append(f"venue_header: {settings.venue_header}")
    if settings.user_header:
        lines.append(f"user_header: {settings.user_header}")
    if not settings.routes:
        lines.append("no routes: every request passes through uncached")
        return "\n".join(lines)
    rows = [("ROUTE", "TTL", "SCOPE", "VARY_BY", "CONDITION")]
    for route in sorted(settings.routes, key=lambda r: r.path):
        rows.append(
            (
                route.path,
                str(route.ttl),
                "private" if route.private else "public",
                ",".join(route.vary_by) if route.vary_by is not None else "(whole query)",
                route.condition or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


# -- shared steps --------------------------------------------------------------------------------


def _load(path: str) -> Settings:
    """The cache settings of a file, its `events:` section validated too (a typo there must
    fail `check` as one in `routes:` does)."""
    # `condition:` import strings name the user's own modules: import them as the app would,
    # from the directory the command runs in (as uvicorn's --app-dir does by default).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = load_config(path)
        _events_settings(path)
    except ConfigError as exc:
        raise CommandFailed(str(exc), EXIT_CONFIG) from exc
    return settings


def _events_settings(path: str) -> Any:
    """The file's `events:` settings, or None when it has no such section."""
    from .config import _read_yaml

    data = _read_yaml(Path(path))
    if not isinstance(data, dict) or data.get("events") is None:
        return None
    from .events import load_events_config

    return load_events_config(path)


def _redis_settings(path: str) -> Settings:
    """Settings for a command that acts on the running cache: only Redis is shared with it."""
    settings = _load(path)
    if not settings.uses_redis:
        raise CommandFailed(
            f"{settings.source}: the store is the in-process memory store (no redis_url): each "
            "app process holds its own, which no other process can reach; the command line acts "
            "on a cache in Redis (set redis_url, or CACHE_REDIS_URL)",
            EXIT_CONFIG,
        )
    # The request path's timeout is too short for an operator's SCANs over a network.
    return dataclasses.replace(
        settings, redis_timeout=max(settings.redis_timeout, CLI_REDIS_TIMEOUT)
    )


def _with_store(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(store)` on a store of its own, closed afterwards; an unreachable store is
    exit 3 (the stores turn every client failure into StoreUnavailable)."""
    from .storage import make_async_store

    async def run() -> T:
        store = make_async_store(settings)
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        raise CommandFailed(f"cannot reach the cache store {exc}", EXIT_UNREACHABLE) from exc


@contextlib.contextmanager
def _package_logs_quiet() -> Iterator[None]:
    """The store and the event sink log outages for a server's operators (the store with a
    traceback when it is not a network error, the sink at each retry); a command says what
    happened in its own one line instead. So, unless the process configured logging itself,
    the package's records go nowhere while the command runs."""
    package_logger = logging.getLogger("cache_middleware")
    null = logging.NullHandler()
    saved = package_logger.propagate
    quiet = not logging.getLogger().handlers
    if quiet:
        package_logger.addHandler(null)
        package_logger.propagate = False
    try:
        yield
    finally:
        if quiet:
            package_logger.removeHandler(null)
            package_logger.propagate = saved


def _print_json(body: dict[str, Any]) -> None:
    print(json.dumps(body, indent=2, default=str))


# -- events --------------------------------------------------------------------------------------


def _event_sink(path: str) -> Any:
    """The process's sink for the file's `events:` section (it publishes to the broker), or the
    logging sink without one: the sink the admin API of the same config uses."""
    try:
        from .events.process_sink import events_settings_of, sink_for
    except ImportError:  # an older tree without process sinks: events are logged only
        from .events.sink import LoggingSink

        return LoggingSink()
    return sink_for(events_settings_of(path))


def _flush_events() -> int:
    """Publish what the process sinks hold, and close them (the command is the process's whole
    life; a later `sink_for` would make new ones); how many events could not be published."""
    try:
        from .events.process_sink import flush_process_sinks
    except ImportError:
        return 0
    return flush_process_sinks(EVENTS_FLUSH_TIMEOUT)


def _emit(path: str, sink: Any, event_type: str, data: dict[str, Any]) -> int:
    """Hand the action's event to the sink and see it published before the process exits."""
    from .events.sink import LoggingSink

    sink.emit(event_type, data)
    left = _flush_events()
    if left:
        raise CommandFailed(
            f"done, but {left} {event_type} event(s) could not be published to the broker "
            f"(events.broker_url in {path})",
            EXIT_EVENTS_UNPUBLISHED,
        )
    if isinstance(sink, LoggingSink) and _events_settings(path) is not None:
        raise CommandFailed(
            f"done, but the {event_type} event was not published: {path} has an events: "
            "section and kombu is not installed (pip install 'cache-middleware[events]')",
            EXIT_EVENTS_UNPUBLISHED,
        )
    return EXIT_OK


# -- commands ------------------------------------------------------------------------------------


def _check(path: str, connect: bool) -> int:
    settings = _load(path)
    print(format_route_table(settings), flush=True)
    if connect:
        print()
        _connect_redis(settings)
        events = _events_settings(path)
        if events is not None:
            _connect_broker(events)
    return EXIT_OK


def _connect_redis(settings: Settings) -> None:
    if not settings.uses_redis:
        print("redis: none: the memory store lives in each app process (nothing to connect to)")
        return
    from .storage.urls import database_of

    prefix = f"{settings.key_prefix}:"
    settings = dataclasses.replace(
        settings, redis_timeout=max(settings.redis_timeout, CLI_REDIS_TIMEOUT)
    )

    async def probe(store: Any) -> tuple[dict[str, Any], list[str]]:
        return await store.info(), await store.keys_matching(f"{prefix}*", COUNT_LIMIT)

    facts, keys = _with_store(settings, probe)
    assert settings.redis_url is not None
    count = f"{len(keys)}+" if len(keys) >= COUNT_LIMIT else str(len(keys))
    kind = "Redis Cluster" if facts.get("type") == "redis-cluster" else "Redis"
    print(
        f"redis: reachable: {kind} {facts.get('redis_version')}, "
        f"db {database_of(settings.redis_url)}, {count} keys under {prefix!r}",
        flush=True,
    )


def _connect_broker(events: Any) -> None:
    try:
        kombu: Any = importlib.import_module("kombu")  # untyped: Any, as in events/consumer.py
    except ImportError:
        print(
            "broker: not checked: kombu is not installed, so events are only logged "
            "(pip install 'cache-middleware[events]')"
        )
        return
    connection = kombu.Connection(events.broker_url, connect_timeout=events.connect_timeout)
    where = connection.as_uri()  # the password masked
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        server = getattr(connection.connection, "server_properties", None) or {}
        product = _text(server.get("product")) or connection.transport_cls
        version = _text(server.get("version"))
    except Exception as exc:  # kombu and amqp raise many kinds: each is "not reachable"
        raise CommandFailed(
            f"cannot reach the broker {where}: {type(exc).__name__}: {exc}", EXIT_UNREACHABLE
        ) from exc
    finally:
        connection.release()
    print(f"broker: reachable: {product} {version} at {where}".rstrip(), flush=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _stats(path: str) -> int:
    from .admin import operations

    settings = _redis_settings(path)
    body = _with_store(settings, lambda store: operations.stats(store, settings, []))
    _print_json(body)
    return EXIT_OK


def _invalidate(path: str, args: argparse.Namespace) -> int:
    from .admin import operations
    from .admin.auth import Principal
    from .admin.requests import BadRequest, parse_invalidate

    settings = _redis_settings(path)
    selectors = {"patterns": args.pattern, "paths": args.path, "tags": args.tag, "keys": args.key}
    if not any(selectors.values()):
        raise CommandFailed(
            "nothing to invalidate: give --pattern, --path, --tag or --key", EXIT_USAGE
        )
    try:
        # The admin API's own validation, so both refuse the same requests with the same words.
        request = parse_invalidate(json.dumps({**selectors, "dry_run": args.dry_run}).encode())
    except BadRequest as exc:
        raise CommandFailed(_as_flags(str(exc), selectors), EXIT_USAGE) from exc
    sink = _event_sink(path)  # before deleting: a bad events: section must stop us first
    try:
        count = _with_store(
            settings,
            lambda store: operations.invalidate(store, settings, Principal(None), request),
        )
    except (operations.Forbidden, BadRequest) as exc:
        # What the operation itself refuses: a glob or key outside the cache's namespaces, a
        # glob too costly to run (the admin API's 403 and 400, in the same words).
        raise CommandFailed(_as_flags(str(exc), selectors), EXIT_USAGE) from exc
    _print_json({"invalidated": count, "dry_run": request.dry_run, **selectors})
    if request.dry_run:
        return EXIT_OK
    # The admin API's event, word for word: consumers cannot tell a shell from an HTTP call.
    return _emit(
        path,
        sink,
        "cache.invalidated",
        {"reason": "manual", "venue": None, **selectors, "count": count},
    )


_ITEM = re.compile(r"^(patterns|paths|tags|keys)\[(\d+)\]: ")
_FLAGS = {"patterns": "--pattern", "paths": "--path", "tags": "--tag", "keys": "--key"}


def _as_flags(message: str, selectors: dict[str, list[str]]) -> str:
    """The admin API's `paths[0]: ...` in the words of the command line: `--path 'x': ...`."""
    found = _ITEM.match(message)
    if found is None:
        return message
    kind, index = found.group(1), int(found.group(2))
    return f"{_FLAGS[kind]} {selectors[kind][index]!r}: {message[found.end() :]}"


def _clear(path: str, yes: bool) -> int:
    from .admin import operations
    from .admin.auth import Principal

    settings = _redis_settings(path)
    if not yes:
        raise CommandFailed(
            f"clear removes every entry under {settings.key_prefix!r} from "
            f"{_masked(settings.redis_url)}: run it again with --yes",
            EXIT_USAGE,
        )
    sink = _event_sink(path)
    count = _with_store(settings, lambda store: operations.clear(store, settings, Principal(None)))
    _print_json({"cleared": count, "key_prefix": settings.key_prefix})
    return _emit(
        path,
        sink,
        "cache.cleared",
        {"venue": None, "prefix": settings.key_prefix, "count": count},
    )


def _masked(url: str | None) -> str:
    from .config import _without_password

    return _without_password(url or "")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _require_extra(module: str, extra: str, needed_by: str) -> Any:
    """The optional dependency `module`, imported; without it, the command fails saying which
    extra of the package installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CommandFailed(
            f"{needed_by} needs {module}: pip install 'cache-middleware[{extra}]'", EXIT_CONFIG
        ) from None


def _consume(path: str, log_level: str) -> int:
    _require_extra("kombu", "events", "the event bridge")
    from .events import run_consumer

    # The worker says what it does on the `cache_middleware.events` logger (connected, each
    # reconnection, each dead-lettered message): an operator reads that on stderr.
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A process manager stops workers with SIGTERM: leave as on Ctrl-C, acking nothing half-done.
    signal.signal(signal.SIGTERM, _stop)
    try:
        run_consumer(path)
    except ConfigError as exc:
        raise CommandFailed(str(exc), EXIT_CONFIG) from exc
    except StoreUnavailable as exc:
        raise CommandFailed(f"cannot reach the cache store {exc}", EXIT_UNREACHABLE) from exc
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _demo(host: str, port: int) -> int:
    uvicorn = _require_extra("uvicorn", "demo", "the demo")
    from .demo.app import create_app

    app = create_app()
    print(f"cache-middleware demo on the memory store: http://{host}:{port}/", flush=True)
    print(f"try: curl -i http://{host}:{port}/api/events  (twice: MISS, then HIT)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return EXIT_OK


# -- arguments -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cache-middleware",
        description="HTTP response cache for ASGI and WSGI apps.",
        epilog="exit codes: 0 done, 1 bad config, 2 usage, 3 store or broker unreachable, "
        "4 done but events unpublished (docs/cli.md)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="serve the sample app on the memory store")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    check = commands.add_parser("check", help="validate a config file and print its route table")
    check.add_argument("file", help="path to the YAML config")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also reach Redis (version, db, keys under key_prefix) and the events broker",
    )
    stats = commands.add_parser("stats", help="print the cache's stats as JSON (as the admin API)")
    stats.add_argument("file", help="path to the YAML config (with a Redis redis_url)")
    invalidate = commands.add_parser(
        "invalidate", help="drop entries by key glob, path, tag or key; prints the count as JSON"
    )
    invalidate.add_argument("file", help="path to the YAML config (with a Redis redis_url)")
    for flag, what in (
        ("--pattern", "a glob over cache keys"),
        ("--path", "a request path: its entries, every query and variant"),
        ("--tag", "a tag from a route's tags: or a Cache-Tag header"),
        ("--key", "one cache key, exactly"),
    ):
        invalidate.add_argument(flag, action="append", default=[], help=f"{what} (repeatable)")
    invalidate.add_argument(
        "--dry-run", action="store_true", help="count what would be dropped; drop nothing"
    )
    clear = commands.add_parser("clear", help="drop every entry under key_prefix (needs --yes)")
    clear.add_argument("file", help="path to the YAML config (with a Redis redis_url)")
    clear.add_argument("--yes", action="store_true", help="yes, drop every entry")
    events = commands.add_parser("events", help="the Kombu event bridge")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    consume = event_commands.add_parser(
        "consume",
        help="invalidate on data.updated / user.updated events, and report expired entries "
        "with events.report_expired (runs until stopped)",
    )
    consume.add_argument("--config", required=True, help="path to the YAML config")
    consume.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the worker logs on stderr (default INFO: connections, reconnections, "
        "dead-lettered messages)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "events":
        return _consume(args.config, args.log_level)
    if args.command == "demo":
        return _demo(args.host, args.port)
    with _package_logs_quiet():
        if args.command == "check":
            return _check(args.file, args.connect)
        if args.command == "stats":
            return _stats(args.file)
        if args.command == "invalidate":
            return _invalidate(args.file, args)
        return _clear(args.file, args.yes)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
