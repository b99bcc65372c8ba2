"""Every ASGI variant under each server, beside nginx `proxy_cache`: the server as a dimension.

    python bench/servers.py                              # all of it, 3 rounds x 5 s, the docs
    python bench/servers.py --quick                      # smoke run: 1 round x 2 s, no docs
    python bench/servers.py --only static,near,redis --servers uvicorn,granian --rounds 5
    python bench/servers.py --docs-from bench/results/servers.json

The ASGI variants of `compare.py` (the same apps, checks and Redis) each run under uvicorn,
granian and hypercorn (1 worker each, their fastest stock options: `SERVER_FLAGS`), and, when
`nginx` is on the PATH, nginx with `proxy_cache` in front of the bare static app is the anchor:
what a HIT costs a server written in C. nginx runs as a foreground child with its config, pid
file, logs, temp and cache folders in a temporary folder that is removed afterwards; it is
stopped however the run ends.

What it reports is the CPU each server spends per request: utime + stime of the server's whole
process tree (granian's and hypercorn's workers, nginx's master and worker) over the wrk run,
divided by the requests wrk completed. Pinned as `compare.py` pins (servers on one CPU, wrk and
Redis on the other), req/s is that same cost seen from outside; the CPU figure does not depend on
what else the machine does, which a shared 2-core VM needs. Rounds are interleaved (every other
one reversed) and each ratio to nginx is taken per round, the median reported.

Writes `bench/results/servers.json`, and for a full run the `## Servers` section of
`docs/benchmarks.md` (which `compare.py` keeps) and `docs/benchmarks-servers.svg`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apps import BODY, EVENTS_PATH
from compare import (
    BY_NAME,
    MEASUREMENTS,
    SERVERS,
    SERVERS_TITLE,
    Failed,
    calls,
    verify,
    write_section,
)
from compare_apps import ENV_KEY_PREFIX, ENV_REDIS_TIMEOUT, ENV_REDIS_URL
from harness import (
    BENCH_DIR,
    REPO_DIR,
    Server,
    _spawn,
    cpu_seconds,
    delete_bench_keys,
    dump_json,
    fetch,
    free_port,
    installed,
    log_lines,
    machine_facts,
    parse_pin,
    pin,
    pin_redis,
    process_tree,
    raise_interrupt,
    require_wrk,
    resolve_pin,
    run_wrk,
    stop,
    uvicorn_flags,
    wait_ready,
)

RESULTS_FILE = BENCH_DIR / "results" / "servers.json"
LOG_DIR = BENCH_DIR / "results" / "logs-servers"
SVG_FILE = REPO_DIR / "docs" / "benchmarks-servers.svg"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
BIN = Path(sys.executable).parent

# The ASGI variants of compare.py, in its order.
VARIANTS = [m.name for m in MEASUREMENTS if SERVERS[m.server].kind == "asgi"]
# The variants the chart shows: a HIT and its ceilings.
HIT_VARIANTS = ["static", "hit-ceiling", "near", "redis"]


def granian_flags(*extra: str) -> list[str]:
    # HTTP/1 only (wrk speaks nothing else; `auto` sniffs every connection), uvloop, 1 worker.
    loop = ["--loop", "uvloop"] if installed("uvloop") else []
    return [
        "--interface", "asgi", "--http", "1", *loop, "--workers", "1",
        "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


def hypercorn_flags() -> list[str]:
    worker = ["--worker-class", "uvloop"] if installed("uvloop") else []
    return ["--workers", "1", *worker, "--log-level", "warning"]


# server -> its options (shown in the docs as they are passed)
SERVER_FLAGS: dict[str, list[str]] = {
    "uvicorn": uvicorn_flags(),
    "granian": granian_flags(),
    "granian-rust": granian_flags("--task-impl", "rust"),
    "hypercorn": hypercorn_flags(),
}
SERVER_MODULES = {
    "uvicorn": "uvicorn",
    "granian": "granian",
    "granian-rust": "granian",
    "hypercorn": "hypercorn",
}
DEFAULT_SERVERS = "uvicorn,granian,granian-rust,hypercorn,nginx"
# nginx flavours: the stock directives (an access log, as a default install writes one), and
# the same with what a proxy tuned for throughput turns off or keeps open.
NGINX_FLAVOURS = {
    "nginx": "access_log {dir}/access.log;",
    "nginx-tuned": (
        "access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
        "    open_file_cache max=1000 inactive=60s;"
    ),
}
NGINX_REFERENCE = "nginx"
# What granian --task-impl rust says at every start; anything else a server logs is reported.
EXPECTED_LOG = "Rust task implementation is experimental!"


# -- starting each server --------------------------------------------------------------------


def start_asgi(server: str, variant: str, env: dict[str, str]) -> Server:
    """The variant's app under `server`, on a free port, its output in a log file."""
    factory = SERVERS[BY_NAME[variant].server].factory
    return start_factory(server, factory, f"{variant}/{server}", env)


