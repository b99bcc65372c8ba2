"""This checkout against an earlier commit, on one variant, alternating: did a change pay?

    python bench/ab.py REV [--variant miss] [--rounds 6] [--duration 8]

Checks REV out into a temporary git worktree and serves the same variant (an ASGI app of
`compare_apps.py`, uvicorn, one worker) from each tree in turn: before (REV) and after (this
checkout), in alternating order round by round, under the same wrk load, pinned as `compare.py`
pins (the server on its own CPU; wrk and a local Redis on the others). Reports requests per
second and the server's own CPU time per request (utime + stime of its process, divided by
the requests served): the second does not depend on how busy the machine is, the first does.

Why a script: on a shared 2-core VM, two separate runs of `compare.py` differ by up to a fifth,
more than most changes to the hot path. Interleaved rounds on the same machine in the same
minutes, compared per round, show a change of a few percent. Each server is checked to import
cache-middleware from its own tree (a server started in this checkout's folder would import
this checkout's, whatever PYTHONPATH says: `python -m` puts the working folder first).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from compare_apps import ENV_KEY_PREFIX, ENV_REDIS_URL
from harness import (
    REPO_DIR,
    check_imports,
    delete_bench_keys,
    fetch,
    parse_pin,
    pin,
    pin_redis,
    require_wrk,
    resolve_pin,
    run_wrk,
    start_uvicorn,
    stop,
    wait_ready,
    worktree,
)

# name -> (factory in compare_apps.py, every request a new query value)
VARIANTS = {
    "miss": ("compare_apps:cached_miss_app", True),
    "redis": ("compare_apps:cached_hit_app", False),
    "near": ("compare_apps:cached_near_app", False),
    "unmatched": ("compare_apps:cached_unmatched_app", False),
    "nocache": ("compare_apps:nocache_app", False),
}
PATH = "/api/events"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc: Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rev", help="the commit to compare against (before)")
    parser.add_argument("--variant", default="miss", choices=sorted(VARIANTS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--pin", default="auto", help="as compare.py's --pin")
    args = parser.parse_args(argv)
    if not require_wrk():
        return 1
    factory, unique = VARIANTS[args.variant]
    prefix = f"bench:ab:{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="cache-middleware-ab-") as scratch:
        neutral = Path(scratch) / "cwd"  # no checkout here: PYTHONPATH decides the import
        neutral.mkdir()
        with worktree(args.rev, Path(scratch) / "before") as before_tree:
            try:
                trees = {"before": before_tree, "after": REPO_DIR}
                check_imports(trees, neutral)
                return _run(args, factory, unique, trees, neutral, prefix)
            finally:
                delete_bench_keys(args.redis_url, prefix)


def _run(
    args: argparse.Namespace,
    factory: str,
    unique: bool,
    trees: dict[str, Path],
    cwd: Path,
    prefix: str,
) -> int:
    pinning = resolve_pin(args.pin)
    unpin_redis = None
    if pinning:
        server_cpus, load_cpus = parse_pin(pinning)
        pin(server_cpus, load_cpus)
        unpin_redis = pin_redis(args.redis_url, load_cpus)
    rates: dict[str, list[float]] = {side: [] for side in trees}
    cpu: dict[str, list[float]] = {side: [] for side in trees}
    print(
        f"{args.variant}: {args.rev} (before) against this checkout (after), "
        f"{args.rounds} rounds x {args.duration:g} s, wrk -t{args.threads} -c{args.connections}, "
        f"pinning {pinning or 'none'}"
    )
    try:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for side in order:
                tree = trees[side]
                env = {
                    **os.environ,
                    "PYTHONPATH": str(tree),
                    ENV_REDIS_URL: args.redis_url,
                    ENV_KEY_PREFIX: f"{prefix}:{side}",
                }
                server = start_uvicorn(side, factory, env, PATH, app_dir=tree / "bench", cwd=cwd)
                try:
                    wait_ready(server)
                    for _ in range(3):
                        fetch(server.url)  # fill the entry a HIT variant serves
                    load = {
                        "connections": args.connections,
                        "threads": args.threads,
                        "unique_query": unique,
                    }
                    run_wrk(server.url, duration=args.warmup, **load)
                    used, started = cpu_seconds(server.process.pid), time.monotonic()
                    result = run_wrk(server.url, duration=args.duration, **load)
                    used = cpu_seconds(server.process.pid) - used
                    elapsed = time.monotonic() - started
                finally:
                    stop(server)
                if result.non_2xx:
                    raise SystemExit(f"{side}: {result.non_2xx} answers were not 2xx or 3xx")
                rate = result.requests_per_sec
                per_request = used / (rate * elapsed) * 1e6
                rates[side].append(rate)
                cpu[side].append(per_request)
                print(
                    f"  round {round_ + 1} {side:<6} {rate:>9.0f} req/s  "
                    f"{per_request:6.1f} us CPU per request"
                )
    finally:
        if unpin_redis is not None:
            unpin_redis()
    ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
    print(
        f"after/before req/s per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f}"
    )
    print(
        f"server CPU per request, median: before {statistics.median(cpu['before']):.1f} us, "
        f"after {statistics.median(cpu['after']):.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
