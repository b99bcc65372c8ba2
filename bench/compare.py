"""cache-middleware against its peers and baselines, side by side (`python bench/compare.py`).

Starts one server per variant (uvicorn or gunicorn, 1 worker each) on loopback, checks what each
serves (same JSON document; the cached variants really serve HITs, the MISS variant really
misses), then drives them all with the same `wrk` load in interleaved rounds: every variant once
per round, the order reversed every other round, so drift on a small, noisy machine falls on all
of them alike. Ratios are taken per round (each variant against its baseline of the same round)
and their median reported. Writes bench/results/compare.json and, for a full run,
docs/benchmarks.md and docs/benchmarks.svg.

    python bench/compare.py                          # everything, 5 rounds x 10 s
    python bench/compare.py --quick                  # smoke run: 1 round x 2 s, no docs
    python bench/compare.py --only static,redis,near --rounds 5
    python bench/compare.py --only redis-variants --redis-url redis://127.0.0.1:7000/0
    python bench/compare.py --docs-from bench/results/compare.json   # re-render the docs only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import json
import os
import secrets
import shlex
import signal
import statistics
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import BODY, EVENTS_PATH
from compare_apps import CALLS_PATH, ENV_KEY_PREFIX, ENV_REDIS_URL
from harness import (
    BENCH_DIR,
    REPO_DIR,
    Server,
    delete_bench_keys,
    dump_json,
    fetch,
    installed,
    log_lines,
    machine_facts,
    node_clients,
    parse_pin,
    pin,
    pin_redis,
    raise_interrupt,
    redis_client,
    require_wrk,
    resolve_pin,
    run_wrk,
    start_gunicorn,
    start_uvicorn,
    stop,
    wait_ready,
)
from inprocess import measure_in_process, measure_miss_in_process

RESULTS_FILE = BENCH_DIR / "results" / "compare.json"
LOG_DIR = BENCH_DIR / "results" / "logs"
DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
SVG_FILE = REPO_DIR / "docs" / "benchmarks.svg"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DOCUMENT = json.loads(BODY)
PACKAGES = [
    "cache-middleware",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "fastapi",
    "fastapi-cache2",
    "cashews",
    "flask",
    "werkzeug",
    "flask-caching",
    "gunicorn",
    "redis",
    "hiredis",
    "msgpack",
]
INSTRUCTIONS_PLACEHOLDER = (
    "Instruction counts are added by `python bench/instructions.py --docs`: it counts, under "
    "valgrind, what each variant's request costs in process and writes this section."
)
SERVERS_PLACEHOLDER = (
    "Figures per server (uvicorn, granian, hypercorn, nginx proxy_cache) are added by "
    "`python bench/servers.py`: it writes this section."
)
HEADERS_PLACEHOLDER = (
    "What each header of a HIT costs each server is added by `python bench/headers.py`."
)
CLUSTER_PLACEHOLDER = (
    "Cluster figures are added by the cluster benchmark (`python bench/cluster.py`): it starts "
    "a local Redis Cluster and writes this section."
)


# -- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    key: str
    kind: str  # "asgi" (uvicorn) or "wsgi" (gunicorn)
    factory: str  # module:function in bench/
    requires: tuple[str, ...] = ()
    uses_redis: bool = False


@dataclass(frozen=True)
class Measurement:
    name: str
    label: str
    server: str
    # How the variant is verified: exact (the fixed bytes), plain (equivalent JSON, no cache),
    # hit (ours: X-Cache HIT, view not called under load), peer-hit (view not called under
    # load, and the peer's own header when it has one), miss (the view ran for every request),
    # unmatched (no cache header at all).
    check: str
    baseline: str  # the ceiling it is compared with: static or flask-static
    group: str  # baseline, ours, peer, overhead: the colour in the chart
    unique_query: bool = False  # wrk's unique-query script (every request a new key)
    hit_header: str | None = None


SERVERS = {
    s.key: s
    for s in [
        ServerSpec("static", "asgi", "compare_apps:static_app"),
        ServerSpec("nocache", "asgi", "compare_apps:nocache_app"),
        ServerSpec("fastapi", "asgi", "compare_apps:fastapi_app", ("fastapi",)),
        ServerSpec(
            "fastapi-cache2",
            "asgi",
            "compare_apps:fastapi_cache2_app",
            ("fastapi", "fastapi_cache"),
            True,
        ),
        ServerSpec("cashews", "asgi", "compare_apps:cashews_app", ("fastapi", "cashews"), True),
        ServerSpec("redis", "asgi", "compare_apps:cached_hit_app", (), True),
        ServerSpec("near", "asgi", "compare_apps:cached_near_app", (), True),
        ServerSpec("miss", "asgi", "compare_apps:cached_miss_app", (), True),
        ServerSpec("unmatched", "asgi", "compare_apps:cached_unmatched_app", (), True),
        ServerSpec("flask-static", "wsgi", "compare_apps:flask_static_app", ("flask", "gunicorn")),
        ServerSpec("hit-ceiling", "asgi", "compare_apps:asgi_hit_ceiling_app"),
        ServerSpec(
            "wsgi-hit-ceiling", "wsgi", "compare_apps:flask_hit_ceiling_app", ("flask", "gunicorn")
        ),
        ServerSpec(
            "flask-caching",
            "wsgi",
            "compare_apps:flask_caching_app",
            ("flask", "gunicorn", "flask_caching"),
            True,
        ),
        ServerSpec(
            "wsgi-redis", "wsgi", "compare_apps:flask_wsgi_redis_app", ("flask", "gunicorn"), True
        ),
        ServerSpec(
            "wsgi-near", "wsgi", "compare_apps:flask_wsgi_near_app", ("flask", "gunicorn"), True
        ),
    ]
}

# In run order (odd rounds; even rounds run it backwards). Pairs that a target compares sit
# next to each other, so they are measured close together in time.
MEASUREMENTS = [
    Measurement(
        "static", "Starlette, fixed bytes (ceiling)", "static", "exact", "static", "baseline"
    ),
    Measurement(
        "hit-ceiling",
        "fixed bytes and a HIT's headers, nothing else (any HIT's ceiling)",
        "hit-ceiling",
        "exact",
        "static",
        "baseline",
    ),
    Measurement("near", "cache-middleware, near-cache HIT", "near", "hit", "static", "ours"),
    Measurement("redis", "cache-middleware, Redis HIT", "redis", "hit", "static", "ours"),
    Measurement(
        "fastapi-cache2",
        "FastAPI + fastapi-cache2 @cache, Redis HIT",
        "fastapi-cache2",
        "peer-hit",
        "static",
        "peer",
        hit_header="x-fastapi-cache",
    ),
    Measurement(
        "cashews", "FastAPI + cashews @cache, Redis HIT", "cashews", "peer-hit", "static", "peer"
    ),
    Measurement("fastapi", "FastAPI view, no cache", "fastapi", "plain", "static", "baseline"),
    Measurement("nocache", "Starlette view, no cache", "nocache", "plain", "static", "baseline"),
    Measurement(
        "unmatched",
        "cache-middleware, path matches no route",
        "unmatched",
        "unmatched",
        "static",
        "overhead",
    ),
    Measurement(
        "nocache-q",
        "Starlette view, no cache, unique queries",
        "nocache",
        "plain",
        "static",
        "baseline",
        unique_query=True,
    ),
    Measurement(
        "miss",
        "cache-middleware, every request a MISS",
        "miss",
        "miss",
        "static",
        "overhead",
        unique_query=True,
    ),
    Measurement(
        "flask-static",
        "Flask, fixed bytes (WSGI ceiling)",
        "flask-static",
        "exact",
        "flask-static",
        "baseline",
    ),
    Measurement(
        "wsgi-hit-ceiling",
        "fixed bytes and a HIT's headers, nothing else (any WSGI HIT's ceiling)",
        "wsgi-hit-ceiling",
        "exact",
        "flask-static",
        "baseline",
    ),
    Measurement(
        "wsgi-near",
        "cache-middleware WSGI, near-cache HIT",
        "wsgi-near",
        "hit",
        "flask-static",
        "ours",
    ),
    Measurement(
        "wsgi-redis",
        "cache-middleware WSGI, Redis HIT",
        "wsgi-redis",
        "hit",
        "flask-static",
        "ours",
    ),
    Measurement(
        "flask-caching",
        "Flask + Flask-Caching @cached, Redis HIT",
        "flask-caching",
        "peer-hit",
        "flask-static",
        "peer",
    ),
]
BY_NAME = {m.name: m for m in MEASUREMENTS}
GROUPS = {
    "asgi": [m.name for m in MEASUREMENTS if SERVERS[m.server].kind == "asgi"],
    "wsgi": [m.name for m in MEASUREMENTS if SERVERS[m.server].kind == "wsgi"],
    # Everything that talks to Redis, with the ceilings: what the cluster benchmark re-runs.
    "redis-variants": [
        m.name for m in MEASUREMENTS if SERVERS[m.server].uses_redis or m.check == "exact"
    ],
}
# A measurement that makes no sense without another one brings it along.
NEEDS = {"miss": ["nocache-q"], "unmatched": ["nocache"]}


@dataclass(frozen=True)
class Ratio:
    key: str
    numerator: str
    denominator: str
    what: str


def ratio_list() -> list[Ratio]:
    ratios = [
        Ratio(f"{m.name}/{m.baseline}", m.name, m.baseline, f"{m.name} vs {m.baseline}")
        for m in MEASUREMENTS
        if m.name != m.baseline and m.name != "nocache-q"
    ]
    for ours, peers in (
        ("redis", ["fastapi-cache2", "cashews"]),
        ("near", ["fastapi-cache2", "cashews"]),
        ("wsgi-redis", ["flask-caching"]),
        ("wsgi-near", ["flask-caching"]),
    ):
        ratios += [Ratio(f"{ours}/{p}", ours, p, f"{ours} vs {p}") for p in peers]
    ratios += [
        Ratio("miss/nocache-q", "miss", "nocache-q", "MISS vs no cache (same unique-query load)"),
        Ratio("unmatched/nocache", "unmatched", "nocache", "unmatched route vs no cache"),
    ]
    return ratios


@dataclass(frozen=True)
class Target:
    text: str
    ratio: str
    minimum: float


TARGETS = [
    Target("Redis HIT >= 0.40x static Starlette", "redis/static", 0.40),
    Target("near-cache HIT >= 1.0x static Starlette", "near/static", 1.0),
    Target("Redis HIT >= 5x fastapi-cache2", "redis/fastapi-cache2", 5.0),
    Target("near-cache HIT >= 5x fastapi-cache2", "near/fastapi-cache2", 5.0),
    Target("Redis HIT >= 5x cashews", "redis/cashews", 5.0),
    Target("near-cache HIT >= 5x cashews", "near/cashews", 5.0),
    Target("WSGI Redis HIT >= 5x Flask-Caching", "wsgi-redis/flask-caching", 5.0),
    Target("WSGI near-cache HIT >= 5x Flask-Caching", "wsgi-near/flask-caching", 5.0),
    Target("MISS overhead <= 10% (MISS >= 0.90x no cache)", "miss/nocache-q", 0.90),
    Target("unmatched-route overhead <= 3% (>= 0.97x no cache)", "unmatched/nocache", 0.97),
    Target("WSGI near-cache HIT >= 1.0x static Flask", "wsgi-near/flask-static", 1.0),
]


# -- arguments -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants: " + ", ".join(BY_NAME) + "; groups: " + ", ".join(GROUPS),
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each variant once each)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--only", default="", help="comma-separated variants or groups")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round x 2 s, 1 s warm-up, no docs"
    )
    parser.add_argument(
        "--wsgi-worker",
        default="gthread",
        choices=["sync", "gthread"],
        help="gunicorn worker class for every WSGI variant",
    )
    parser.add_argument("--wsgi-threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument(
        "--pin",
        default="auto",
        metavar="SERVER:LOAD",
        help="CPU pinning, e.g. 1:0: servers on CPU 1, wrk and the local Redis on CPU 0; "
        "auto (the default): the last CPU for the servers, the others for the load, when there "
        "are two or more; none: no pinning",
    )
    parser.add_argument("--json", type=Path, default=RESULTS_FILE, help="where to write results")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="write the docs even for a partial run")
    docs.add_argument("--no-docs", action="store_true", help="never write the docs")
    parser.add_argument(
        "--docs-from", type=Path, help="render docs/benchmarks.md and .svg from a results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 2, 1, 1
    if args.wsgi_worker == "sync":
        args.wsgi_threads = 1
    args.pin = resolve_pin(args.pin)
    return args


def base_name(name: str) -> str:
    """`redis@cluster` -> `redis`: a variant run against another store (see `measure`)."""
    return name.split("@", 1)[0]


def store_label(name: str) -> str:
    """`redis@cluster` -> `cluster`; `` for the default `--redis-url`."""
    return name.partition("@")[2]


def select(only: str) -> list[str]:
    if not only.strip():
        return [m.name for m in MEASUREMENTS]
    wanted: set[str] = set()
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        if item in GROUPS:
            wanted.update(GROUPS[item])
        elif item in BY_NAME:
            wanted.add(item)
        else:
            raise SystemExit(f"unknown variant {item!r}; known: {', '.join([*BY_NAME, *GROUPS])}")
    for name in list(wanted):
        wanted.update(NEEDS.get(name, []))
    return [m.name for m in MEASUREMENTS if m.name in wanted]


# -- servers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(
    keys: list[str], urls: dict[str, str], args: argparse.Namespace, prefix: str
) -> Iterator[dict[str, Server]]:
    """The servers, stopped and their Redis keys deleted however the block ends.

    A key is a server of SERVERS, or one with `@label` to run it on the store `urls[label]`
    (`urls[""]` is the default store)."""
    started: dict[str, Server] = {}
    try:
        for key in keys:
            spec = SERVERS[base_name(key)]
            env = {**os.environ, ENV_REDIS_URL: urls[store_label(key)], ENV_KEY_PREFIX: prefix}
            if spec.kind == "asgi":
                started[key] = start_uvicorn(
                    key, spec.factory, env, EVENTS_PATH, log=LOG_DIR / f"{key}.log"
                )
            else:
                started[key] = start_gunicorn(
                    key,
                    spec.factory,
                    env,
                    EVENTS_PATH,
                    worker=args.wsgi_worker,
                    threads=args.wsgi_threads,
                    log=LOG_DIR / f"{key}.log",
                )
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            stop(server)
        deleted = 0
        for label in dict.fromkeys(store_label(k) for k in started):
            try:
                deleted += delete_bench_keys(urls[label], prefix)
            except (redis.RedisError, OSError) as exc:
                # Never mask the error that ended the run; the keys expire with their TTL anyway.
                print(f"could not delete {prefix}:* from {urls[label]}: {exc}", file=sys.stderr)
        print(f"stopped {len(started)} servers; deleted {deleted} Redis key(s) under {prefix}:*")


def calls(server: Server) -> int:
    return int(fetch(server.base + CALLS_PATH).body)


def wait_for_hit(server: Server) -> Any:
    """The first request stores the entry just after its answer; the next ones should HIT."""
    reply = fetch(server.url)
    deadline = time.monotonic() + 3
    while reply.header("x-cache") != "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = fetch(server.url)
    return reply


class Failed(Exception):
    pass


def verify(m: Measurement, server: Server) -> str:
    """Check what the variant serves; returns a one-line note for the report."""
    if m.check == "exact":
        reply = fetch(server.url)
        if reply.status != 200 or reply.body != BODY:
            raise Failed(f"{m.name}: unexpected answer {reply.status} {reply.body[:80]!r}")
        return "serves the fixed bytes"
    if m.check == "plain":
        reply = fetch(server.url + ("?n=check" if m.unique_query else ""))
        if reply.status != 200 or json.loads(reply.body) != DOCUMENT:
            raise Failed(f"{m.name}: unexpected answer {reply.status} {reply.body[:80]!r}")
        return "serves the same JSON document"
    if m.check == "hit":
        reply = wait_for_hit(server)
        if reply.header("x-cache") != "HIT":
            raise Failed(f"{m.name}: no HIT (x-cache: {reply.header('x-cache')})")
        if reply.body != BODY:
            raise Failed(f"{m.name}: the HIT replays other bytes {reply.body[:80]!r}")
        return "X-Cache: HIT with the same bytes"
    if m.check == "peer-hit":
        fetch(server.url)  # MISS: the peer stores it
        time.sleep(0.1)
        reply = fetch(server.url)
        if reply.status != 200 or json.loads(reply.body) != DOCUMENT:
            raise Failed(f"{m.name}: unexpected answer {reply.status} {reply.body[:80]!r}")
        if m.hit_header and reply.header(m.hit_header) != "HIT":
            raise Failed(f"{m.name}: {m.hit_header}: {reply.header(m.hit_header)}")
        note = "same JSON document"
        if m.hit_header:
            note += f", {m.hit_header}: HIT"
        return note
    if m.check == "miss":
        reply = fetch(f"{server.url}?n=check-{secrets.token_hex(4)}")
        if reply.header("x-cache") != "MISS" or reply.body != BODY:
            raise Failed(f"{m.name}: expected a MISS, got x-cache: {reply.header('x-cache')}")
        return "X-Cache: MISS with the same bytes"
    if m.check == "unmatched":
        reply = fetch(server.url)
        if reply.body != BODY:
            raise Failed(f"{m.name}: unexpected body {reply.body[:80]!r}")
        cache_headers = [h for h in ("x-cache", "cache-status", "age") if reply.header(h)]
        if cache_headers:
            raise Failed(f"{m.name}: unmatched path got cache headers {cache_headers}")
        return "same bytes, no cache header"
    raise AssertionError(m.check)


def command_probe(redis_url: str) -> list[redis.Redis] | None:
    """Plain clients on every node that holds data (the Redis, or each cluster primary)."""
    if "://" not in redis_url:
        return None
    try:
        return node_clients(redis_url, socket_timeout=5)
    except (redis.RedisError, OSError) as exc:
        print(f"no Redis command count for {redis_url}: {exc}", file=sys.stderr)
        return None


def redis_commands(clients: list[redis.Redis] | None) -> int | None:
    """Commands processed so far, summed over the nodes (INFO stats)."""
    if not clients:
        return None
    try:
        return sum(int(c.info("stats")["total_commands_processed"]) for c in clients)
    except redis.RedisError:
        return None


# -- the run -------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    round: int
    measurement: str
    requests_per_sec: float
    requests: int
    latency_avg: str
    latency_max: str
    non_2xx: int
    socket_errors: str
    # Redis commands the whole server processed during the run, per request served (other
    # clients of the same Redis count too): ~0 for a near-cache HIT, >= 1 for a Redis HIT.
    redis_commands_per_request: float | None = None


@dataclass
class Outcome:
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    rounds: list[RoundResult] = field(default_factory=list)
    calls_during_load: dict[str, int] = field(default_factory=dict)
    # What each server logged (e.g. "cache store ... unavailable"): a sign the numbers are off.
    server_logs: dict[str, list[str]] = field(default_factory=dict)
    # cache-middleware's own counters per server, for the whole run (checks included).
    middleware_stats: dict[str, dict[str, int]] = field(default_factory=dict)


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    keep: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        server = BY_NAME[base_name(name)].server
        missing = [mod for mod in SERVERS[server].requires if not installed(mod)]
        if missing:
            skipped[name] = f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"
        else:
            keep.append(name)
    return keep, skipped


def server_key(name: str) -> str:
    """The server a measurement loads: `miss` -> `miss`, `nocache-q@c` -> `nocache@c`."""
    label = store_label(name)
    return BY_NAME[base_name(name)].server + (f"@{label}" if label else "")


def measure(
    names: list[str],
    redis_url: str,
    args: argparse.Namespace,
    stores: dict[str, str] | None = None,
) -> Outcome:
    """Start, verify, load in interleaved rounds, verify again. The core of the benchmark.

    `stores` maps labels to more Redis URLs: a name `redis@cluster` is the `redis` variant on
    `stores["cluster"]`, measured in the same rounds as the others (plain names use
    `redis_url`)."""
    urls = {"": redis_url, **(stores or {})}
    names, skipped = available(names)
    outcome = Outcome(names, skipped)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}")
    server_keys = list(dict.fromkeys(server_key(n) for n in names))
    prefix = f"bench:{secrets.token_hex(4)}"
    labels = dict.fromkeys(store_label(n) for n in names)
    probes = {label: command_probe(urls[label]) for label in labels}
    with servers(server_keys, urls, args, prefix) as running:
        for name in names:
            m = BY_NAME[base_name(name)]
            outcome.notes[name] = verify(m, running[server_key(name)])
            print(f"  ok {name:<15} {outcome.notes[name]}")
        if args.warmup > 0:
            for name in names:
                m = BY_NAME[base_name(name)]
                run_wrk(
                    running[server_key(name)].url,
                    duration=args.warmup,
                    connections=args.connections,
                    threads=args.threads,
                    unique_query=m.unique_query,
                )
        before = {
            name: calls(running[server_key(name)])
            for name in names
            if BY_NAME[base_name(name)].check in ("hit", "peer-hit", "miss")
        }
        for round_no in range(1, args.rounds + 1):
            order = names if round_no % 2 else list(reversed(names))
            for name in order:
                m = BY_NAME[base_name(name)]
                probe = probes[store_label(name)]
                commands_before = redis_commands(probe)
                wrk = run_wrk(
                    running[server_key(name)].url,
                    duration=args.duration,
                    connections=args.connections,
                    threads=args.threads,
                    unique_query=m.unique_query,
                )
                commands_after = redis_commands(probe)
                per_request = None
                if commands_before is not None and commands_after is not None and wrk.requests:
                    # minus the probe's own INFO calls (the first counts; one per node)
                    own = len(probe or ())
                    per_request = (commands_after - commands_before - own) / wrk.requests
                result = RoundResult(
                    round=round_no,
                    measurement=name,
                    requests_per_sec=wrk.requests_per_sec,
                    requests=wrk.requests,
                    latency_avg=wrk.latency_avg,
                    latency_max=wrk.latency_max,
                    non_2xx=wrk.non_2xx,
                    socket_errors=wrk.socket_errors,
                    redis_commands_per_request=per_request,
                )
                outcome.rounds.append(result)
                extra = f"  ({per_request:.2f} Redis cmd/req)" if per_request is not None else ""
                print(
                    f"  round {round_no} {name:<15} {result.requests_per_sec:>9.0f} req/s{extra}",
                    flush=True,
                )
        # Still the same answers after the load, and the views ran only when they should have.
        for name in names:
            m = BY_NAME[base_name(name)]
            server = running[server_key(name)]
            if name in before:
                outcome.calls_during_load[name] = calls(server) - before[name]
            verify(m, server)
            served = sum(r.requests for r in outcome.rounds if r.measurement == name)
            if m.check in ("hit", "peer-hit") and outcome.calls_during_load[name] != 0:
                raise Failed(
                    f"{name}: the view ran {outcome.calls_during_load[name]} times under load: "
                    "not all HITs"
                )
            if m.check == "miss" and outcome.calls_during_load[name] < served:
                raise Failed(
                    f"{name}: the view ran {outcome.calls_during_load[name]} times for "
                    f"{served} requests: not every request was a MISS"
                )
        print("  ok every cached variant served HITs only, the MISS variant only MISSes")
        collect_middleware_stats(running, urls, prefix, outcome)
        for key, server in running.items():
            lines = log_lines(server)
            if lines:
                outcome.server_logs[key] = lines[:20] + (
                    [f"... {len(lines) - 20} more lines"] if len(lines) > 20 else []
                )
                print(f"WARNING {key} server logged {len(lines)} line(s), e.g.: {lines[0][:150]}")
    for clients in probes.values():
        for client in clients or ():
            client.close()
    return outcome


OURS = ("redis", "near", "miss", "unmatched", "wsgi-redis", "wsgi-near")


def collect_middleware_stats(
    running: dict[str, Server], urls: dict[str, str], prefix: str, outcome: Outcome
) -> None:
    """cache-middleware's own counters (hits, misses, bypasses, store errors) from its shared
    tally in Redis: each process flushes every 5 s when a request comes, so wait, poke, read."""
    ours = [key for key in running if base_name(key) in OURS]
    if not ours:
        return
    time.sleep(5.2)
    for key in ours:
        fetch(running[key].base + "/bench/poke")  # any request: triggers the flush
    time.sleep(0.5)
    clients = {label: redis_client(urls[label]) for label in {store_label(k) for k in ours}}
    try:
        for key in ours:
            client = clients[store_label(key)]
            raw = client.hgetall(f"{prefix}:{base_name(key)}:STATS")
            totals = {
                k.decode().split("||", 1)[1]: int(v)
                for k, v in raw.items()
                if k.decode().startswith("total||")
            }
            outcome.middleware_stats[key] = totals
            bad = {k: totals.get(k, 0) for k in ("bypasses", "errors") if totals.get(k, 0)}
            expected_bypasses = base_name(key) == "unmatched"
            if bad and not expected_bypasses:
                print(
                    f"WARNING {key}: cache-middleware counted {bad}: some requests were not "
                    "answered by the path measured (store errors fail open)"
                )
    except redis.RedisError as exc:
        print(f"could not read cache-middleware's counters: {exc}", file=sys.stderr)
    finally:
        for client in clients.values():
            client.close()


def run_redis_variants(redis_url: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Every Redis-backed variant (ours and the peers) and the ceilings against any Redis URL.

    `run_redis_variants("redis+cluster://...")` returns the report (as written to JSON)
    without touching the docs. Peers that cannot talk to that URL fail their start-up and end
    the run; narrow the set with `--only` in argv. bench/cluster.py instead calls `measure`
    with `stores=` to run cluster and single Redis in the same rounds.
    """
    args = parse_args([*(argv or []), "--redis-url", redis_url, "--no-docs"])
    names = select(args.only or "redis-variants")
    outcome = measure(names, redis_url, args)
    return build_report(args, outcome, machine_facts(PACKAGES, redis_url), command=None)


