"""Instructions per request, counted by valgrind: a change's cost without the machine's noise.

    python bench/instructions.py [REV] [--variant miss] [--requests 640]
    python bench/instructions.py --docs     # every variant; writes its docs/benchmarks.md section

Runs one variant's requests in process (the ASGI apps of `compare_apps.py`, called as
`inprocess.py` calls them: one after another for a HIT, 64 at once with unique queries for a
MISS, against the real Redis) under `valgrind --tool=callgrind`, which counts the instructions
the process executes. Each side runs twice, with N and with 2N measured requests after the same
warm-up; the difference divided by N is the instructions one request costs, with start-up,
imports and warm-up taken out. With REV, the same for REV (a temporary git worktree) and this
checkout, and the ratio after/before. With --docs, every variant for this checkout, beside its
baseline, written to the `## Instructions per request` section of docs/benchmarks.md (which
`compare.py` keeps when it rewrites the rest).

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
import gc
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import static_app
from compare import CLUSTER_TITLE, INSTRUCTIONS_TITLE, write_section
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
from harness import (
    REPO_DIR,
    check_imports,
    cpu_model,
    delete_bench_keys,
    git_commit,
    installed,
    worktree,
)
from inprocess import MISS_CONCURRENCY, Exchange, near_hits, run_batch, run_miss_batch

# name -> (factory, X-Cache every measured answer carries, under the unique-query MISS load)
VARIANTS: dict[str, tuple[Callable[[], Any], bytes | None, bool]] = {
    "static": (static_app, None, False),
    "hit-ceiling": (asgi_hit_ceiling_app, b"HIT", False),
    "near": (cached_near_app, b"HIT", False),
    "redis": (cached_hit_app, b"HIT", False),
    "nocache": (nocache_app, None, False),
    "unmatched": (cached_unmatched_app, None, False),
    "nocache-q": (nocache_app, None, True),
    "miss": (cached_miss_app, b"MISS", True),
}
DEFAULT_REQUESTS = {"miss": 640, "nocache-q": 640}  # the others: 2000
MAIN_THREAD_TOTAL = re.compile(r"^summary: (\d+)$", re.MULTILINE)
# Under valgrind a round trip takes 50 times as long: far more than the default timeout.
SLOW_REDIS_TIMEOUT = "60"  # the most `redis_timeout` takes


class _Tally(Exchange):
    """An Exchange that counts the X-Cache value of every answer, in one tally for all."""

    seen: ClassVar[collections.Counter[bytes | None]] = collections.Counter()

    async def send(self, message: dict[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.start":
            self.seen[dict(self.headers).get(b"x-cache")] += 1


def _settle() -> None:
    """Just before the measured requests, take out what works by the clock, not by the request:
    whether it falls in the run of N or of 2N is luck (a flush moved a HIT's count by 2%
    between runs of the same code).

    - The counters' flush (every 5 s: a batched write to Redis) is put off past the run.
    - What start-up and warm-up left alive is frozen: a full collection over it costs millions
      of instructions. The collections the requests' own objects set off still count."""
    from cache_middleware import CacheMiddleware

    gc.collect()
    for found in gc.get_objects():
        if isinstance(found, CacheMiddleware):
            found._next_flush = math.inf
    gc.freeze()


async def _child(variant: str, requests: int) -> None:
    """Warm the variant up, then serve `requests` measured requests and check every answer."""
    factory, expected, misses = VARIANTS[variant]
    app = factory()
    tally = _Tally.seen
    if misses:
        await run_miss_batch(app, "warmup", 10 * MISS_CONCURRENCY, _Tally)  # connect, warm up
        tally.clear()
        _settle()
        await run_miss_batch(app, "measured", requests, _Tally)
        served = _served(variant, requests)
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
        _settle()
        await run_batch(app, exchange, requests)
        served = requests
        if variant == "near" and near_hits() - from_near != requests:
            raise SystemExit(f"near: {near_hits() - from_near} of {requests} from the near-cache")
    if dict(tally) != {expected: served}:
        raise SystemExit(f"{variant}: expected {served} answers X-Cache {expected!r}, got {tally}")


def _count(
    tree: Path, cwd: Path, variant: str, requests: int, env: dict[str, str], job: int
) -> int:
    """Instructions valgrind counted in the main thread of a whole child run of `requests`
    measured requests. Only the main thread, where the event loop serves every request: the
    near-cache's listener thread works by the clock, not by the request (its count grows with
    how long the run takes, which the machine's load decides)."""
    with tempfile.TemporaryDirectory(prefix="cache-middleware-cg-") as out:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}/cg",
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
        main_thread = Path(out) / "cg-01"
        found = MAIN_THREAD_TOTAL.search(main_thread.read_text()) if main_thread.exists() else None
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise SystemExit(f"{tree}: the run under valgrind failed:\n{tail}")
    return int(found.group(1))


