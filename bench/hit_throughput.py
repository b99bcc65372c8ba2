"""How fast is a cache HIT compared with the bare app? (`python bench/hit_throughput.py`)

Starts two uvicorn servers (1 worker each) on loopback: the plain Starlette app from
`bench/apps.py` (the static ceiling) and the same app behind `CacheMiddleware` on Redis. After
warming the cache, `wrk` drives both with the same load in interleaved rounds (static, cached,
static, cached, ...): on a small, noisy machine, drift then hits both sides alike, and each
cached round is compared with the static round just before it. Prints req/s per round and the
median cached/static ratio, and writes everything to bench/results/latest.json.
For every peer and variant side by side, see `bench/compare.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

# So `apps` and `harness` import the same way uvicorn's --app-dir does.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import BODY, ENV_KEY_PREFIX, ENV_REDIS_URL, EVENTS_PATH
from harness import (
    BENCH_DIR,
    Server,
    delete_bench_keys,
    dump_json,
    fetch,
    installed,
    raise_interrupt,
    require_wrk,
    run_wrk,
    start_uvicorn,
    stop,
    wait_ready,
)

RESULTS_FILE = BENCH_DIR / "results" / "latest.json"


@dataclass
class RoundResult:
    round: int
    server: str
    requests_per_sec: float
    latency_avg: str
    latency_max: str
    non_2xx: int
    socket_errors: str


# -- setup -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    return parser.parse_args(argv)


def check_servers(static: Server, cached: Server) -> None:
    """Both serve the same body, and the cached server answers from Redis after one request."""
    if fetch(static.url).body != BODY:
        raise SystemExit("static server returned an unexpected body")
    fetch(cached.url)  # MISS: stores the entry
    # The entry is written just after the MISS response is handed to the server, so a client
    # as quick as this one may need a moment before the HIT.
    deadline = time.monotonic() + 2
    reply = fetch(cached.url)
    while reply.header("x-cache") != "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = fetch(cached.url)
    if reply.header("x-cache") != "HIT" or reply.body != BODY:
        raise SystemExit(
            f"cached server did not replay the entry (x-cache: {reply.header('x-cache')})"
        )


# -- load --------------------------------------------------------------------------------------


def run_rounds(static: Server, cached: Server, args: argparse.Namespace) -> list[RoundResult]:
    results: list[RoundResult] = []
    for round_no in range(1, args.rounds + 1):
        for server in (static, cached):
            wrk = run_wrk(
                server.url,
                duration=args.duration,
                connections=args.connections,
                threads=args.threads,
            )
            result = RoundResult(
                round=round_no,
                server=server.name,
                requests_per_sec=wrk.requests_per_sec,
                latency_avg=wrk.latency_avg,
                latency_max=wrk.latency_max,
                non_2xx=wrk.non_2xx,
                socket_errors=wrk.socket_errors,
            )
            print(
                f"  round {round_no} {server.name:<6} {result.requests_per_sec:>10.0f} req/s",
                flush=True,
            )
            results.append(result)
    return results


# -- report ------------------------------------------------------------------------------------


def summarize(results: list[RoundResult]) -> dict[str, float]:
    static = [r.requests_per_sec for r in results if r.server == "static"]
    cached = [r.requests_per_sec for r in results if r.server == "cached"]
    # Paired by round: each cached round against the static round run just before it.
    ratios = [c / s for s, c in zip(static, cached, strict=True)]
    return {
        "static_median_rps": statistics.median(static),
        "cached_median_rps": statistics.median(cached),
        "median_ratio_cached_over_static": statistics.median(ratios),
        "ratio_of_medians": statistics.median(cached) / statistics.median(static),
    }


def print_table(results: list[RoundResult], summary: dict[str, float]) -> None:
    by_round: dict[int, dict[str, RoundResult]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.server] = r
    print(f"\n{'round':>5} {'static req/s':>13} {'cached req/s':>13} {'ratio':>7}")
    for round_no, pair in sorted(by_round.items()):
        s, c = pair["static"].requests_per_sec, pair["cached"].requests_per_sec
        print(f"{round_no:>5} {s:>13.0f} {c:>13.0f} {c / s:>7.3f}")
    print(
        f"{'median':>5} {summary['static_median_rps']:>13.0f} "
        f"{summary['cached_median_rps']:>13.0f} "
        f"{summary['median_ratio_cached_over_static']:>7.3f}"
    )
    problems = [r for r in results if r.non_2xx or r.socket_errors]
    for r in problems:
        print(
            f"WARNING round {r.round} {r.server}: non-2xx={r.non_2xx} "
            f"socket errors: {r.socket_errors or 'none'}"
        )


def write_json(
    args: argparse.Namespace,
    results: list[RoundResult],
    summary: dict[str, float],
    load_before: float,
) -> None:
    report = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": vars(args),
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "uvloop": installed("uvloop"),
            "httptools": installed("httptools"),
            "body_bytes": len(BODY),
            # Other work on the machine just before the run: a high value means noisy numbers.
            "loadavg_1min_before": load_before,
        },
        "summary": summary,
        "rounds": [asdict(r) for r in results],
    }
    dump_json(RESULTS_FILE, report)
    print(f"\nwrote {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")


# -- cleanup -----------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(redis_url: str) -> Iterator[tuple[Server, Server]]:
    """Both servers, stopped and their Redis keys deleted however the block ends."""
    prefix = f"bench:{secrets.token_hex(4)}"
    env = {**os.environ, ENV_REDIS_URL: redis_url, ENV_KEY_PREFIX: prefix}
    started: list[Server] = []
    try:
        started.append(start_uvicorn("static", "apps:static_app", env, EVENTS_PATH))
        started.append(start_uvicorn("cached", "apps:cached_app", env, EVENTS_PATH))
        for server in started:
            wait_ready(server)
        yield started[0], started[1]
    finally:
        for server in started:
            stop(server)
        try:
            deleted = delete_bench_keys(redis_url, prefix)
        except redis.RedisError as exc:
            # Never mask the error that ended the run; the keys expire with their TTL anyway.
            print(f"could not delete {prefix}:* from Redis: {exc}", file=sys.stderr)
        else:
            print(f"stopped servers; deleted {deleted} Redis key(s) under {prefix}:*")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not require_wrk():
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    load_before = os.getloadavg()[0]
    print(
        f"uvloop: {installed('uvloop')}, httptools: {installed('httptools')}, "
        f"body: {len(BODY)} bytes, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s x {args.rounds} rounds"
    )
    try:
        with servers(args.redis_url) as (static, cached):
            check_servers(static, cached)
            results = run_rounds(static, cached, args)
            check_servers(static, cached)  # still HITs at the end: the numbers measured HITs
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    summary = summarize(results)
    print_table(results, summary)
    write_json(args, results, summary, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