# -- numbers -------------------------------------------------------------------------------------


def rps(outcome_rounds: list[dict[str, Any]], name: str) -> dict[int, float]:
    return {r["round"]: r["requests_per_sec"] for r in outcome_rounds if r["measurement"] == name}


def summarize(rounds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    medians: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    cmds: dict[str, float | None] = {}
    for name in names:
        values = rps(rounds, name)
        if not values:
            continue
        per_round[name] = [values[k] for k in sorted(values)]
        medians[name] = statistics.median(values.values())
        c = [
            r["redis_commands_per_request"]
            for r in rounds
            if r["measurement"] == name and r.get("redis_commands_per_request") is not None
        ]
        cmds[name] = statistics.median(c) if c else None
    ratios: dict[str, dict[str, Any]] = {}
    for ratio in ratio_list():
        a, b = rps(rounds, ratio.numerator), rps(rounds, ratio.denominator)
        common = sorted(set(a) & set(b))
        if not common:
            continue
        paired = [a[k] / b[k] for k in common]
        ratios[ratio.key] = {
            "what": ratio.what,
            "median": statistics.median(paired),
            "min": min(paired),
            "max": max(paired),
            "per_round": paired,
            "ratio_of_medians": statistics.median(a.values()) / statistics.median(b.values()),
        }
    targets = []
    for t in TARGETS:
        r = ratios.get(t.ratio)
        targets.append(
            {
                "target": t.text,
                "ratio": t.ratio,
                "minimum": t.minimum,
                "measured": r["median"] if r else None,
                "met": (r["median"] >= t.minimum) if r else None,
            }
        )
    return {
        "median_rps": medians,
        "per_round_rps": per_round,
        "redis_commands_per_request": cmds,
        "ratios": ratios,
        "targets": targets,
    }


def build_report(
    args: argparse.Namespace,
    outcome: Outcome,
    facts: dict[str, Any],
    command: str | None,
) -> dict[str, Any]:
    rounds = [asdict(r) for r in outcome.rounds]
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("docs", "no_docs", "docs_from", "json")
    }
    facts = {
        **facts,
        "uvloop": installed("uvloop"),
        "httptools": installed("httptools"),
        "body_bytes": len(BODY),
    }
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "settings": settings,
        "environment": facts,
        "measurements": {
            name: {
                "label": BY_NAME[base_name(name)].label,
                "server": server_key(name),
                "kind": SERVERS[BY_NAME[base_name(name)].server].kind,
                "group": BY_NAME[base_name(name)].group,
                "baseline": BY_NAME[base_name(name)].baseline,
                "unique_query": BY_NAME[base_name(name)].unique_query,
                "verified": outcome.notes.get(name),
                "view_calls_during_load": outcome.calls_during_load.get(name),
            }
            for name in outcome.names
        },
        "skipped": outcome.skipped,
        "server_logs": outcome.server_logs,
        "middleware_stats": outcome.middleware_stats,
        "summary": summarize(rounds, outcome.names),
        "rounds": rounds,
    }