def _served(variant: str, requests: int) -> int:
    """Requests a child serves for `requests`: a MISS variant's clients share them out evenly."""
    if VARIANTS[variant][2]:
        return requests // MISS_CONCURRENCY * MISS_CONCURRENCY
    return requests


def measure(
    trees: dict[str, Path], cwd: Path, variants: dict[str, int], env: dict[str, str]
) -> dict[tuple[str, str], float]:
    """Instructions per request of each variant (name -> N) on each side: (count at 2N - count
    at N) / N. The runs go in parallel, one per CPU (valgrind runs a process on one)."""
    jobs = [
        (side, variant, n)
        for side in trees
        for variant, requests in variants.items()
        for n in (requests, 2 * requests)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(
            zip(
                jobs,
                pool.map(
                    lambda i: _count(trees[jobs[i][0]], cwd, jobs[i][1], jobs[i][2], env, i),
                    range(len(jobs)),
                ),
                strict=True,
            )
        )
    return {
        (side, variant): (counts[(side, variant, 2 * n)] - counts[(side, variant, n)])
        / (_served(variant, 2 * n) - _served(variant, n))
        for side in trees
        for variant, n in variants.items()
    }


# variant -> the variant it is compared with in the docs section
BASELINES = {
    "hit-ceiling": "static",
    "near": "static",
    "redis": "static",
    "unmatched": "nocache",
    "miss": "nocache-q",
}
LABELS = {
    "static": "Starlette, fixed bytes (the ASGI ceiling)",
    "hit-ceiling": "fixed bytes and a HIT's headers, nothing else",
    "near": "cache-middleware, near-cache HIT",
    "redis": "cache-middleware, Redis HIT",
    "nocache": "Starlette view, no cache",
    "unmatched": "cache-middleware, path matches no route",
    "nocache-q": "Starlette view, no cache, 64 at once, unique queries",
    "miss": "cache-middleware, every request a MISS that fills, 64 at once",
}


def render_section(
    counts: dict[str, float], variants: dict[str, int], facts: dict[str, str]
) -> str:
    """The `## Instructions per request` section of docs/benchmarks.md."""
    lines = [
        "Generated by `python bench/instructions.py --docs` (rerun it to refresh this section;",
        "`bench/compare.py` keeps it as it is). Each variant's app called in process, as",
        "`bench/inprocess.py` calls it (no server, no load generator, the real Redis), under",
        "`valgrind --tool=callgrind`: (instructions counted at 2N requests - at N) / N, start-up",
        "and warm-up taken out, in the main thread (the event loop that serves every request),",
        "with the clock's housekeeping (the 5 s counters' flush) kept out of the measured",
        "requests. Counted, not timed: the same to within about 0.5% from run to run",
        "whatever else the machine does, where the req/s above move by a tenth or more between",
        "rounds on a shared VM. Not time either: cache misses, system calls and Redis' own work",
        "are not in it, nor what uvicorn does around a request (the same for every variant).",
        "",
        *textwrap.wrap(
            f"Run {facts['when']}, commit `{facts['commit']}`, {facts['cpu']}, "
            f"{facts['python']}, {facts['valgrind']}, event loop {facts['loop']}.",
            96,
        ),
        "",
        "| variant | what | N | instructions per request | against | difference | ratio |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name, n in variants.items():
        value = counts[name]
        base = BASELINES.get(name)
        if base is not None and base in counts:
            diff = value - counts[base]
            against = f"`{base}` | {diff:+,.0f} | {value / counts[base]:.3f}x"
        else:
            against = "- | - | -"
        lines.append(f"| `{name}` | {LABELS[name]} | {n} | {value:,.0f} | {against} |")
    notes = []
    if {"near", "hit-ceiling"} <= counts.keys():
        own = counts["near"] - counts["hit-ceiling"]
        notes.append(
            f"A near-cache HIT does {own:,.0f} instructions of its own beyond the `hit-ceiling` "
            "middleware, which sends the same bytes and nine headers and does nothing else: "
            "matching the route, the key from what the process derived before, the near-cache "
            "read, the freshness check, the counters and the Age."
        )
    if {"near", "redis"} <= counts.keys():
        notes.append(
            f"A Redis HIT costs {counts['redis'] - counts['near']:,.0f} more than a near-cache "
            "HIT: its GET's client side (encoding, the await, parsing the reply)."
        )
    if {"unmatched", "nocache"} <= counts.keys():
        diff = counts["unmatched"] - counts["nocache"]
        notes.append(
            f"A path no route matches costs {diff:,.0f} instructions more than the bare view "
            f"({100 * diff / counts['nocache']:.1f}% of the view's in process; a request served "
            "by uvicorn costs more, so its share there is smaller): the unmatched-route target "
            "(at most 3%), counted."
        )
    if {"miss", "nocache-q"} <= counts.keys():
        diff = counts["miss"] - counts["nocache-q"]
        notes.append(
            f"A MISS that fills costs {diff:,.0f} instructions more than the bare view "
            f"({diff / counts['nocache-q']:.2f}x the view's own): deriving a new key, the "
            "lookup that takes the fill lease, recording and encoding the response, the fill "
            "script, and the garbage collector those allocations set off. The MISS target "
            "(at most 10% over the view) would allow "
            f"{0.1 * counts['nocache-q']:,.0f}."
        )
    for note in notes:
        lines += ["", *textwrap.wrap(note, 96, break_on_hyphens=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rev", nargs="?", help="the commit to compare against (before)")
    parser.add_argument("--variant", default="miss", choices=list(VARIANTS))
    parser.add_argument("--requests", type=int, help="N (default: 640 for a MISS, else 2000)")
    parser.add_argument(
        "--docs", action="store_true", help="every variant, this checkout; write the docs section"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        requests = args.requests or DEFAULT_REQUESTS.get(args.variant, 2000)
        if installed("uvloop"):  # as the servers run (harness.uvicorn_flags)
            import uvloop

            uvloop.run(_child(args.variant, requests))
        else:
            asyncio.run(_child(args.variant, requests))
        return 0
    if args.docs and args.rev is not None:
        parser.error("--docs counts this checkout only: no REV with it")
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH: apt-get install -y valgrind", file=sys.stderr)
        return 2
    names = list(VARIANTS) if args.docs else [args.variant]
    variants = {name: args.requests or DEFAULT_REQUESTS.get(name, 2000) for name in names}
    for name, n in variants.items():
        if VARIANTS[name][2] and n < MISS_CONCURRENCY:
            parser.error(
                f"--requests: at least {MISS_CONCURRENCY} for {name} (run so many at once)"
            )
    prefix = f"bench:instr:{secrets.token_hex(4)}"
    env = {
        **os.environ,
        ENV_REDIS_URL: args.redis_url,
        ENV_KEY_PREFIX: prefix,
        ENV_REDIS_TIMEOUT: SLOW_REDIS_TIMEOUT,
        # The same string hashes on both sides: dict and set layouts, so counts, repeat.
        "PYTHONHASHSEED": "0",
    }
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        with tempfile.TemporaryDirectory(prefix="cache-middleware-instr-") as scratch:
            neutral = Path(scratch) / "cwd"  # no checkout here: PYTHONPATH decides the import
            neutral.mkdir()
            if args.rev is None:
                trees = {"this checkout": REPO_DIR}
                check_imports(trees, neutral)
                result = measure(trees, neutral, variants, env)
            else:
                with worktree(args.rev, Path(scratch) / "before") as before_tree:
                    trees = {"before": before_tree, "after": REPO_DIR}
                    check_imports(trees, neutral)
                    result = measure(trees, neutral, variants, env)
    finally:
        delete_bench_keys(args.redis_url, prefix)
    label = f"{args.rev} (before) against this checkout (after)" if args.rev else "this checkout"
    print(f"instructions per request, {label}")
    for name, n in variants.items():
        for side in trees:
            print(f"  {name:<12} N={n:<5} {side:<14} {result[(side, name)]:>12,.0f}")
        if args.rev is not None:
            ratio = result[("after", name)] / result[("before", name)]
            print(f"  {name:<12} after/before {ratio:.4f}")
    if args.docs:
        facts = {
            "when": when,
            "commit": git_commit() or "?",
            "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "valgrind": _valgrind_version(),
            "loop": "uvloop" if installed("uvloop") else "asyncio",
        }
        counts = {name: result[("this checkout", name)] for name in variants}
        write_section(
            INSTRUCTIONS_TITLE, render_section(counts, variants, facts), before=CLUSTER_TITLE
        )
    return 0


def _valgrind_version() -> str:
    done = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "valgrind"


if __name__ == "__main__":
    sys.exit(main())