def start_factory(server: str, factory: str, name: str, env: dict[str, str]) -> Server:
    """`factory` (module:function in bench/) under `server`, on a free port, logged."""
    port = free_port()
    if server == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--app-dir"]
        command += [str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port)]
    elif server.startswith("granian"):
        command = [str(BIN / "granian"), "--factory", "--working-dir", str(BENCH_DIR)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
    else:  # hypercorn calls `module:function()` itself
        command = [sys.executable, "-m", "hypercorn", f"{factory}()"]
        command += ["--bind", f"127.0.0.1:{port}"]
    if server.startswith("granian"):
        command += [*SERVER_FLAGS[server], factory]
    else:
        command += SERVER_FLAGS[server]
    log = LOG_DIR / f"{name.replace('/', '-')}.log"
    return Server(name, port, _spawn(command, env, log, cwd=BENCH_DIR), EVENTS_PATH, log)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {flavour}
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:1m max_size=10m inactive=60m
                     use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(flavour: str, upstream: int, folder: Path) -> Server:
    """nginx (`flavour` of NGINX_FLAVOURS) caching the bare app on port `upstream`; everything
    it writes stays in `folder`."""
    folder.mkdir(parents=True)
    port = free_port()
    # As root, nginx hands its worker to `nobody` unless told otherwise: the worker must be
    # able to write the cache in our (private) temporary folder.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    directives = NGINX_FLAVOURS[flavour].format(dir=folder)
    conf.write_text(
        NGINX_CONF.format(dir=folder, user=user, flavour=directives, port=port, upstream=upstream)
    )
    # -e: nginx opens its compiled-in error log before reading the config; keep it here too.
    command = ["nginx", "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
    return Server(
        flavour, port, _spawn(command, dict(os.environ), folder / "stdout.log"), EVENTS_PATH
    )


def stop_nginx(server: Server) -> None:
    """SIGQUIT is nginx's graceful stop; a kill if it lingers."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGQUIT)
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def verify_nginx(server: Server) -> str:
    deadline = time.monotonic() + 3
    reply = fetch(server.url)
    while reply.header("x-cache-status") != "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = fetch(server.url)
    if reply.header("x-cache-status") != "HIT" or reply.body != BODY:
        raise Failed(f"{server.name}: no proxy_cache HIT ({reply.header('x-cache-status')})")
    return "X-Cache-Status: HIT with the same bytes"


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    variant: str  # a compare.py variant, or an nginx flavour
    server: str  # uvicorn, granian, ... or nginx

    @property
    def key(self) -> str:
        return self.variant if self.server == "nginx" else f"{self.variant}/{self.server}"


def plan(variants: list[str], servers: list[str]) -> list[Cell]:
    """In run order: each variant under every server side by side; nginx just before the HITs."""
    cells: list[Cell] = []
    for variant in variants:
        if variant == "near" and "nginx" in servers:
            cells += [Cell(flavour, "nginx") for flavour in NGINX_FLAVOURS]
        cells += [Cell(variant, s) for s in servers if s != "nginx"]
    if "nginx" in servers and "near" not in variants:
        cells += [Cell(flavour, "nginx") for flavour in NGINX_FLAVOURS]
    return cells


@contextlib.contextmanager
def running(
    cells: list[Cell], redis_url: str, prefix: str, scratch: Path, redis_timeout: float
) -> Iterator[dict[str, Server]]:
    """Every cell's server up and answering; all stopped (nginx too) however the block ends."""
    started: dict[str, Server] = {}
    nginxes: list[Server] = []
    env = {
        **os.environ,
        ENV_REDIS_TIMEOUT: str(redis_timeout),
        ENV_REDIS_URL: redis_url,
        ENV_KEY_PREFIX: prefix,
        "PYTHONPATH": str(BENCH_DIR),
    }
    try:
        for cell in cells:
            if cell.server != "nginx":
                started[cell.key] = start_asgi(cell.server, cell.variant, env)
        if any(c.server == "nginx" for c in cells):
            # The origin nginx caches: the bare app, under uvicorn; a HIT never reaches it.
            upstream = start_asgi("uvicorn", "static", env)
            started["nginx-origin"] = upstream
            wait_ready(upstream)
            for cell in cells:
                if cell.server == "nginx":
                    server = start_nginx(cell.variant, upstream.port, scratch / cell.variant)
                    nginxes.append(server)
                    started[cell.key] = server
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            if server in nginxes:
                stop_nginx(server)
            else:
                stop(server)
        deleted = delete_bench_keys(redis_url, prefix)
        print(f"stopped {len(started)} servers; deleted {deleted} Redis key(s) under {prefix}:*")


def check(cell: Cell, server: Server) -> str:
    if cell.server == "nginx":
        return verify_nginx(server)
    return verify(BY_NAME[cell.variant], server)


def measure(cells: list[Cell], args: argparse.Namespace) -> dict[str, Any]:
    """Start, verify, warm, load in interleaved rounds, verify again: the rows of the report."""
    prefix = f"bench:servers:{secrets.token_hex(4)}"
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    calls_during_load: dict[str, int] = {}
    logs: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="cache-middleware-servers-") as scratch,
        running(cells, args.redis_url, prefix, Path(scratch), args.redis_timeout) as servers,
    ):
        trees = {}
        for cell in cells:
            notes[cell.key] = check(cell, servers[cell.key])
            trees[cell.key] = process_tree(servers[cell.key].process.pid)
            print(f"  ok {cell.key:<28} {notes[cell.key]} ({len(trees[cell.key])} processes)")
        for cell in cells:
            load(cell, servers[cell.key], args, args.warmup)
        counted = [c for c in cells if c.server != "nginx" and BY_NAME[c.variant].check != "exact"]
        before = {c.key: calls(servers[c.key]) for c in counted}
        for round_no in range(1, args.rounds + 1):
            order = cells if round_no % 2 else cells[::-1]
            for cell in order:
                pids = trees[cell.key]
                used = cpu_seconds(pids)
                result = load(cell, servers[cell.key], args, args.duration)
                used = cpu_seconds(pids) - used
                if result.non_2xx or result.socket_errors:
                    print(f"WARNING {cell.key}: {result.non_2xx} non-2xx, {result.socket_errors}")
                us = used / result.requests * 1e6 if result.requests else float("nan")
                rows.append(
                    {
                        "round": round_no,
                        "key": cell.key,
                        "variant": cell.variant,
                        "server": cell.server,
                        "requests_per_sec": result.requests_per_sec,
                        "requests": result.requests,
                        "cpu_us_per_request": us,
                        "non_2xx": result.non_2xx,
                        "socket_errors": result.socket_errors,
                    }
                )
                print(
                    f"  round {round_no} {cell.key:<28} {result.requests_per_sec:>9.0f} req/s "
                    f"{us:7.1f} us CPU/request",
                    flush=True,
                )
        for cell in cells:
            check(cell, servers[cell.key])
            if cell.key in before:
                calls_during_load[cell.key] = calls(servers[cell.key]) - before[cell.key]
                problem = judge_calls(cell, calls_during_load[cell.key], rows)
                if problem:
                    problems[cell.key] = problem
                    print(f"WARNING {cell.key}: {problem}")
            lines = [x for x in log_lines(servers[cell.key]) if not x.endswith(EXPECTED_LOG)]
            if lines:
                logs[cell.key] = lines[:10]
                print(f"WARNING {cell.key} logged {len(lines)} line(s), e.g.: {lines[0][:150]}")
    return {
        "rows": rows,
        "notes": notes,
        "calls_during_load": calls_during_load,
        "logs": logs,
        "problems": problems,
    }