def print_summary(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(f"\n{'variant':<16} {'median req/s':>12}  per round")
    for name, median in summary["median_rps"].items():
        per_round = "  ".join(f"{v:>7.0f}" for v in summary["per_round_rps"][name])
        print(f"{name:<16} {median:>12.0f}  {per_round}")
    print(f"\n{'ratio (median of per-round ratios)':<40} {'median':>7} {'min':>7} {'max':>7}")
    for key, r in summary["ratios"].items():
        print(f"{key:<40} {r['median']:>7.3f} {r['min']:>7.3f} {r['max']:>7.3f}")
    print("\ntargets")
    for t in summary["targets"]:
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        measured = "-" if t["measured"] is None else f"{t['measured']:.3f}x"
        print(f"  {state:<8} {t['target']:<52} {measured}")
    problems = [r for r in report["rounds"] if r["non_2xx"] or r["socket_errors"]]
    for r in problems:
        print(
            f"WARNING round {r['round']} {r['measurement']}: non-2xx={r['non_2xx']} "
            f"socket errors: {r['socket_errors'] or 'none'}"
        )


# -- docs ----------------------------------------------------------------------------------------


def fmt_ratio(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    return f"{r['median']:.2f}x"


def render_markdown(report: dict[str, Any], existing: str | None) -> str:
    env = report["environment"]
    s = report["settings"]
    summary = report["summary"]
    ratios = summary["ratios"]
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    not_installed = [k for k, v in env["packages"].items() if not v]
    wsgi = f"gunicorn `{s['wsgi_worker']}` worker" + (
        f", {s['wsgi_threads']} threads" if s["wsgi_worker"] == "gthread" else ""
    )
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/compare.py` (do not edit by hand; rerun it). cache-middleware next",
        "to the bare app and to its peers, every variant served by one worker process on the",
        "same machine, under the same `wrk` load, measured in interleaved rounds.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| run | {report['timestamp']}, commit `{env.get('git_commit')}` |",
        f"| CPU | {env['cpu']}, {env['cpus']} cores"
        + (" |" if s.get("pin") else " (wrk, the server and Redis share them) |"),
        f"| OS kernel | {env['kernel']} |",
        f"| Python | {env['implementation']} {env['python']} |",
        f"| Redis server | {env.get('redis_server')} at `{s['redis_url']}` |",
        f"| load | {env['wrk']}, `-t{s['threads']} -c{s['connections']}`, "
        f"{s['duration']:g} s per run, {s['warmup']:g} s warm-up |",
        f"| ASGI server | uvicorn, 1 worker, uvloop: {env['uvloop']}, httptools: "
        f"{env['httptools']}, no access log |",
        f"| WSGI server | {wsgi}, 1 worker |",
        "| CPU pinning | "
        + (
            f"servers on CPU {s['pin'].split(':')[0]}, wrk and Redis on CPU "
            f"{s['pin'].split(':')[1]} (`--pin`; the default `auto` pins so on 2+ CPUs) |"
            if s.get("pin")
            else "none: the scheduler shares both CPUs between wrk, the server and Redis |"
        ),
        f"| load average before | {env['loadavg_1min_before']:.2f} |",
        f"| packages | {packages} |",
    ]
    if not_installed:
        lines.append(f"| not installed | {', '.join(not_installed)} |")
    command = report.get("command") or "python bench/compare.py"
    lines += [
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        f"{s['rounds']} rounds; in each round every variant runs once, in the order of the table",
        "below (every other round in reverse). Each ratio is taken per round, against the other",
        "side's run in the same round, and the table gives the median over rounds. The body is",
        f"the same {env['body_bytes']}-byte JSON document everywhere (`bench/apps.py`).",
        "",
        "## Results",
        "",
        "![req/s per variant](benchmarks.svg)",
        "",
        "| variant | what | median req/s | per round | vs ceiling | Redis cmd/req |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, median in summary["median_rps"].items():
        meta = report["measurements"][name]
        baseline = meta["baseline"]
        vs = "1.00x" if name == baseline else fmt_ratio(ratios.get(f"{name}/{baseline}"))
        cmds = summary["redis_commands_per_request"].get(name)
        per_round = ", ".join(f"{v:.0f}" for v in summary["per_round_rps"][name])
        lines.append(
            f"| `{name}` | {meta['label']} | {median:,.0f} | {per_round} | {vs} | "
            f"{'-' if cmds is None else f'{cmds:.2f}'} |"
        )
    lines += [
        "",
        "`vs ceiling` is against the static Starlette app for ASGI variants and the static Flask",
        "view for WSGI ones. The `hit-ceiling` rows bound every HIT on their server: a",
        "middleware where ours sits, sending the bench's bytes and a HIT's nine headers and doing",
        "nothing else. `Redis cmd/req` counts every command the Redis server processed during",
        "the run per request served (other clients of that Redis would count too).",
        "",
        "### cache-middleware against each peer",
        "",
        "| ratio | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for key, r in ratios.items():
        if key.split("/")[0] in ("redis", "near", "wsgi-redis", "wsgi-near") and key.split("/")[
            1
        ] not in ("static", "flask-static"):
            lines.append(f"| `{key}` | {r['median']:.2f}x | {r['min']:.2f}x | {r['max']:.2f}x |")
    lines += [
        "",
        "### Overheads",
        "",
        "| ratio | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for key in ("miss/nocache-q", "unmatched/nocache", "nocache/static", "fastapi/static"):
        r = ratios.get(key)
        if r:
            lines.append(f"| `{key}` | {r['median']:.3f}x | {r['min']:.3f}x | {r['max']:.3f}x |")
    lines += [
        "",
        "`miss` keys its route on a query parameter and the load gives every request a value",
        "never used before (a wrk script), so every request is looked up, missed, passed to the",
        "view and stored; `nocache-q` is the bare view under that same load. `unmatched` has",
        "the middleware on, with a route that does not match the path requested.",
        "",
        "## Targets (issue #6)",
        "",
        "| target | measured (median) | |",
        "|---|---:|---|",
    ]
    for t in summary["targets"]:
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "**not met**")
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
        lines.append(f"| {t['target']} | {measured} | {state} |")
    lines += [
        "",
        "## What was checked",
        "",
        "Before and after the load: every variant answers GET /api/events with the same JSON",
        "document. The cached variants answer from their cache (`X-Cache: HIT` for",
        "cache-middleware, `X-FastAPI-Cache: HIT` for fastapi-cache2), and the view behind each",
        "cached variant, which counts its calls, was not called once during the load (cashews",
        "and Flask-Caching set no header: the count is the proof). The MISS variant's view ran",
        "at least once per request served.",
        "",
        "| variant | verified | view calls during load |",
        "|---|---|---:|",
    ]
    for name, meta in report["measurements"].items():
        c = meta["view_calls_during_load"]
        lines.append(f"| `{name}` | {meta['verified']} | {'-' if c is None else c} |")
    stats = report.get("middleware_stats") or {}
    if stats:
        lines += [
            "",
            "cache-middleware's own counters for the whole run (checks and warm-up included):",
            "",
            "| server | hits | misses | stores | bypasses | store errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, c in stats.items():
            lines.append(
                f"| `{key}` | {c.get('hits', 0)} | {c.get('misses', 0)} | {c.get('stores', 0)} | "
                f"{c.get('bypasses', 0)} | {c.get('errors', 0)} |"
            )
    logs = report.get("server_logs") or {}
    if logs:
        lines += ["", "Servers that logged something during the run (first line shown):", ""]
        for k, v in logs.items():
            more = v[-1].split()[1] if v and v[-1].startswith("... ") else "0"
            count = len(v) - 1 + int(more) if more != "0" else len(v)
            lines.append(f"- `{k}` ({count} lines): `{v[0][:160]}`")
    miss = stats.get("miss") or {}
    if miss.get("bypasses"):
        looked = miss.get("misses", 0) + miss.get("bypasses", 0)
        lines += [
            "",
            f"Of the `miss` server's requests, {miss['bypasses']} of {looked} "
            f"({100 * miss['bypasses'] / looked:.0f}%) were bypasses after store errors (see its",
            "log): when its Redis connections run out it fails open and answers uncached, which",
            "is cheaper than a MISS, so the `miss` figure overstates the MISS path.",
        ]
    if report.get("skipped"):
        lines += ["", "Skipped:", ""]
        lines += [f"- `{k}`: {v}" for k, v in report["skipped"].items()]
    lines += [
        "",
        "## Reading the numbers",
        "",
        *(
            [
                "The server under test had a CPU of its own, wrk and Redis the other (`--pin`):",
                "a server's req/s is then its own CPU cost per request, not a share of what the",
                "load generator leaves it. Absolute req/s still move from run to run on a",
                "shared virtual machine; compare ratios measured in the same run. The",
            ]
            if s.get("pin")
            else [
                "On a 2-core machine wrk, the server and Redis compete for the CPUs, so absolute",
                "req/s mean little and move from run to run; compare ratios measured in the",
                "same run. The",
            ]
        ),
        "peers run on FastAPI (the `fastapi` row is FastAPI without a cache) or Flask, as their",
        "documentation sets them up; cache-middleware runs on Starlette and Flask.",
        "",
        "How the peers reach Redis on a HIT shows in the `Redis cmd/req` column: fastapi-cache2",
        "reads TTL and value in a MULTI/EXEC transaction (4 commands per HIT) and FastAPI then",
        "serializes the decoded dict; cashews' `@cache` has thunder protection on by default, so",
        "concurrent requests for the one key benchmarked share a single GET (far fewer than one",
        "command per request under 64 connections) and FastAPI serializes the unpickled dict;",
        "Flask-Caching unpickles the dict and Flask serializes it. A cache-middleware HIT is one",
        "GET (pipelined) replaying stored bytes, a near-cache HIT none.",
        "",
        "## The targets not met, and why",
        "",
        *shortfalls(report),
        "",
        f"## {INSTRUCTIONS_TITLE}",
        "",
        kept_section(existing, INSTRUCTIONS_TITLE, INSTRUCTIONS_PLACEHOLDER),
        "",
        f"## {CLUSTER_TITLE}",
        "",
        kept_section(existing, CLUSTER_TITLE, CLUSTER_PLACEHOLDER),
        "",
        f"## {SERVERS_TITLE}",
        "",
        kept_section(existing, SERVERS_TITLE, SERVERS_PLACEHOLDER),
        "",
        f"## {HEADERS_TITLE}",
        "",
        kept_section(existing, HEADERS_TITLE, HEADERS_PLACEHOLDER),
        "",
    ]
    return "\n".join(lines)


def _per_request_us(summary: dict[str, Any], name: str) -> float | None:
    rate = summary["median_rps"].get(name)
    return 1e6 / rate if rate else None


def shortfalls(report: dict[str, Any]) -> list[str]:
    """Why each target this run missed is out of reach, with the figures of this very run (so
    the text never cites numbers from another run)."""
    summary = report["summary"]
    ratios = summary["ratios"]
    missed = {t["ratio"] for t in summary["targets"] if t["met"] is False}
    if not missed:
        return ["Every target was met in this run."]

    def median(key: str) -> float | None:
        r = ratios.get(key)
        return r["median"] if r else None

    static_us = _per_request_us(summary, "static")
    in_process = report.get("in_process") or {}
    static_app_us = (in_process.get("static") or {}).get("us_per_request")
    pinned = bool(report["settings"].get("pin"))
    server_cost = (
        f"the static endpoint costs {static_us:.0f} us per request served here, of which its "
        f"Starlette app is {static_app_us or 13:.0f} us in process: the rest is uvicorn's "
        "(parsing, the ASGI cycle, two socket writes per response)"
        + (
            ", on a CPU of its own"
            if pinned
            else " and the CPU that wrk and Redis take from the same two cores"
        )
        if static_us
        else "the rest of a request's cost is uvicorn's"
    )
    paragraphs: list[str] = []
    cashews, near = median("cashews/static"), median("near/static")
    ceiling = median("hit-ceiling/static")
    if missed & {"redis/cashews", "near/cashews"} and cashews and near:
        paragraphs.append(
            f"**5x cashews.** cashews' HIT runs at {cashews:.2f}x the static Starlette endpoint "
            "here (its thunder protection turns 64 concurrent HITs on one key into one GET; the "
            f"issue saw it at about 2k req/s). 5x it would need a HIT at {5 * cashews:.2f}x the "
            f"static endpoint; the near-cache HIT is {near:.2f}x it"
            + (
                f", and a middleware that does nothing at all but send a HIT's bytes and headers "
                f"(the `hit-ceiling` row) reaches {ceiling:.2f}x: "
                + (
                    "no HIT on this server can"
                    if ceiling < 5 * cashews
                    else "a HIT would have to cost next to nothing beyond the server's own work"
                )
                if ceiling
                else ""
            )
            + f". {server_cost[0].upper()}{server_cost[1:]}."
            + (
                f" A Redis HIT ({median('redis/cashews') or 0:.2f}x cashews) is further off: "
                f"its round trip costs {redis_us - near_us:.0f} us more per request served than "
                "the near-cache HIT here."
                if (redis_us := _per_request_us(summary, "redis"))
                and (near_us := _per_request_us(summary, "near"))
                else ""
            )
        )
    flask_caching = median("flask-caching/flask-static")
    wsgi_near = median("wsgi-near/flask-static")
    wsgi_ceiling = median("wsgi-hit-ceiling/flask-static")
    flask_us = _per_request_us(summary, "flask-static")
    if missed & {"wsgi-redis/flask-caching", "wsgi-near/flask-caching"} and flask_caching:
        paragraphs.append(
            f"**5x Flask-Caching.** Flask-Caching's HIT runs at {flask_caching:.2f}x the static "
            f"Flask view; 5x it would need {5 * flask_caching:.2f}x the static view"
            + (f", and the near-cache HIT is {wsgi_near:.2f}x it" if wsgi_near else "")
            + (
                f". A WSGI middleware that does nothing but send a HIT's bytes and headers (the "
                f"`wsgi-hit-ceiling` row) reaches {wsgi_ceiling:.2f}x: "
                + (
                    "no WSGI HIT under gunicorn can"
                    if wsgi_ceiling < 5 * flask_caching
                    else "the server would allow it"
                )
                if wsgi_ceiling
                else ""
            )
            + ". Under gunicorn the worker's own per-request cost dominates"
            + (f": the static view costs {flask_us:.0f} us per request served" if flask_us else "")
            + " in this run, most of it gunicorn's (parsing, the thread hand-off, two socket "
            "writes per response), which every WSGI variant pays alike."
        )
    near_ip = in_process.get("near")
    static_ip = in_process.get("static")
    if "near/static" in missed and near and near_ip and static_ip:
        own_near = near_ip["us_per_request"] - near_ip["header_us"]
        own_static = static_ip["us_per_request"] - static_ip["header_us"]
        paragraphs.append(
            f"**Near-cache HIT >= 1.0x static: {near:.2f}x in this run.** In process, before "
            "the load (`bench/inprocess.py`: the fastest of 7 batches of 10,000 requests, "
            "with uvicorn's own header checks applied to each response), the static endpoint "
            f"costs {static_ip['us_per_request']:.1f} us per request and a near-cache HIT "
            f"{near_ip['us_per_request']:.1f} us. The HIT answers with {near_ip['headers']} "
            f"headers ({', '.join(near_ip['header_names'])}) against the static endpoint's "
            f"{static_ip['headers']}, and uvicorn checks every header it writes with two "
            f"regular expressions: {near_ip['header_us']:.1f} us against "
            f"{static_ip['header_us']:.1f} us. Without that, the HIT's own work costs "
            f"{own_near:.1f} us, "
            + (
                f"less than the static endpoint's {own_static:.1f} us: the difference is the "
                "headers. "
                if own_near < own_static
                else f"against the static endpoint's {own_static:.1f} us. "
            )
            + "The contract requires all but ETag and Cache-Status; `expose_key_header: false` "
            "drops X-Cache-Key."
        )
    elif "near/static" in missed and near:
        paragraphs.append(
            f"**Near-cache HIT >= 1.0x static: {near:.2f}x in this run** (no in-process "
            "figures in this run: `python bench/inprocess.py` gives them)."
        )
    miss = median("miss/nocache-q")
    redis_us = _per_request_us(summary, "redis")
    bare_us = _per_request_us(summary, "nocache-q")
    # The round trip's price: a Redis HIT against the near-cache HIT, which does the same work
    # but the GET (both take the short way, so the app's own cost is in neither); against the
    # static endpoint when the near-cache was not measured.
    near_us = _per_request_us(summary, "near")
    base_us, base_name = (
        (near_us, "the near-cache HIT") if near_us else (static_us, "the static endpoint")
    )
    if "miss/nocache-q" in missed and miss and base_us and redis_us and bare_us:
        trip = redis_us - base_us  # one GET round trip
        floor = bare_us / (bare_us + 2 * trip)
        paragraphs.append(
            f"**MISS overhead <= 10%: {miss:.2f}x in this run.** A MISS must at least look the "
            "key up and store the response: two Redis round trips besides the view's own work "
            "(on routes that mostly miss, cache-middleware takes the fill lease in the lookup "
            "itself, one script, so two is what it does). This run prices a round trip: a Redis "
            f"HIT costs {redis_us:.0f} us per request served, {base_name} "
            f"{base_us:.0f} us, so one GET costs about {trip:.0f} us (encoding "
            "the command, the await, parsing the reply"
            + ("" if pinned else ", and Redis' own work on the same two cores")
            + f"); the bare view under the unique-query load costs {bare_us:.0f} us. "
            f"Two such round trips put a MISS at {floor:.2f}x the bare view at best; 0.90x "
            f"would need a round trip under {bare_us * 0.1 / 2 / 0.9:.0f} us. The rest of the "
            "distance to that floor is the MISS path's own work in the server process: "
            "deriving a new key, recording, copying and encoding the response, the fill "
            "scripts' arguments, and the garbage collector, which the state of a MISS kept "
            "alive across its two awaits sets off (docs/deployment.md measures it)"
            + (
                "."
                if pinned
                else "; and the scripts in Redis (the lease joins the path index; the store "
                "checks lease and epoch and indexes the entry), on the same two cores."
            )
            + (
                f" In process (`bench/inprocess.py --miss`: {ip_miss['concurrency']} requests at "
                "once on one event loop, CPU time, the fastest of 5 batches), the bare view "
                f"costs {ip_miss['nocache_us']:.0f} us per request and a MISS "
                f"{ip_miss['miss_us']:.0f} us: {ip_miss['miss_us'] - ip_miss['nocache_us']:.0f}"
                " us of the MISS path's own work, round trips' client side included; 10% of "
                f"the bare view would be {ip_miss['nocache_us'] * 0.1:.1f} us."
                if (ip_miss := report.get("in_process_miss"))
                else ""
            )
        )
    unmatched = ratios.get("unmatched/nocache")
    if "unmatched/nocache" in missed and unmatched:
        paragraphs.append(
            f"**Unmatched-route overhead <= 3%: {unmatched['median']:.2f}x in this run** (per "
            f"round {unmatched['min']:.2f}x to {unmatched['max']:.2f}x). For a path no route "
            "matches, the middleware does one remembered route lookup (about 0.2 us, "
            "`policy.covers`) and one more coroutine call before the app, well under 1% of the "
            f"{_per_request_us(summary, 'nocache') or 0:.0f} us a bare request costs here: a "
            "3% threshold is inside this machine's run-to-run noise (the per-round range "
            "above), so this target can come out either way from one run to the next."
        )
    if not paragraphs:
        return ["Every target missed in this run is listed above; no analysis applies."]
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += textwrap.wrap(
            paragraph, 96, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
    return lines


# Sections of docs/benchmarks.md that another script writes; compare.py keeps them as they are.
INSTRUCTIONS_TITLE = "Instructions per request"
CLUSTER_TITLE = "Cluster"
SERVERS_TITLE = "Servers"
HEADERS_TITLE = "Headers of a HIT"


def kept_section(existing: str | None, title: str, placeholder: str) -> str:
    """What another script wrote under `## title` (`cluster.py`, `instructions.py`), to keep
    when this one rewrites the file; else the placeholder."""
    marker = f"\n## {title}\n"
    if existing and marker in existing:
        body = existing.split(marker, 1)[1]
        nxt = body.find("\n## ")
        body = (body if nxt < 0 else body[:nxt]).strip()
        if body:
            return body
    return placeholder


def write_section(title: str, section: str, before: str | None = None) -> None:
    """Replace the `## title` section of docs/benchmarks.md, leaving the rest as is; a new one
    goes in before the `## before` section if there is one, else at the end."""
    text = DOCS_FILE.read_text() if DOCS_FILE.exists() else "# Benchmarks\n"
    marker = f"\n## {title}\n"
    following = f"\n## {before}\n" if before else None
    if marker in text:
        head, body = text.split(marker, 1)
        nxt = body.find("\n## ")
        tail = "" if nxt < 0 else body[nxt:]
    elif following and following in text:
        head, rest = text.split(following, 1)
        tail = following + rest
    else:
        head, tail = text.rstrip("\n"), ""
    DOCS_FILE.write_text(f"{head.rstrip()}\n{marker}\n{section}\n{tail}".rstrip("\n") + "\n")
    print(f"wrote the ## {title} section of {DOCS_FILE.relative_to(REPO_DIR)}")


COLOURS = {"baseline": "#9aa0a6", "ours": "#1a73e8", "peer": "#e8710a", "overhead": "#12b5cb"}


def render_svg(report: dict[str, Any]) -> str:
    """A horizontal bar chart of median req/s, one bar per variant, ASGI then WSGI."""
    summary = report["summary"]
    names = list(summary["median_rps"])
    top = max(summary["median_rps"].values()) if names else 1.0
    label_w, bar_w, row_h, pad = 300, 380, 24, 10
    width = label_w + bar_w + 150
    height = pad * 2 + 40 + row_h * len(names) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{pad}" y="{pad + 14}" font-size="15" font-weight="bold">'
        "Requests per second, median of rounds (higher is better)</text>",
        f'<text x="{pad}" y="{pad + 32}" fill="#555">'
        + html.escape(
            f"{report['environment']['cpus']} cores, wrk -t{report['settings']['threads']} "
            f"-c{report['settings']['connections']}, {report['settings']['rounds']} rounds x "
            f"{report['settings']['duration']:g} s, {report['timestamp']}"
        )
        + "</text>",
    ]
    y = pad + 44
    for name in names:
        meta = report["measurements"][name]
        rps_value = summary["median_rps"][name]
        length = max(1.0, bar_w * rps_value / top)
        baseline = meta["baseline"]
        ratio = summary["ratios"].get(f"{name}/{baseline}")
        vs = "" if name == baseline or ratio is None else f"  {ratio['median']:.2f}x ceiling"
        colour = COLOURS.get(meta["group"], "#888")
        out += [
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">'
            f"{html.escape(meta['label'])} ({meta['kind'].upper()})</text>",
            f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
            f'fill="{colour}"/>',
            f'<text x="{label_w + length + 6:.1f}" y="{y + 16}">'
            f"{rps_value:,.0f}{html.escape(vs)}</text>",
        ]
        y += row_h
    legend_x = pad
    for group, colour in COLOURS.items():
        out += [
            f'<rect x="{legend_x}" y="{y + 10}" width="12" height="12" fill="{colour}"/>',
            f'<text x="{legend_x + 16}" y="{y + 20}">{group}</text>',
        ]
        legend_x += 110
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_docs(report: dict[str, Any]) -> None:
    existing = DOCS_FILE.read_text() if DOCS_FILE.exists() else None
    DOCS_FILE.write_text(render_markdown(report, existing))
    SVG_FILE.write_text(render_svg(report))
    print(f"wrote {DOCS_FILE.relative_to(REPO_DIR)} and {SVG_FILE.relative_to(REPO_DIR)}")


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        write_docs(json.loads(args.docs_from.read_text()))
        return 0
    if not require_wrk():
        return 2
    names = select(args.only)
    full = not args.only.strip() and not args.quick
    signal.signal(signal.SIGTERM, raise_interrupt)
    facts = machine_facts(PACKAGES, args.redis_url)
    raw_args = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "bench/compare.py", *raw_args])
    print(
        f"{len(names)} variants, wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s x {args.rounds} rounds, uvloop: {installed('uvloop')}, "
        f"httptools: {installed('httptools')}, WSGI: gunicorn {args.wsgi_worker}"
        + (f" x{args.wsgi_threads} threads" if args.wsgi_worker == "gthread" else "")
    )
    in_process: dict[str, Any] = {}
    if {"static", "near"} <= set(names):
        # Before the servers start: what a request costs in process, on a quiet machine.
        in_process = measure_in_process(args.redis_url)
        print(
            "in process, us per request (of which uvicorn's header checks): "
            + ", ".join(
                f"{n} {r['us_per_request']:.1f} ({r['header_us']:.1f})"
                for n, r in in_process.items()
            )
        )
    in_process_miss: dict[str, Any] = {}
    if "miss" in names:
        in_process_miss = measure_miss_in_process(args.redis_url)
        print(
            f"in process, CPU us per request ({in_process_miss['concurrency']} at once, unique "
            f"queries): bare view {in_process_miss['nocache_us']:.1f}, "
            f"MISS {in_process_miss['miss_us']:.1f}"
        )
    unpin_redis = None
    if args.pin:
        server_cpus, load_cpus = parse_pin(args.pin)
        pin(server_cpus, load_cpus)
        unpin_redis = pin_redis(args.redis_url, load_cpus)
    try:
        outcome = measure(names, args.redis_url, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if unpin_redis is not None:
            unpin_redis()
    report = build_report(args, outcome, facts, command)
    report["in_process"] = in_process
    report["in_process_miss"] = in_process_miss
    print_summary(report)
    dump_json(args.json, report)
    print(f"\nwrote {args.json}")
    if args.docs or (full and not args.no_docs):
        write_docs(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
