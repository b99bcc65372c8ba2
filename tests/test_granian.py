"""The middleware under real granian processes, as under uvicorn (issue #21).

`granian --interface asgi module:app` on a free port, for each thing a server decides: its
lifespan (a bad cache.yaml must stop it), MISS then HIT on the real Redis, the near-cache's
listener in each of two worker processes and an invalidation reaching both, fail-open when
Redis is unreachable, and the sample apps. What granian does with a refused config, as found:
the worker logs the one-line message and "ASGI lifespan startup failed" (with the traceback),
and the server stops with exit code 1, with one worker or several; with
`--respawn-failed-workers` it respawns once, then says "Worker crash loop detected" and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from .conftest import _free_port

ROOT = Path(__file__).resolve().parent.parent
GRANIAN = Path(sys.executable).parent / "granian"
STARTUP_TIMEOUT = 20.0  # granian starts in about a second; a refused config stops it as fast
BAD = "routes:\n  /cached: {ttl: -5}\n"
MESSAGE = "cache.yaml: routes./cached.ttl: must be a positive integer, got -5"

# Under CI a missing granian fails these tests (it is in the test extra); elsewhere, a skip.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not GRANIAN.exists() and shutil.which("granian") is None,
    reason="granian is not installed (pip install -e '.[test]')",
)


def _command(target: str, port: int, *extra: str) -> list[str]:
    binary = str(GRANIAN) if GRANIAN.exists() else "granian"
    where = ["--host", "127.0.0.1", "--port", str(port)]
    return [binary, "--interface", "asgi", *where, *extra, target]


class Granian:
    """A granian process that is meant to start, up until the block ends."""

    def __init__(self, target: str, env: dict[str, str], *extra: str) -> None:
        self.port = _free_port()
        # granian logs to its standard output; a file, so a chatty server never blocks on a pipe
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            _command(target, self.port, *extra),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"granian exited with {self.proc.returncode}:\n{self.stop()}")
            try:
                httpx.get(self.base + "/health", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"granian never answered:\n{self.stop()}")

    def stop(self) -> str:
        """Stops granian (SIGTERM; a kill if it lingers); what it logged."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log.closed:
            return ""
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


@contextlib.contextmanager
def granian(target: str, env: dict[str, str], *extra: str) -> Iterator[Granian]:
    server = Granian(target, env, *extra)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _cached_app_env(redis_url: str, prefix: str) -> dict[str, str]:
    return {"GRANIAN_TEST_REDIS_URL": redis_url, "GRANIAN_TEST_PREFIX": prefix}


def until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


# -- lifespan: a refused config stops granian -----------------------------------------------


@pytest.mark.parametrize(
    ("target", "workers"),
    [("starlette_app", "1"), ("fastapi_app", "1"), ("pure_asgi_app", "1"), ("starlette_app", "2")],
)
def test_a_bad_config_stops_granian_with_the_message(
    tmp_path: Path, target: str, workers: str
) -> None:
    config = tmp_path / "cache.yaml"
    config.write_text(BAD)
    command = _command(f"tests.apps_startup.{target}:app", _free_port(), "--workers", workers)
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "STARTUP_CACHE_YAML": str(config)},
            stdout=subprocess.PIPE,  # granian logs to its standard output
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STARTUP_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"granian kept running on a bad config:\n{exc.output!r}")
    assert done.returncode != 0
    assert f"[ERROR] {MESSAGE}" in done.stdout
    assert "ASGI lifespan startup failed" in done.stdout


# -- the cache under granian ----------------------------------------------------------------


def test_miss_then_hit_on_the_real_redis(redis_url: str, prefix: str) -> None:
    with granian("tests.apps_granian.cached_app:app", _cached_app_env(redis_url, prefix)) as g:
        first = g.get("/api/item")
        assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")

        def hit() -> bool:
            # The entry is stored as the MISS completes: the next answer is a HIT of it.
            reply = g.get("/api/item")
            return reply.headers["x-cache"] == "HIT" and reply.content == first.content

        assert until(hit, 3)
        assert "x-cache" not in g.get("/health").headers  # no route: untouched
    keys = redis.Redis.from_url(redis_url).keys(f"{prefix}:GET:/api/item*")
    assert keys, "the entry is in Redis"


