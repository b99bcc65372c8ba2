"""Shared helpers for the benchmark scripts: servers, wrk, Redis clean-up, machine facts.

`hit_throughput.py` and `compare.py` both start servers (uvicorn or gunicorn, 1 worker) on free
loopback ports, drive them with `wrk`, and stop them and delete their Redis keys however the
run ends. Nothing here imports the project or a peer: the apps live in `apps.py` and
`compare_apps.py` and are loaded by the server processes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import redis.cluster

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
STARTUP_TIMEOUT = 20.0

REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
TOTAL_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors:\s+(.*)")
LATENCY = re.compile(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)

# A wrk script whose every request has a query string no other request of any run has used:
# `RUN` is replaced by a fresh token per wrk invocation, each wrk thread numbers its requests.
UNIQUE_QUERY_LUA = """\
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, "PATH?n=RUN-" .. tid .. "-" .. n)
end
"""


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    path: str = "/"
    log: Path | None = None  # the server's stdout and stderr, when not inherited

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.path


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uvicorn_flags() -> list[str]:
    """uvloop/httptools when available: the fastest stock uvicorn, so ratios are not diluted."""
    flags = ["--workers", "1", "--no-access-log", "--log-level", "warning"]
    if installed("uvloop"):
        flags += ["--loop", "uvloop"]
    if installed("httptools"):
        flags += ["--http", "httptools"]
    return flags


def free_port() -> int:
    # The port is released before the server binds it; a race is possible but harmless here.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# CPU pinning (`compare.py --pin`): the servers on some CPUs, wrk (and Redis) on the others, so
# that a server's throughput is its own CPU cost per request, not a share of what the load
# generator and Redis leave it. None: no pinning (the scheduler decides, as in production).
PINNING: dict[str, set[int] | None] = {"server": None, "load": None}


def pin(server: set[int], load: set[int]) -> None:
    PINNING["server"], PINNING["load"] = set(server), set(load)


def resolve_pin(text: str) -> str:
    """`--pin`'s value made explicit: "auto" is the last usable CPU for the servers and the
    others for the load (none with a single CPU); "none" and "" are no pinning."""
    if text in ("", "none"):
        return ""
    if text != "auto":
        parse_pin(text)  # fails early on a typo
        return text
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return ""
    return f"{cpus[-1]}:{','.join(str(c) for c in cpus[:-1])}"


def parse_pin(text: str) -> tuple[set[int], set[int]]:
    """`"1:0"` -> ({1}, {0}): the servers' CPUs, then wrk's and Redis's (lists: `"2,3:0,1"`)."""
    try:
        server, load = text.split(":")
        cpus = ({int(c) for c in server.split(",")}, {int(c) for c in load.split(",")})
    except ValueError:
        raise SystemExit(f"--pin takes SERVER_CPUS:LOAD_CPUS, e.g. 1:0; got {text!r}") from None
    if cpus[0] & cpus[1] or not cpus[0] or not cpus[1]:
        raise SystemExit(f"--pin: the two CPU sets must be non-empty and apart; got {text!r}")
    return cpus


def pin_redis(redis_url: str, cpus: set[int]) -> Any:
    """Move every thread of the (local) Redis server onto `cpus`; returns the function that puts
    them back. Redis is the load's side: it must not take the server's CPU."""
    try:
        pid = int(redis_client(redis_url).info("server")["process_id"])
        # A remote server's pid may name some other process here: pin only a local redis-server.
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if not comm.startswith("redis"):
            raise ValueError(f"process {pid} here is {comm!r}, not that Redis server")
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        before = {tid: os.sched_getaffinity(tid) for tid in tids}
        for tid in tids:
            os.sched_setaffinity(tid, cpus)
    except (OSError, KeyError, ValueError, redis.RedisError) as exc:
        print(f"warning: Redis left unpinned ({exc})", file=sys.stderr)
        return lambda: None

    def restore() -> None:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):  # that thread ended
                os.sched_setaffinity(tid, mask)

    return restore


