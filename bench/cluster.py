"""cache-middleware on a Redis Cluster beside a single Redis, in one run (bench/cluster.py).

Starts a throwaway local Redis Cluster (3 primaries + 3 replicas, `redis-server` on free loopback
ports, files in a temporary directory), then measures with `compare.measure` in the same
interleaved rounds: the static ceilings (Starlette, Flask) and cache-middleware's Redis HIT and
near-cache HIT, ASGI and WSGI, once on the cluster (`redis+cluster://...`) and once on the single
Redis (`--redis-url`), so the cluster/single ratio is measured side by side. The peers
(fastapi-cache2, cashews, Flask-Caching) take only a plain Redis URL and are left out.

Writes bench/results/cluster.json and the `## Cluster` section of docs/benchmarks.md (which
`compare.py` keeps when it regenerates the rest). The cluster is stopped and its directory
removed however the run ends (Ctrl-C and SIGTERM included).

    python bench/cluster.py                          # 3 rounds x 10 s, writes the docs section
    python bench/cluster.py --quick                  # 1 round x 2 s, no docs
    python bench/cluster.py --no-single              # the cluster only
    python bench/cluster.py --docs-from bench/results/cluster.json   # re-render the section
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare
from harness import BENCH_DIR, dump_json, raise_interrupt, require_wrk

RESULTS_FILE = BENCH_DIR / "results" / "cluster.json"
# Ours only: the peers cannot be given a cluster URL.
VARIANTS = ["near", "redis", "wsgi-near", "wsgi-redis"]
CEILINGS = {"asgi": "static", "wsgi": "flask-static"}
PRIMARIES = 3
REPLICAS_PER_PRIMARY = 1


# -- the cluster ---------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    """3 primaries with one replica each, on free loopback ports (and their bus port + 10000)."""

    def __init__(self) -> None:
        self.server = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if not self.server or not self.cli:
            raise SystemExit("bench/cluster.py needs redis-server and redis-cli on the PATH")
        self.dir = Path(tempfile.mkdtemp(prefix="cache-mw-bench-cluster-"))
        self.ports: list[int] = []
        while len(self.ports) < PRIMARIES * (1 + REPLICAS_PER_PRIMARY):
            port = random.randrange(20000, 45000)
            if port not in self.ports and _bindable(port) and _bindable(port + 10000):
                self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:PRIMARIES])

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)

    def start(self) -> None:
        for port in self.ports:
            workdir = self.dir / str(port)
            workdir.mkdir()
            # Logs go to a file in the node's directory, removed with it.
            self.procs.append(
                subprocess.Popen(
                    [
                        self.server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(workdir),
                        "--logfile",
                        "redis.log",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--cluster-require-full-coverage",
                        "no",
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            client = self.client(port)
            _wait(client.ping, f"redis-server on {port}")
            client.close()
        subprocess.run(
            [
                str(self.cli),
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(REPLICAS_PER_PRIMARY),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        for port in self.ports:
            client = self.client(port)
            _wait(lambda c=client: c.cluster("info")["cluster_state"] == "ok", f"{port} ok")
            client.close()
        # The replicas attached and synced (redis-cli returns before every node says so).
        _wait(
            lambda: len(self.shape()["replicas"]) == PRIMARIES * REPLICAS_PER_PRIMARY,
            "the replicas to sync",
            timeout=60,
        )

    def shape(self) -> dict[str, Any]:
        """Each node's own word (INFO replication): gossip may not have told the others yet."""
        primaries, replicas, version = [], [], None
        for port in self.ports:
            client = self.client(port)
            try:
                info = client.info("replication")
                version = version or str(client.info("server").get("redis_version"))
            finally:
                client.close()
            if info.get("role") == "master":
                primaries.append(f"127.0.0.1:{port}")
            elif info.get("master_link_status") == "up":
                replicas.append(f"127.0.0.1:{port} of :{info.get('master_port')}")
        return {"redis_version": version, "primaries": primaries, "replicas": replicas}

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"redis-server {proc.pid} did not exit", file=sys.stderr)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each variant once each)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first")
    parser.add_argument(
        "--redis-url", default=compare.DEFAULT_REDIS_URL, help="the single Redis beside it"
    )
    parser.add_argument("--no-single", action="store_true", help="the cluster variants only")
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s, 1 s warm-up, no docs")
    parser.add_argument("--wsgi-worker", default="gthread", choices=["sync", "gthread"])
    parser.add_argument("--wsgi-threads", type=int, default=4)
    parser.add_argument("--json", type=Path, default=RESULTS_FILE)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--docs-from", type=Path, help="only re-render the ## Cluster section from a results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup, args.no_docs = 2, 1, 1, True
    if args.wsgi_worker == "sync":
        args.wsgi_threads = 1
    # What compare.build_report expects to find.
    args.only, args.docs = "", False
    return args


