"""Instructions per request, counted by valgrind: a change's cost without the machine's noise.

    python bench/instructions.py [REV] [--variant miss] [--requests 640]

Runs one variant's requests in process (the ASGI apps of `compare_apps.py`, called as
`inprocess.py` calls them: one after another for a HIT, 64 at once with unique queries for a
MISS, against the real Redis) under `valgrind --tool=callgrind`, which counts the instructions
the process executes. Each side runs twice, with N and with 2N measured requests after the same
warm-up; the difference divided by N is the instructions one request costs, with start-up,
imports and warm-up taken out. With REV, the same for REV (a temporary git worktree) and this
checkout, and the ratio after/before.

Why a script: on the shared 2-core VMs, wrk's req/s and even a server's CPU time per request
move by 10% or more from round to round (`ab.py`), more than most changes to the hot path.
An instruction count is the same to within about 0.5% from run to run, whatever else the
machine does. It is not time (a cache miss or a system call costs more than its instructions
say, and the Redis server's work is not counted), so a change that trades instructions for
memory or for system calls still needs `ab.py`; for the Python work of a request it is the
quiet figure.

Both sides run this checkout's apps and this script; only `cache_middleware` comes from each
tree (PYTHONPATH, started outside any checkout, checked as `ab.py` checks it). Every measured
answer is checked (X-Cache MISS, HIT, or none, as the variant says; a near-cache HIT must come
from the near-cache), so a count never includes a BYPASS. Needs valgrind on the PATH
(`apt-get install -y valgrind`) and a Redis (default `redis://127.0.0.1:6379/14`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import static_app
from compare_apps import (
    ENV_KEY_PREFIX,
    ENV_REDIS_TIMEOUT,
    ENV_REDIS_URL,
    asgi_hit_ceiling_app,
    cached_hit_app,
    cached_miss_app,
    cached_near_app,
    cached_unmatched_app,
    nocache_app,
)
from harness import REPO_DIR, check_imports, delete_bench_keys, installed, worktree
from inprocess import Exchange, near_hits, run_batch, run_miss_batch

# name -> (factory, X-Cache every measured answer carries, under the unique-query MISS load)
VARIANTS: dict[str, tuple[Callable[[], Any], bytes | None, bool]] = {
    "miss": (cached_miss_app, b"MISS", True),
    "nocache-q": (nocache_app, None, True),
    "near": (cached_near_app, b"HIT", False),
    "redis": (cached_hit_app, b"HIT", False),
    "hit-ceiling": (asgi_hit_ceiling_app, b"HIT", False),
    "static": (static_app, None, False),
    "nocache": (nocache_app, None, False),
    "unmatched": (cached_unmatched_app, None, False),
}
DEFAULT_REQUESTS = {"miss": 640, "nocache-q": 640}  # the others: 2000
COLLECTED = re.compile(r"Collected : (\d+)")
# Under valgrind a round trip takes 50 times as long: far more than the default timeout.
SLOW_REDIS_TIMEOUT = "60"  # the most `redis_timeout` takes


class _Tally(Exchange):
    """An Exchange that counts the X-Cache value of every answer, in one tally for all."""

    seen: ClassVar[collections.Counter[bytes | None]] = collections.Counter()

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.start":
            self.seen[dict(self.headers).get(b"x-cache")] += 1


async def _child(variant: str, requests: int) -> None:
    """Warm the variant up, then serve `requests` measured requests and check every answer."""
    factory, expected, misses = VARIANTS[variant]
    app = factory()
    tally = _Tally.seen
    if misses:
        await run_miss_batch(app, "warmup", 640, _Tally)  # connect, warm the memos
        tally.clear()
        await run_miss_batch(app, "measured", requests, _Tally)
        served = requests // 64 * 64
    else:
        exchange = _Tally()
        deadline = time.monotonic() + 120
        # The first request fills; the near-cache keeps copies once its stream is confirmed.
        while True:
            await app(exchange.scope(), exchange.receive, exchange.send)
            hit = dict(exchange.headers).get(b"x-cache") == expected
            if hit and (variant != "near" or near_hits() > 0):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{variant}: no {expected!r} answer within 120 s")
            await asyncio.sleep(0.05)
        await run_batch(app, exchange, 200)  # warm the memos
        tally.clear()
        from_near = near_hits() if variant == "near" else 0
        await run_batch(app, exchange, requests)
        served = requests
        if variant == "near" and near_hits() - from_near != requests:
            raise SystemExit(f"near: {near_hits() - from_near} of {requests} from the near-cache")
    if dict(tally) != {expected: served}:
        raise SystemExit(f"{variant}: expected {served} answers X-Cache {expected!r}, got {tally}")


def _count(
    tree: Path, cwd: Path, variant: str, requests: int, env: dict[str, str], job: int
) -> int:
    """Instructions valgrind counted for a whole child run of `requests` measured requests."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--variant",
            variant,
            "--requests",
            str(requests),
        ],
        # A prefix of its own: runs in parallel must not find each other's entries.
        env={**env, "PYTHONPATH": str(tree), ENV_KEY_PREFIX: f"{env[ENV_KEY_PREFIX]}:{job}"},
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise SystemExit(f"{tree}: the run under valgrind failed:\n{tail}")
    return int(found.group(1))