def _pinned(role: str) -> Any:
    """A Popen `preexec_fn` setting the child's CPUs before it runs (its children inherit them:
    gunicorn's worker is forked from the pinned master)."""
    cpus = PINNING[role]
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _spawn(
    command: list[str], env: dict[str, str], log: Path | None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches only the script, which then stops the servers in order.
    if log is None:
        return subprocess.Popen(
            command, env=env, cwd=cwd, start_new_session=True, preexec_fn=_pinned("server")
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pinned("server"),
        )


def log_lines(server: Server) -> list[str]:
    """What the server wrote to its log (warnings such as a store outage), if it has one."""
    if server.log is None or not server.log.exists():
        return []
    return [line for line in server.log.read_text(errors="replace").splitlines() if line.strip()]


def start_uvicorn(
    name: str,
    factory: str,
    env: dict[str, str],
    path: str = "/",
    log: Path | None = None,
    *,
    app_dir: Path = BENCH_DIR,
    cwd: Path | None = None,
) -> Server:
    """`factory` is `module:function` in `app_dir` (bench/), called by uvicorn (`--factory`).
    `cwd`: where the server starts (`python -m` puts it first on sys.path, ahead of
    PYTHONPATH: a checkout there is the one imported)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *uvicorn_flags(),
    ]
    return Server(name, port, _spawn(command, env, log, cwd), path, log)


def start_gunicorn(
    name: str,
    factory: str,
    env: dict[str, str],
    path: str = "/",
    worker: str = "sync",
    threads: int = 1,
    log: Path | None = None,
) -> Server:
    """`factory` is `module:function` in bench/; gunicorn calls it (`module:function()`)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(BENCH_DIR),
        "--workers",
        "1",
        "--worker-class",
        worker,
        "--threads",
        str(threads),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        *gunicorn_control_flags(),
        f"{factory}()",
    ]
    return Server(name, port, _spawn(command, env, log), path, log)