def names(single: bool) -> list[str]:
    """Each ceiling, then each variant on the cluster next to the same on the single Redis."""
    out: list[str] = []
    for kind, ceiling in CEILINGS.items():
        out.append(ceiling)
        for v in VARIANTS:
            if compare.SERVERS[compare.BY_NAME[v].server].kind == kind:
                out += [f"{v}@cluster", *([v] if single else [])]
    return out


def per_round_ratio(rounds: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    ra, rb = compare.rps(rounds, a), compare.rps(rounds, b)
    common = sorted(set(ra) & set(rb))
    if not common:
        return None
    paired = [ra[k] / rb[k] for k in common]
    return {
        "median": statistics.median(paired),
        "min": min(paired),
        "max": max(paired),
        "per_round": paired,
    }


def cluster_ratios(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rounds = report["rounds"]
    ratios: dict[str, dict[str, Any]] = {}
    for name, meta in report["measurements"].items():
        base = compare.base_name(name)
        if base in CEILINGS.values():
            continue
        for key, other in ((f"{name}/{meta['baseline']}", meta["baseline"]),) + (
            ((f"{name}/{base}", base),) if name != base and base in report["measurements"] else ()
        ):
            r = per_round_ratio(rounds, name, other)
            if r is not None:
                ratios[key] = r
    return ratios


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    cluster = LocalCluster()
    try:
        print(f"starting a Redis Cluster ({PRIMARIES} primaries + {PRIMARIES} replicas) ...")
        cluster.start()
        shape = cluster.shape()
        print(f"  {cluster.url} (redis {shape['redis_version']})")
        selected = names(single=not args.no_single)
        print(
            f"{len(selected)} variants, wrk -t{args.threads} -c{args.connections} "
            f"-d{args.duration:g}s x {args.rounds} rounds"
        )
        outcome = compare.measure(selected, args.redis_url, args, stores={"cluster": cluster.url})
    finally:
        cluster.stop()
        print("stopped the cluster")
    facts = compare.machine_facts(compare.PACKAGES, args.redis_url)
    report = compare.build_report(args, outcome, facts, command)
    report["cluster"] = {"url": cluster.url, **shape}
    report["cluster_ratios"] = cluster_ratios(report)
    return report


# -- output --------------------------------------------------------------------------------------


def fmt(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f}x"


def fmt_range(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def print_summary(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(f"\n{'variant':<22} {'median req/s':>12}  per round  (Redis cmd/req)")
    for name, median in summary["median_rps"].items():
        per_round = "  ".join(f"{v:>7.0f}" for v in summary["per_round_rps"][name])
        cmds = summary["redis_commands_per_request"].get(name)
        extra = "" if cmds is None else f"  ({cmds:.2f})"
        print(f"{name:<22} {median:>12.0f}  {per_round}{extra}")
    print(f"\n{'ratio (median of per-round ratios)':<40} {'median':>7} {'min':>7} {'max':>7}")
    for key, r in report["cluster_ratios"].items():
        print(f"{key:<40} {r['median']:>7.3f} {r['min']:>7.3f} {r['max']:>7.3f}")
    for r in report["rounds"]:
        if r["non_2xx"] or r["socket_errors"]:
            print(
                f"WARNING round {r['round']} {r['measurement']}: non-2xx={r['non_2xx']} "
                f"socket errors: {r['socket_errors'] or 'none'}"
            )


def render_section(report: dict[str, Any]) -> str:
    env, s, summary = report["environment"], report["settings"], report["summary"]
    c = report["cluster"]
    ratios = report["cluster_ratios"]
    medians = summary["median_rps"]
    cmds = summary["redis_commands_per_request"]
    lines = [
        "Generated by `bench/cluster.py` (rerun it to refresh this section; `bench/compare.py`",
        "keeps it as it is). cache-middleware on a Redis Cluster and, in the same interleaved",
        "rounds, on the single Redis above, next to the static ceilings measured in that run.",
        "",
        "```",
        report.get("command") or "python bench/cluster.py",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| run | {report['timestamp']}, commit `{env.get('git_commit')}` |",
        f"| cluster | {len(c['primaries'])} primaries + {len(c['replicas'])} replicas (one per "
        f"primary), Redis {c['redis_version']}, local `redis-server` processes on loopback "
        "started by the script, `redis+cluster://` with the 3 primaries as seeds |",
        f"| single Redis | {env.get('redis_server')} at `{s['redis_url']}` |",
        f"| load | {env['wrk']}, `-t{s['threads']} -c{s['connections']}`, "
        f"{s['duration']:g} s per run, {s['rounds']} rounds, {s['warmup']:g} s warm-up |",
        f"| machine | {env['cpu']}, {env['cpus']} cores shared by wrk, the servers and all "
        f"Redis processes; load average before {env['loadavg_1min_before']:.2f} |",
        "",
        "| variant | what | cluster req/s | single req/s | cluster vs ceiling | "
        "single vs ceiling | cluster / single | Redis cmd/req cluster, single |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cmd(name: str) -> str:
        v = cmds.get(name)
        return "-" if v is None else f"{v:.2f}"

    for ceiling in CEILINGS.values():
        if ceiling not in medians:
            continue
        meta = report["measurements"][ceiling]
        lines.append(
            f"| `{ceiling}` | {meta['label']}, no Redis (one server, both columns) | "
            f"{medians[ceiling]:,.0f} | {medians[ceiling]:,.0f} | 1.00x | 1.00x | - | - |"
        )
        for v in VARIANTS:
            cl = f"{v}@cluster"
            if cl not in medians or report["measurements"][cl]["baseline"] != ceiling:
                continue
            label = report["measurements"][cl]["label"]
            lines.append(
                f"| `{v}` | {label} | {medians[cl]:,.0f} | "
                f"{f'{medians[v]:,.0f}' if v in medians else '-'} | "
                f"{fmt(ratios.get(f'{cl}/{ceiling}'))} | {fmt(ratios.get(f'{v}/{ceiling}'))} | "
                f"{fmt(ratios.get(f'{cl}/{v}'))} | {cmd(cl)}, {cmd(v)} |"
            )
    lines += [
        "",
        "Each ratio is the median of per-round ratios (range over rounds in the table below).",
        "`Redis cmd/req` on the cluster sums `INFO stats` over the 3 primaries (the replicas",
        "only apply the primaries' writes); a HIT reads one key, so it goes to the one primary",
        "that owns its slot.",
        "",
        "| ratio | median (min-max) |",
        "|---|---:|",
    ]
    lines += [f"| `{k}` | {fmt_range(r)} |" for k, r in ratios.items()]
    lines += [
        "",
        "Checked as in the main run: every variant answered `X-Cache: HIT` with the same bytes",
        "before and after the load, and its view was not called during the load:",
        "",
        "| variant | verified | view calls during load | hits | misses | bypasses | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    stats = report.get("middleware_stats") or {}
    for name, meta in report["measurements"].items():
        calls = meta["view_calls_during_load"]
        st = stats.get(meta["server"], {})
        counters = (
            " - | - | - | - |"
            if meta["server"] not in stats
            else f" {st.get('hits', 0)} | {st.get('misses', 0)} | {st.get('bypasses', 0)} | "
            f"{st.get('errors', 0)} |"
        )
        lines.append(
            f"| `{name}` | {meta['verified']} | {'-' if calls is None else calls} |{counters}"
        )
    logs = report.get("server_logs") or {}
    if logs:
        lines += ["", "Servers that logged something during the run (first line shown):", ""]
        lines += [f"- `{k}`: `{v[0][:160]}`" for k, v in logs.items()]
    lines += [
        "",
        "On a cluster the stores do without the lean GET that a single Redis HIT uses (the",
        "ASGI store's pipelined connection, the WSGI store's plain sockets: both speak to one",
        "server, so the cluster stores turn `fast_get` off), and each Redis HIT goes through",
        "redis-py's `RedisCluster` client, asyncio or blocking; a near-cache HIT does not reach",
        "Redis on either.",
        "",
        "The peers (fastapi-cache2, cashews, Flask-Caching) take a plain Redis URL only and are",
        "left out. On this 2-core machine six more `redis-server` processes share the CPUs;",
        "the HIT load itself falls on one primary (one key).",
    ]
    near = ratios.get("near@cluster/near")
    if near is not None and near["median"] < 0.95:
        lines += [
            "",
            f"The near-cache HIT still measured {near['median']:.2f}x its single-Redis twin on",
            "the cluster although it sends Redis no command; this was not investigated (one",
            "candidate: the cluster's six `redis-server` processes and the near-cache listener's",
            "connection to every primary share the two cores with the server under load).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        compare.write_section(
            compare.CLUSTER_TITLE, render_section(json.loads(args.docs_from.read_text()))
        )
        return 0
    if not require_wrk():
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    raw = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "bench/cluster.py", *raw])
    try:
        report = run(args, command)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except compare.Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print_summary(report)
    dump_json(args.json, report)
    print(f"\nwrote {args.json}")
    if not args.no_docs:
        compare.write_section(compare.CLUSTER_TITLE, render_section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