def load(cell: Cell, server: Server, args: argparse.Namespace, duration: float) -> Any:
    unique = cell.server != "nginx" and BY_NAME[cell.variant].unique_query
    return run_wrk(
        server.url,
        duration=duration,
        connections=args.connections,
        threads=args.threads,
        unique_query=unique,
    )


def judge_calls(cell: Cell, count: int, rows: list[dict[str, Any]]) -> str | None:
    """A HIT variant's view must not have run under load; a MISS variant's, for every request.
    What went wrong, if anything: the run keeps its other cells, the report marks this one."""
    kind = BY_NAME[cell.variant].check
    served = sum(r["requests"] for r in rows if r["key"] == cell.key)
    if kind in ("hit", "peer-hit") and count:
        return f"the view ran {count} times in {served} requests: not all HITs"
    if kind == "miss" and count < served:
        return f"the view ran {count} times for {served} requests: not every one a MISS"
    return None


# -- the report --------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    cells = {
        key: {
            "variant": rs[0]["variant"],
            "server": rs[0]["server"],
            "cpu_us": statistics.median(r["cpu_us_per_request"] for r in rs),
            "cpu_us_min": min(r["cpu_us_per_request"] for r in rs),
            "cpu_us_max": max(r["cpu_us_per_request"] for r in rs),
            "rps": statistics.median(r["requests_per_sec"] for r in rs),
        }
        for key, rs in by_key.items()
    }
    ratios: dict[str, dict[str, float]] = {}
    for reference in NGINX_FLAVOURS:
        if reference not in by_key:
            continue
        ref = {r["round"]: r["cpu_us_per_request"] for r in by_key[reference]}
        for key, rs in by_key.items():
            if rs[0]["server"] == "nginx":
                continue
            per_round = [r["cpu_us_per_request"] / ref[r["round"]] for r in rs if r["round"] in ref]
            ratios[f"{key}:{reference}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
    return {"cells": cells, "ratios": ratios}


def best_server(report: dict[str, Any], variant: str) -> str | None:
    cells = report["summary"]["cells"]
    own = [c for c in cells.values() if c["variant"] == variant and c["server"] != "nginx"]
    return min(own, key=lambda c: c["cpu_us"])["server"] if own else None


def ratio_text(report: dict[str, Any], key: str, reference: str = NGINX_REFERENCE) -> str:
    r = report["summary"]["ratios"].get(f"{key}:{reference}")
    return "-" if r is None else f"{r['median']:.2f}x"


def render_section(report: dict[str, Any]) -> str:
    s, env, summary = report["settings"], report["environment"], report["summary"]
    cells = summary["cells"]
    servers = [x for x in s["servers"] if x != "nginx"]
    lines = [
        f"Generated by `bench/servers.py` ({report['timestamp']}, commit "
        f"`{env.get('git_commit')}`; rerun it, do not edit by hand). The CPU each server spends "
        "per request: utime + stime of its whole process tree over the wrk run, divided by the "
        f"requests served; median of {s['rounds']} interleaved rounds of {s['duration']:g} s, "
        f"`wrk -t{s['threads']} -c{s['connections']}`, pinning {s['pin'] or 'none'}, "
        f"`redis_timeout: {s.get('redis_timeout', 0.1):g}`. "
        "Lower is better. See [servers.md](servers.md) for which server to run.",
        "",
        "![CPU per request of a HIT, per server](benchmarks-servers.svg)",
        "",
        "Options: "
        + "; ".join(f"{name} `{' '.join(SERVER_FLAGS[name])}`" for name in servers)
        + ". nginx: `worker_processes 1`, `proxy_cache` with `proxy_cache_valid 200 1h` in "
        "front of the bare app (`static` under uvicorn); `nginx` keeps an access log as a "
        "stock install does, `nginx-tuned` adds `"
        + " ".join(NGINX_FLAVOURS["nginx-tuned"].split())
        + "`.",
        "",
        "### CPU per request (us), per server",
        "",
        "| variant | what | " + " | ".join(servers) + " |",
        "|---|---|" + "---:|" * len(servers),
    ]
    for variant in s["variants"]:
        row = [f"`{variant}`", BY_NAME[variant].label]
        for server in servers:
            cell = cells.get(f"{variant}/{server}")
            row.append("-" if cell is None else f"{cell['cpu_us']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    for flavour in NGINX_FLAVOURS:
        if flavour in cells:
            row = [f"`{flavour}`", "nginx proxy_cache HIT (the anchor: one figure)"] + [
                f"{cells[flavour]['cpu_us']:.1f}" for _ in servers
            ]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### A HIT against nginx's (median of per-round ratios of CPU per request)", ""]
    lines += [
        "| variant | " + " | ".join(servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    for variant in HIT_VARIANTS:
        if variant not in s["variants"]:
            continue
        for reference in NGINX_FLAVOURS:
            row = [f"`{variant}` / `{reference}`"]
            row += [ratio_text(report, f"{variant}/{x}", reference) for x in servers]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Targets (issue #21)", ""]
    lines += target_lines(report)
    lines += ["", "### Requests per second (median)", ""]
    lines += ["| variant | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    for variant in s["variants"]:
        row = [f"`{variant}`"]
        for server in servers:
            cell = cells.get(f"{variant}/{server}")
            row.append("-" if cell is None else f"{cell['rps']:,.0f}")
        lines.append("| " + " | ".join(row) + " |")
    for flavour in NGINX_FLAVOURS:
        if flavour in cells:
            lines.append(
                f"| `{flavour}` | "
                + " | ".join(f"{cells[flavour]['rps']:,.0f}" for _ in servers)
                + " |"
            )
    if report.get("problems"):
        lines += ["", "Cells whose check failed (their figures are not what the row says):", ""]
        lines += [f"- `{key}`: {why}" for key, why in report["problems"].items()]
    if report.get("logs"):
        lines += ["", "What servers logged during the run (a store outage means BYPASSes):", ""]
        lines += [f"- `{key}`: {found[0][:160]}" for key, found in report["logs"].items()]
    lines += [
        "",
        "Every cell was checked as `compare.py` checks it (same bytes; `X-Cache: HIT` and the "
        "view not called under load for a HIT; a MISS for every request of `miss`); nginx's "
        "answers carried `X-Cache-Status: HIT`. Machine: "
        f"{env['cpu']}, {env['cpus']} cores, Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
        + ".",
    ]
    return "\n".join(lines)


TARGETS = [("near", 1.5, "near-cache HIT"), ("redis", 2.0, "Redis HIT")]


def target_lines(report: dict[str, Any]) -> list[str]:
    lines = ["| target | best server | measured | |", "|---|---|---:|---|"]
    for variant, bound, label in TARGETS:
        server = best_server(report, variant)
        if server is None or NGINX_REFERENCE not in report["summary"]["cells"]:
            continue
        r = report["summary"]["ratios"].get(f"{variant}/{server}:{NGINX_REFERENCE}")
        if r is None:
            continue
        met = "met" if r["median"] <= bound else "**not met**"
        lines.append(
            f"| {label} <= {bound:g}x nginx proxy_cache HIT (CPU per request) | {server} | "
            f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | {met} |"
        )
    return lines


SERVER_COLOURS = {
    "uvicorn": "#1a73e8",
    "granian": "#0f9d58",
    "granian-rust": "#34a853",
    "hypercorn": "#e8710a",
}


def render_svg(report: dict[str, Any]) -> str:
    """Bars of CPU per request for each HIT variant under each server; nginx's HIT as the
    reference line, with 1.5x and 2x of it dashed."""
    cells = report["summary"]["cells"]
    servers = [x for x in report["settings"]["servers"] if x != "nginx"]
    variants = [v for v in HIT_VARIANTS if v in report["settings"]["variants"]]
    # hypercorn is an order of magnitude slower: cap the axis, print the value on the bar.
    values = [
        c["cpu_us"]
        for c in cells.values()
        if c["server"] not in ("hypercorn", "nginx") and c["variant"] in HIT_VARIANTS
    ]
    top = max(values) * 1.15 if values else 1.0
    label_w, bar_w, row_h, pad = 210, 460, 18, 10
    rows = len(variants) * (len(servers) + 1)
    width, height = label_w + bar_w + 110, pad * 2 + 70 + row_h * rows + 60

    def x_of(us: float) -> float:
        return label_w + bar_w * min(us, top) / top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{pad}" y="{pad + 14}" font-size="15" font-weight="bold">'
        "Server CPU per request, microseconds (lower is better)</text>",
        f'<text x="{pad}" y="{pad + 32}" fill="#555">'
        + html.escape(
            f"{report['environment']['cpus']} cores, server pinned to one CPU, wrk "
            f"-t{report['settings']['threads']} -c{report['settings']['connections']}, "
            f"median of {report['settings']['rounds']} rounds, {report['timestamp']}"
        )
        + "</text>",
    ]
    y0 = pad + 52
    y = y0
    for variant in variants:
        out.append(
            f'<text x="{pad}" y="{y + 13}" font-weight="bold">'
            f"{html.escape(BY_NAME[variant].label)}</text>"
        )
        y += row_h
        for server in servers:
            cell = cells.get(f"{variant}/{server}")
            if cell is None:
                y += row_h
                continue
            end = x_of(cell["cpu_us"])
            clipped = " (axis cut)" if cell["cpu_us"] > top else ""
            out += [
                f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{server}</text>',
                f'<rect x="{label_w}" y="{y + 3}" width="{end - label_w:.1f}" '
                f'height="{row_h - 6}" fill="{SERVER_COLOURS.get(server, "#888")}"/>',
                f'<text x="{end + 6:.1f}" y="{y + 13}">{cell["cpu_us"]:.1f}{clipped}</text>',
            ]
            y += row_h
    reference = cells.get(NGINX_REFERENCE)
    if reference is not None:
        lines = ((1.0, ""), (1.5, "6,4"), (2.0, "2,4"))
        for row, (factor, dash) in enumerate(lines):
            x, colour = x_of(reference["cpu_us"] * factor), "#d93025"
            label = "nginx proxy_cache HIT" if factor == 1.0 else f"{factor:g}x nginx"
            out += [
                f'<line x1="{x:.1f}" y1="{y0 - 4}" x2="{x:.1f}" y2="{y + 4 + 14 * row}" '
                f'stroke="{colour}" '
                f'stroke-width="1.5"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>",
                f'<text x="{x + 3:.1f}" y="{y + 14 + 14 * row}" fill="{colour}" '
                'font-size="11">'
                f"{label} {reference['cpu_us'] * factor:.1f}</text>",
            ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated variants (default: all ASGI)")
    parser.add_argument("--servers", default=DEFAULT_SERVERS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--pin", default="auto", help="as compare.py's --pin")
    # The default 0.1 s times round trips out into BYPASSes when the shared machine is busy
    # (seen with a load average of 9); the timeout does not change what a HIT costs.
    parser.add_argument("--redis-timeout", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s, no docs")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--docs-from", type=Path, help="write the docs from a results file")
    parser.add_argument("--json", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 0.5
    return args


def chosen(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    variants = [v for v in args.only.split(",") if v] or VARIANTS
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    servers = [x for x in args.servers.split(",") if x]
    for server in servers:
        if server == "nginx":
            if shutil.which("nginx") is None:
                print("nginx not on the PATH: no anchor (apt-get install -y nginx)")
        elif server not in SERVER_FLAGS:
            raise SystemExit(f"unknown server {server!r}; known: {', '.join(SERVER_FLAGS)}")
        elif not installed(SERVER_MODULES[server]):
            raise SystemExit(f"{server} is not installed (pip install -e '.[bench]')")
    servers = [x for x in servers if x != "nginx" or shutil.which("nginx")]
    missing = {
        v for v in variants for mod in SERVERS[BY_NAME[v].server].requires if not installed(mod)
    }
    return [v for v in variants if v not in missing], servers


def nginx_version() -> str | None:
    if shutil.which("nginx") is None:
        return None
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return out.split("/", 1)[-1] or None


def write_docs(report: dict[str, Any]) -> None:
    write_section(SERVERS_TITLE, render_section(report))
    SVG_FILE.write_text(render_svg(report))
    print(f"wrote {SVG_FILE.relative_to(REPO_DIR)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        write_docs(json.loads(args.docs_from.read_text()))
        return 0
    if not require_wrk():
        return 2
    variants, servers = chosen(args)
    signal.signal(signal.SIGTERM, raise_interrupt)
    pinning = resolve_pin(args.pin)
    unpin = None
    if pinning:
        server_cpus, load_cpus = parse_pin(pinning)
        pin(server_cpus, load_cpus)
        unpin = pin_redis(args.redis_url, load_cpus)
    packages = ["cache-middleware", "starlette", "uvicorn", "granian", "hypercorn", "uvloop"]
    environment = machine_facts([*packages, "httptools", "redis"], args.redis_url)
    environment["nginx"] = nginx_version()
    cells = plan(variants, servers)
    print(f"{len(cells)} cells, {args.rounds} rounds x {args.duration:g} s, pinning {pinning}")
    try:
        outcome = measure(cells, args)
    except Failed as exc:  # a cell answering wrongly before or after the load
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if unpin is not None:
            unpin()
    report = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "variants": variants,
            "servers": servers,
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "pin": pinning,
            "redis_timeout": args.redis_timeout,
            "flags": SERVER_FLAGS,
            "nginx": NGINX_FLAVOURS,
        },
        "environment": environment,
        **outcome,
        "summary": summarize(outcome["rows"], servers),
    }
    dump_json(args.json, report)
    print_summary(report)
    full = not args.only and not args.quick
    if args.docs or (args.docs is None and full):
        write_docs(report)
    return 1 if report["problems"] else 0


def print_summary(report: dict[str, Any]) -> None:
    print("\nCPU us per request (median):")
    for key, cell in report["summary"]["cells"].items():
        extra = ""
        if cell["server"] != "nginx" and NGINX_REFERENCE in report["summary"]["cells"]:
            extra = (
                f"  {ratio_text(report, key)} nginx, {ratio_text(report, key, 'nginx-tuned')} tuned"
            )
        spread = f"({cell['cpu_us_min']:.1f}-{cell['cpu_us_max']:.1f})"
        print(f"  {key:<28} {cell['cpu_us']:7.1f} {spread}{extra}")
    for line in target_lines(report)[2:]:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