def gunicorn_control_flags() -> list[str]:
    """Gunicorn 24+ opens a control socket at one fixed path (~/.gunicorn/gunicorn.ctl): several
    servers at once collide there and log an error. The benchmark needs none."""
    try:
        import gunicorn.config
    except ImportError:
        return []
    names = {s.name for s in gunicorn.config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def wait_ready(server: Server, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} server exited with code {server.process.returncode}")
        try:
            fetch(server.base + "/")
            return
        except urllib.error.HTTPError:
            return  # it answers (a 404 on / is fine)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{server.name} server did not answer within {timeout:.0f}s")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def fetch(url: str) -> Reply:
    """GET url (no redirects followed, errors returned as replies, headers lower-cased)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return Reply(response.status, headers, response.read())
    except urllib.error.HTTPError as exc:
        headers = {k.lower(): v for k, v in exc.headers.items()}
        return Reply(exc.code, headers, exc.read())


def stop(server: Server) -> None:
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGINT)  # graceful shutdown, uvicorn and gunicorn alike
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


# -- load --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    latency_avg: str
    latency_max: str
    non_2xx: int
    socket_errors: str
    extra: dict[str, object] = field(default_factory=dict)


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    unique_query: bool = False,
) -> WrkResult:
    """One wrk run against url; with unique_query every request gets a never-seen query string."""
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        "--latency",
    ]
    script: Path | None = None
    if unique_query:
        path = url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
        token = os.urandom(4).hex()
        text = UNIQUE_QUERY_LUA.replace("PATH", "/" + path).replace("RUN", token)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
            handle.write(text)
            script = Path(handle.name)
        command += ["--script", str(script)]
    command.append(url)
    try:
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, preexec_fn=_pinned("load")
        ).stdout
    finally:
        if script is not None:
            script.unlink(missing_ok=True)
    return parse_wrk(output)


def parse_wrk(output: str) -> WrkResult:
    rate = REQUESTS_PER_SEC.search(output)
    if rate is None:
        raise SystemExit(f"could not find Requests/sec in wrk output:\n{output}")
    total = TOTAL_REQUESTS.search(output)
    latency = LATENCY.search(output)
    non_2xx = NON_2XX.search(output)
    errors = SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_sec=float(rate.group(1)),
        requests=int(total.group(1)) if total else 0,
        latency_avg=latency.group(1) if latency else "?",
        latency_max=latency.group(3) if latency else "?",
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


def require_wrk() -> bool:
    if shutil.which("wrk") is None:
        print(
            "wrk not found: install it (e.g. `apt-get install -y wrk`) and run again.",
            file=sys.stderr,
        )
        return False
    return True


# -- clean-up ----------------------------------------------------------------------------------


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(redis_url: str) -> bool:
    return redis_url.startswith(CLUSTER_SCHEMES)


def _cluster_seeds(redis_url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis+cluster://[user:password@]host:port[,host:port...]` -> (seeds, client kwargs),
    read as the package reads it."""
    from cache_middleware.storage.redis_cluster import cluster_parts

    return cluster_parts(redis_url)


def redis_client(redis_url: str, **kwargs: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A client for a plain `redis://` URL or a `redis+cluster://h:p,h:p` one."""
    if not is_cluster(redis_url):
        return redis.Redis.from_url(redis_url, **kwargs)
    seeds, extra = _cluster_seeds(redis_url)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds], **extra, **kwargs
    )


def node_clients(redis_url: str, **kwargs: Any) -> list[redis.Redis]:
    """One plain client per server that holds data: the Redis itself, or every cluster primary
    (INFO, SCAN and multi-key commands are per node on a cluster)."""
    if not is_cluster(redis_url):
        return [redis.Redis.from_url(redis_url, **kwargs)]
    _, extra = _cluster_seeds(redis_url)
    cluster = redis_client(redis_url, **kwargs)
    try:
        primaries = [(n.host, n.port) for n in cluster.get_primaries()]
    finally:
        cluster.close()
    return [redis.Redis(host=h, port=p, **extra, **kwargs) for h, p in sorted(primaries)]


def delete_bench_keys(redis_url: str, prefix: str) -> int:
    deleted = 0
    for client in node_clients(redis_url):
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += _unlink(client, batch)
                    batch = []
            if batch:
                deleted += _unlink(client, batch)
        finally:
            client.close()
    return deleted


def _unlink(client: redis.Redis, keys: list[bytes]) -> int:
    # One UNLINK per key: on a cluster node, keys of different slots cannot share a command.
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


# -- the machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out or None


@contextlib.contextmanager
def worktree(rev: str, where: Path) -> Iterator[Path]:
    """REV checked out at `where` (a detached git worktree of this repository) for the block,
    removed after it however the block ends."""
    added = subprocess.run(
        ["git", "-C", str(REPO_DIR), "worktree", "add", "--detach", str(where), rev],
        capture_output=True,
        text=True,
    )
    if added.returncode != 0:
        raise SystemExit(f"cannot check {rev!r} out: {added.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(REPO_DIR), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )


def imported_from(tree: Path, cwd: Path) -> Path:
    """Where a Python started with PYTHONPATH=tree in `cwd` imports cache_middleware from. A
    process started inside a checkout imports that checkout's, whatever PYTHONPATH says
    (`python -m` and a script both put their own folder first): A/B tools check it."""
    out = subprocess.run(
        [sys.executable, "-c", "import cache_middleware; print(cache_middleware.__file__)"],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out).resolve().parent.parent


def check_imports(trees: dict[str, Path], cwd: Path) -> None:
    """Exit unless each side's Python, started in `cwd`, imports cache_middleware from its tree."""
    for side, tree in trees.items():
        got = imported_from(tree, cwd)
        if got != tree.resolve():
            raise SystemExit(f"{side}: cache_middleware comes from {got}, not {tree}")


def redis_version(redis_url: str) -> str | None:
    try:
        clients = node_clients(redis_url, socket_timeout=2)
        try:
            return str(clients[0].info("server").get("redis_version"))
        finally:
            for client in clients:
                client.close()
    except redis.RedisError:
        return None


def wrk_version() -> str | None:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    first = (out.strip().splitlines() or [""])[0]
    return first.split(" [", 1)[0] or None


def machine_facts(packages: list[str], redis_url: str | None = None) -> dict[str, object]:
    facts: dict[str, object] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "wrk": wrk_version(),
        "git_commit": git_commit(),
        # Other work on the machine just before the run: a high value means noisy numbers.
        "loadavg_1min_before": os.getloadavg()[0],
        "packages": {name: package_version(name) for name in packages},
    }
    if redis_url is not None:
        facts["redis_server"] = redis_version(redis_url)
    return facts


def dump_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- process trees -----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (granian's and hypercorn's workers, nginx's), read from
    /proc: Linux only."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, summed, in seconds (a process that ended counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