def test_fail_open_when_redis_is_unreachable(prefix: str) -> None:
    nobody = f"redis://127.0.0.1:{_free_port()}/0"
    with granian("tests.apps_granian.cached_app:app", _cached_app_env(nobody, prefix)) as g:
        for _ in range(2):
            reply = g.get("/api/item")
            assert (reply.status_code, reply.headers["x-cache"]) == (200, "BYPASS")
            assert reply.json()["call"] >= 1
        assert g.get("/health").status_code == 200


def _get(g: Granian, path: str, method: str = "GET") -> httpx.Response:
    # A fresh connection each time, so granian's workers take turns at the listening socket;
    # one public Host for every request, as behind a load balancer (it is part of the key).
    headers = {"Host": "api.example.test", "Connection": "close"}
    return httpx.request(method, g.base + path, headers=headers, timeout=10)


def test_two_workers_each_serve_from_their_near_cache_and_see_invalidations(
    redis_url: str, prefix: str
) -> None:
    """tests/near_app.py (as the uvicorn multi-worker test serves it) with `--workers 2`: each
    worker's near-cache goes live (its invalidation listener runs in that process) and serves
    HITs, and an invalidation made through one worker reaches the other's copy."""
    env = {
        "NEAR_TEST_REDIS_URL": redis_url,
        "NEAR_TEST_PREFIX": prefix,
        "PYTHONPATH": str(Path(__file__).parent),
    }
    version_key = f"{prefix}:test-version"
    other = redis.Redis.from_url(redis_url)
    try:
        other.set(version_key, 1)
        with granian("near_app:app", env, "--workers", "2") as g:
            near_pids: set[str] = set()

            def both_near() -> bool:
                reply = _get(g, "/api/item")
                assert reply.json() == {"version": 1}
                if reply.headers["x-cache"] == "HIT" and int(reply.headers["x-near-hits"]) > 0:
                    near_pids.add(reply.headers["x-pid"])
                return len(near_pids) == 2

            assert until(both_near, 15), f"only {near_pids} served from their near-cache"
            other.set(version_key, 2)
            assert _get(g, "/invalidate", "POST").json()["invalidated"] >= 1
            invalidated = time.monotonic()
            seen: dict[str, int] = {}
            # Every worker, asked repeatedly, serves version 2 (the bound on loopback is ms).
            time.sleep(0.2)
            while len(seen) < 2 or time.monotonic() - invalidated < 1.0:
                reply = _get(g, "/api/item")
                assert reply.json() == {"version": 2}, f"{reply.headers['x-pid']} served v1"
                seen[reply.headers["x-pid"]] = seen.get(reply.headers["x-pid"], 0) + 1
                assert time.monotonic() - invalidated < 15, f"only workers {seen} answered"
    finally:
        other.close()


@pytest.mark.parametrize("sample", ["starlette_app", "fastapi_app"])
def test_sample_apps_cache_under_granian(redis_url: str, sample: str) -> None:
    """The sample apps as shipped (cache.yaml, memory:// overridden by CACHE_REDIS_URL)."""
    with granian(f"sample_apps.{sample}:app", {"CACHE_REDIS_URL": redis_url}) as g:
        try:
            first = g.get("/api/events")
            assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
            assert until(lambda: g.get("/api/events").headers["x-cache"] == "HIT", 3)
            assert g.get("/api/events").json() == first.json()
            assert "x-cache" not in g.get("/health").headers
        finally:
            # The samples' key_prefix is fixed; this server's port in the key (its Host) is ours.
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"gateway:response:*127.0.0.1%3A{g.port}*"):
                client.unlink(key)
            client.close()
