"""Where does a Redis HIT (or a MISS) spend its time? (`python bench/profile_hit.py`)

Starts the Redis-HIT server of `compare.py` (uvicorn, 1 worker), warms its entry, samples it
with py-spy while wrk loads it, and prints the functions of cache_middleware (and the top
functions overall) by share of samples: inclusive (the function is on the stack) and self (it
is the innermost frame). Needs `py-spy` (`pip install -e '.[bench]'`) and permission to ptrace.

    python bench/profile_hit.py --duration 10 --out /tmp/hit_profile.txt [--near | --miss]

`--miss` profiles the `miss` server of `compare.py` under its unique-query load instead (every
request looked up, missed, run and stored); `--native` adds py-spy's C frames (system calls).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import EVENTS_PATH
from compare_apps import ENV_KEY_PREFIX, ENV_REDIS_URL
from harness import delete_bench_keys, fetch, run_wrk, start_uvicorn, stop, wait_ready

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of sampling under load")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--near", action="store_true", help="profile the near-cache HIT instead")
    mode.add_argument("--miss", action="store_true", help="profile the MISS path instead")
    parser.add_argument("--native", action="store_true", help="sample C frames too (py-spy)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="also write the report here")
    return parser.parse_args(argv)


def frame_name(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def short(file: str) -> str:
    for marker in ("cache_middleware/", "site-packages/"):
        if marker in file:
            return (
                file.split(marker, 1)[1]
                if marker == "site-packages/"
                else marker + (file.split(marker, 1)[1])
            )
    return Path(file).name


def aggregate(raw: str) -> tuple[int, Counter[str], Counter[str], dict[str, bool]]:
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    ours: dict[str, bool] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        names = []
        for frame in frames:
            func, file = frame_name(frame)
            name = f"{func} ({short(file)})" if file else func
            ours[name] = "cache_middleware/" in file
            names.append(name)
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    return total, inclusive, own, ours


def report(
    total: int, inclusive: Counter[str], own: Counter[str], ours: dict[str, bool], top: int
) -> str:
    pct = 100.0 / total if total else 0.0
    ours_self = sum(count for name, count in own.items() if ours.get(name))
    lines = [
        f"{total} samples; innermost frame in cache_middleware: {ours_self * pct:.1f}%",
        "",
        "cache_middleware functions, by inclusive share:",
    ]
    lines.append(f"{'incl %':>7} {'self %':>7}  function")
    for name, count in inclusive.most_common():
        if ours.get(name):
            lines.append(f"{count * pct:>7.1f} {own[name] * pct:>7.1f}  {name}")
            if len(lines) > top + 3:
                break
    lines += ["", "every function, by self share (where the CPU actually is):"]
    lines.append(f"{'self %':>7}  function")
    for name, count in own.most_common(top):
        lines.append(f"{count * pct:>7.1f}  {name}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            print(f"{tool} not found", file=sys.stderr)
            return 2
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    prefix = f"bench:{secrets.token_hex(4)}"
    env = {**os.environ, ENV_REDIS_URL: args.redis_url, ENV_KEY_PREFIX: prefix}
    factory = "compare_apps:cached_hit_app"
    if args.near:
        factory = "compare_apps:cached_near_app"
    elif args.miss:
        factory = "compare_apps:cached_miss_app"
    expected = "MISS" if args.miss else "HIT"
    server = start_uvicorn("hit", factory, env, EVENTS_PATH)
    raw_file = Path(tempfile.mkstemp(suffix=".txt")[1])
    try:
        wait_ready(server)
        for _ in range(3):
            fetch(server.url)
            time.sleep(0.1)
        probe = server.url + "?n=probe-before" if args.miss else server.url
        state = fetch(probe).header("x-cache")
        if state != expected:
            raise SystemExit(f"not a {expected}: x-cache {state}")
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(server.process.pid),
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                *(["--native"] if args.native else []),
                "--format",
                "raw",
                "--output",
                str(raw_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        load = run_wrk(
            server.url,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
            unique_query=args.miss,
        )
        _, err = spy.communicate(timeout=30)
        if spy.returncode:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
        probe = server.url + "?n=probe-after" if args.miss else server.url
        if fetch(probe).header("x-cache") != expected:
            raise SystemExit(f"no longer a {expected} after the load")
    finally:
        stop(server)
        delete_bench_keys(args.redis_url, prefix)
    what = "MISS" if args.miss else ("near-cache HIT" if args.near else "Redis HIT")
    text = (
        f"{what} under wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(Requests/sec: {load.requests_per_sec:.0f} while sampled at {args.rate} Hz)\n"
        + report(*aggregate(raw_file.read_text()), args.top)
    )
    raw_file.unlink(missing_ok=True)
    print(text)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
