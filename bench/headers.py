"""What each header a HIT replays costs the server, under each server.

    python bench/headers.py                          # 3 rounds x 4 s, writes the docs section
    python bench/headers.py --servers uvicorn,granian --rounds 5 --no-docs

A HIT answers with nine headers (`compare_apps.HIT_HEADERS`, the ones a near-cache HIT sends,
values as long as the bench's). This serves `hit-ceiling` (fixed bytes, no lookup) with four
nested sets of them, under each server, and measures the server's CPU per request as
`servers.py` does (process tree utime + stime over the wrk run, pinned, interleaved rounds):

    app    content-type, content-length                       what the bare app sends
    http   + etag, cache-control, age                         what an HTTP cache owes clients
    seed   + x-cache, x-cache-key, x-cache-ttl                the seed gateway's debug headers
    all    + cache-status                                     what a HIT sends today

The slope of CPU against the number of headers (least squares, per round, median) is what one
header costs each server; the in-process figure is uvicorn's own checks per header (the
regular expressions `inprocess.py` applies), header by header. Writes
`bench/results/headers.json` and the `## Headers of a HIT` section of `docs/benchmarks.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from compare import HEADERS_TITLE as TITLE
from compare import write_section
from compare_apps import ENV_KEY_PREFIX, ENV_REDIS_URL, ENV_REPLAY_HEADERS, HIT_HEADERS
from harness import (
    BENCH_DIR,
    cpu_seconds,
    dump_json,
    fetch,
    parse_pin,
    pin,
    process_tree,
    raise_interrupt,
    require_wrk,
    resolve_pin,
    run_wrk,
    stop,
    wait_ready,
)
from inprocess import uvicorn_headers
from servers import SERVER_FLAGS, start_factory

RESULTS_FILE = BENCH_DIR / "results" / "headers.json"
SETS = {
    "app": ["content-type", "content-length"],
    "http": ["content-type", "content-length", "etag", "cache-control", "age"],
    "seed": [
        "content-type", "content-length", "etag", "cache-control", "age",
        "x-cache", "x-cache-key", "x-cache-ttl",
    ],
    "all": [name.decode() for name, _ in HIT_HEADERS],
}  # fmt: skip
WHY = {
    "content-type": "the app's: what the body is",
    "content-length": "the app's: framing (else chunked)",
    "etag": "validator: lets clients revalidate with If-None-Match (a 304)",
    "cache-control": "freshness for clients and proxies downstream",
    "age": "RFC 9111 §5.1: a cache MUST send it with a stored response",
    "x-cache": "the seed's HIT/MISS marker",
    "x-cache-key": "the seed's: the key's first 50 characters (`expose_key_header: false`)",
    "x-cache-ttl": "the seed's: the route TTL",
    "cache-status": "RFC 9211: hit, ttl left, the reason of a bypass",
}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y on x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def in_process_costs(requests: int = 50_000) -> dict[str, float]:
    """Nanoseconds uvicorn's checks and joining take per header, header by header: the best of
    5 batches with that one header, less the best with none (the call itself)."""

    def best(headers: list[tuple[bytes, bytes]]) -> float:
        fastest = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(requests):
                uvicorn_headers(headers)
            fastest = min(fastest, (time.perf_counter() - started) / requests * 1e9)
        return fastest

    empty = best([])
    return {name.decode(): best([(name, value)]) - empty for name, value in HIT_HEADERS}


def measure(args: argparse.Namespace, servers: list[str]) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR), ENV_REDIS_URL: "", ENV_KEY_PREFIX: "x"}
    cells = [(server, name) for name in SETS for server in servers]
    running = {}
    rows: list[dict[str, Any]] = []
    try:
        for server, name in cells:
            cell_env = {**env, ENV_REPLAY_HEADERS: ",".join(SETS[name])}
            running[(server, name)] = start_factory(
                server, "compare_apps:asgi_replay_app", f"headers-{name}/{server}", cell_env
            )
        for (server, name), s in running.items():
            wait_ready(s)
            reply = fetch(s.url)
            sent = {h for h in reply.headers if h in WHY}
            if sent != set(SETS[name]):
                raise SystemExit(f"{name}/{server}: sends {sorted(sent)}, not {SETS[name]}")
            load(s.url, args, args.warmup)
        trees = {cell: process_tree(s.process.pid) for cell, s in running.items()}
        for round_no in range(1, args.rounds + 1):
            for cell in cells if round_no % 2 else cells[::-1]:
                used = cpu_seconds(trees[cell])
                result = load(running[cell].url, args, args.duration)
                used = cpu_seconds(trees[cell]) - used
                us = used / result.requests * 1e6
                rows.append({"round": round_no, "server": cell[0], "set": cell[1], "cpu_us": us})
                print(f"  round {round_no} {cell[1]:<5} {cell[0]:<13} {us:6.1f} us", flush=True)
    finally:
        for s in running.values():
            stop(s)
    return rows


def load(url: str, args: argparse.Namespace, duration: float) -> Any:
    return run_wrk(url, duration=duration, connections=args.connections, threads=args.threads)


def summarize(rows: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for server in servers:
        mine = [r for r in rows if r["server"] == server]
        per_set = {n: statistics.median(r["cpu_us"] for r in mine if r["set"] == n) for n in SETS}
        slopes = []
        for round_no in sorted({r["round"] for r in mine}):
            points = [(len(SETS[r["set"]]), r["cpu_us"]) for r in mine if r["round"] == round_no]
            slopes.append(slope(points))
        out[server] = {
            "cpu_us": per_set,
            "us_per_header": statistics.median(slopes),
            "us_per_header_min": min(slopes),
            "us_per_header_max": max(slopes),
        }
    return out


def render(report: dict[str, Any]) -> str:
    servers = list(report["summary"])
    s = report["settings"]
    lines = [
        f"Generated by `bench/headers.py` ({report['timestamp']}): the `hit-ceiling` app (fixed "
        "bytes, no lookup) replaying nested sets of a HIT's nine headers, CPU per request of "
        f"each server's process tree, median of {s['rounds']} interleaved rounds of "
        f"{s['duration']:g} s, pinning {s['pin'] or 'none'}.",
        "",
        "| headers | count | " + " | ".join(servers) + " |",
        "|---|---:|" + "---:|" * len(servers),
    ]
    for name, names in SETS.items():
        cells = [f"{report['summary'][x]['cpu_us'][name]:.1f}" for x in servers]
        lines.append(f"| `{name}` | {len(names)} | " + " | ".join(cells) + " |")
    lines.append(
        "| one header (slope) | 1 | "
        + " | ".join(
            f"{report['summary'][x]['us_per_header']:.2f} "
            f"({report['summary'][x]['us_per_header_min']:.2f}-"
            f"{report['summary'][x]['us_per_header_max']:.2f})"
            for x in servers
        )
        + " |"
    )
    lines += [
        "",
        "`app`: content-type, content-length; `http`: + etag, cache-control, age; `seed`: + "
        "x-cache, x-cache-key, x-cache-ttl; `all`: + cache-status (what a HIT sends today). "
        "Header by header, with uvicorn's own checks and joining timed in process:",
        "",
        "| header | bytes on the wire | uvicorn's checks, in process (ns) | why a HIT sends it |",
        "|---|---:|---:|---|",
    ]
    for name, value in HIT_HEADERS:
        key = name.decode()
        wire = len(name) + len(value) + 4
        ns = report["in_process_ns"][key]
        lines.append(f"| `{key}` | {wire} | {ns:.0f} | {WHY[key]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", default="uvicorn,granian,granian-rust")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pin", default="auto")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--docs-from", type=Path)
    args = parser.parse_args(argv)
    if args.docs_from:
        import json

        write_section(TITLE, render(json.loads(args.docs_from.read_text())))
        return 0
    if not require_wrk():
        return 2
    servers = [x for x in args.servers.split(",") if x]
    unknown = set(servers) - set(SERVER_FLAGS)
    if unknown:
        raise SystemExit(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVER_FLAGS)}")
    signal.signal(signal.SIGTERM, raise_interrupt)
    pinning = resolve_pin(args.pin)
    if pinning:
        pin(*parse_pin(pinning))
    rows = measure(args, servers)
    report = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {**{k: v for k, v in vars(args).items() if k != "docs_from"}, "pin": pinning},
        "run": secrets.token_hex(4),
        "rows": rows,
        "summary": summarize(rows, servers),
        "in_process_ns": in_process_costs(),
    }
    dump_json(RESULTS_FILE, report)
    print(render(report))
    if args.docs:
        write_section(TITLE, render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