def measure(
    trees: dict[str, Path], cwd: Path, variant: str, requests: int, env: dict[str, str]
) -> dict[str, float]:
    """Instructions per request on each side: (count at 2N - count at N) / N; the runs go in
    parallel, one per CPU (valgrind runs a process on one)."""
    jobs = [(side, n) for side in trees for n in (requests, 2 * requests)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(
            zip(
                jobs,
                pool.map(
                    lambda i: _count(trees[jobs[i][0]], cwd, variant, jobs[i][1], env, i),
                    range(len(jobs)),
                ),
                strict=True,
            )
        )
    served = requests // 64 * 64 if VARIANTS[variant][2] else requests
    return {
        side: (counts[(side, 2 * requests)] - counts[(side, requests)]) / served for side in trees
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rev", nargs="?", help="the commit to compare against (before)")
    parser.add_argument("--variant", default="miss", choices=list(VARIANTS))
    parser.add_argument("--requests", type=int, help="N (default: 640 for a MISS, else 2000)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    requests = args.requests or DEFAULT_REQUESTS.get(args.variant, 2000)
    if args.child:
        if installed("uvloop"):  # as the servers run (harness.uvicorn_flags)
            import uvloop

            uvloop.run(_child(args.variant, requests))
        else:
            asyncio.run(_child(args.variant, requests))
        return 0
    if VARIANTS[args.variant][2] and requests < 64:
        parser.error("--requests: at least 64 for a MISS variant (64 run at once)")
    prefix = f"bench:instr:{secrets.token_hex(4)}"
    env = {
        **os.environ,
        ENV_REDIS_URL: args.redis_url,
        ENV_KEY_PREFIX: prefix,
        ENV_REDIS_TIMEOUT: SLOW_REDIS_TIMEOUT,
        # The same string hashes on both sides: dict and set layouts, so counts, repeat.
        "PYTHONHASHSEED": "0",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="cache-middleware-instr-") as scratch:
            neutral = Path(scratch) / "cwd"  # no checkout here: PYTHONPATH decides the import
            neutral.mkdir()
            if args.rev is None:
                trees = {"this checkout": REPO_DIR}
                check_imports(trees, neutral)
                result = measure(trees, neutral, args.variant, requests, env)
            else:
                with worktree(args.rev, Path(scratch) / "before") as before_tree:
                    trees = {"before": before_tree, "after": REPO_DIR}
                    check_imports(trees, neutral)
                    result = measure(trees, neutral, args.variant, requests, env)
    finally:
        delete_bench_keys(args.redis_url, prefix)
    label = f"{args.rev} (before) against this checkout (after)" if args.rev else "this checkout"
    print(f"{args.variant}: instructions per request, {label}, N={requests}")
    for side, value in result.items():
        print(f"  {side:<14} {value:>12,.0f}")
    if args.rev is not None:
        print(f"  after/before {result['after'] / result['before']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
