"""How fast is a cache HIT compared with the bare app? (`python bench/hit_throughput.py`)

Starts two uvicorn servers (1 worker each) on loopback: the plain Starlette app from
`bench/apps.py` (the static ceiling) and the same app behind `CacheMiddleware` on Redis. After
warming the cache, `wrk` drives both with the same load in interleaved rounds (static, cached,
static, cached, ...): on a small, noisy machine, drift then hits both sides alike, and each
cached round is compared with the static round just before it. Prints req/s per round and the
median cached/static ratio, and writes everything to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import redis

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_FILE = BENCH_DIR / "results" / "latest.json"
sys.path.insert(0, str(BENCH_DIR))  # so `apps` imports the same way uvicorn's --app-dir does

from apps import BODY, ENV_KEY_PREFIX, ENV_REDIS_URL, EVENTS_PATH  # noqa: E402

STARTUP_TIMEOUT = 15.0
REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors:\s+(.*)")
LATENCY = re.compile(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{EVENTS_PATH}"


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    return parser.parse_args(argv)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def server_flags() -> list[str]:
    """uvloop/httptools when available: the fastest stock uvicorn, so the ratio is not diluted."""
    flags = ["--workers", "1", "--no-access-log", "--log-level", "warning"]
    if installed("uvloop"):
        flags += ["--loop", "uvloop"]
    if installed("httptools"):
        flags += ["--http", "httptools"]
    return flags


def free_port() -> int:
    # The port is released before uvicorn binds it; a race is possible but harmless on loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(name: str, factory: str, env: dict[str, str]) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        f"apps:{factory}",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *server_flags(),
    ]
    # A session of its own: Ctrl-C reaches only this script, which then stops the servers in order.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    return Server(name, port, process)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} server exited with code {server.process.returncode}")
        try:
            fetch(server.url)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{server.name} server did not answer within {STARTUP_TIMEOUT:.0f}s")


def fetch(url: str) -> tuple[bytes, str | None]:
    """GET url; the body and its X-Cache header."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read(), response.headers.get("x-cache")


def check_servers(static: Server, cached: Server) -> None:
    """Both serve the same body, and the cached server answers from Redis after one request."""
    body, _ = fetch(static.url)
    if body != BODY:
        raise SystemExit("static server returned an unexpected body")
    fetch(cached.url)  # MISS: stores the entry
    # The entry is written just after the MISS response is handed to the server, so a client
    # as quick as this one may need a moment before the HIT.
    deadline = time.monotonic() + 2
    body, state = fetch(cached.url)
    while state != "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        body, state = fetch(cached.url)
    if state != "HIT" or body != BODY:
        raise SystemExit(f"cached server did not replay the entry (x-cache: {state})")


# -- load --------------------------------------------------------------------------------------


def run_wrk(server: Server, round_no: int, args: argparse.Namespace) -> RoundResult:
    command = [
        "wrk",
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={args.duration}s",
        "--latency",
        server.url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output, server.name, round_no)


def parse_wrk(output: str, server: str, round_no: int) -> RoundResult:
    rate = REQUESTS_PER_SEC.search(output)
    if rate is None:
        raise SystemExit(f"could not find Requests/sec in wrk output:\n{output}")
    latency = LATENCY.search(output)
    non_2xx = NON_2XX.search(output)
    errors = SOCKET_ERRORS.search(output)
    return RoundResult(
        round=round_no,
        server=server,
        requests_per_sec=float(rate.group(1)),
        latency_avg=latency.group(1) if latency else "?",
        latency_max=latency.group(3) if latency else "?",
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


def run_rounds(static: Server, cached: Server, args: argparse.Namespace) -> list[RoundResult]:
    results: list[RoundResult] = []
    for round_no in range(1, args.rounds + 1):
        for server in (static, cached):
            result = run_wrk(server, round_no, args)
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
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS_FILE.relative_to(BENCH_DIR.parent)}")


# -- cleanup -----------------------------------------------------------------------------------


def stop(server: Server) -> None:
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def delete_bench_keys(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        return int(client.unlink(*keys)) if keys else 0
    finally:
        client.close()


@contextlib.contextmanager
def servers(redis_url: str) -> Iterator[tuple[Server, Server]]:
    """Both servers, stopped and their Redis keys deleted however the block ends."""
    prefix = f"bench:{secrets.token_hex(4)}"
    env = {**os.environ, ENV_REDIS_URL: redis_url, ENV_KEY_PREFIX: prefix}
    started: list[Server] = []
    try:
        started.append(start_server("static", "static_app", env))
        started.append(start_server("cached", "cached_app", env))
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


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk not found: install it (e.g. `apt-get install -y wrk`) and run again.",
            file=sys.stderr,
        )
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
