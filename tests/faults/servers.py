"""Real server processes for the fault tests, and a small load driver that counts X-Cache."""

from __future__ import annotations

import collections
import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from ..conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]

# name -> the command line after `python -m` (the port is appended by `serve`).
SERVERS = {
    "gunicorn-gthread": ["gunicorn", "-w", "2", "-k", "gthread", "--threads", "16",
                         "tests.faults.apps:flask_app", "-b"],
    "gunicorn-sync": ["gunicorn", "-w", "2", "tests.faults.apps:flask_app", "-b"],
    "uvicorn": ["uvicorn", "--workers", "2", "--log-level", "warning",
                "tests.faults.apps:starlette_app", "--host", "127.0.0.1", "--port"],
}  # fmt: skip


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def lines(self, text: str) -> list[str]:
        """The server's stderr lines containing `text`."""
        return [line for line in self.log.read_text().splitlines() if text in line]


@contextmanager
def serve(kind: str, tmp_path: Path, yaml_text: str) -> Iterator[Server]:
    config = tmp_path / "cache.yaml"
    config.write_text(yaml_text)
    port = _free_port()
    bind = f"127.0.0.1:{port}" if kind.startswith("gunicorn") else str(port)
    log = tmp_path / f"{kind}.log"
    env = {**os.environ, "FAULT_CACHE_YAML": str(config), "PYTHONPATH": str(ROOT)}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", *SERVERS[kind], bind],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log.read_text()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"server did not start: {server.log.read_text()}")


class Load:
    """Sends GET /item/<n> for n in range(paths), `threads` at a time; counts X-Cache values
    and Cache-Status details. Keep-alive connections, one per thread."""

    def __init__(self, port: int, threads: int = 16, paths: int = 20, first: int = 0) -> None:
        self.port = port
        self.first = first
        self.threads = threads
        self.paths = paths
        self.counts: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.details: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _one(self, n: int) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", f"/item/{self.first + n % self.paths}")
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self._local.conn = None
            conn.close()
            with self._lock:
                self.statuses[0] += 1
            return
        status = response.getheader("Cache-Status") or ""
        with self._lock:
            self.counts[response.getheader("X-Cache") or "-"] += 1
            self.statuses[response.status] += 1
            if "detail=" in status:
                self.details[status.split("detail=", 1)[1].split(";")[0]] += 1

    def run(self, requests: int) -> collections.Counter[str]:
        """Send `requests` requests; the X-Cache counts of this batch."""
        before = collections.Counter(self.counts)
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(self._one, range(requests)))
        return self.counts - before
