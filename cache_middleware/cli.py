"""The `cache-middleware` command: `demo` serves the sample app, `check` validates a config."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from .config import Settings, load_config
from .errors import ConfigError

__all__ = ["format_route_table", "main"]


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


def _check(path: str) -> int:
    # `condition:` import strings name the user's own modules: import them as the app would,
    # from the directory the command runs in (as uvicorn's --app-dir does by default).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_route_table(settings))
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _consume(path: str) -> int:
    try:
        from .events import run_consumer
    except ImportError:
        print(
            "error: the event bridge needs kombu: pip install 'cache-middleware[events]'",
            file=sys.stderr,
        )
        return 1
    # A process manager stops workers with SIGTERM: leave as on Ctrl-C, acking nothing half-done.
    signal.signal(signal.SIGTERM, _stop)
    try:
        run_consumer(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _demo(host: str, port: int) -> int:
    try:
        import uvicorn
    except ImportError:
        print(
            "error: the demo needs uvicorn: pip install 'cache-middleware[demo]'", file=sys.stderr
        )
        return 1
    from .demo.app import create_app

    app = create_app()
    print(f"cache-middleware demo on the memory store: http://{host}:{port}/", flush=True)
    print(f"try: curl -i http://{host}:{port}/api/events  (twice: MISS, then HIT)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cache-middleware", description="HTTP response cache for ASGI and WSGI apps."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="serve the sample app on the memory store")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    check = commands.add_parser("check", help="validate a config file and print its route table")
    check.add_argument("file", help="path to the YAML config")
    events = commands.add_parser("events", help="the Kombu event bridge")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    consume = event_commands.add_parser(
        "consume",
        help="invalidate on data.updated / user.updated events, and report expired entries "
        "with events.report_expired (runs until stopped)",
    )
    consume.add_argument("--config", required=True, help="path to the YAML config")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.file)
    if args.command == "events":
        return _consume(args.config)
    return _demo(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
