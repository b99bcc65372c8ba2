"""Throwaway Redis topologies for the scale-out tests: a Sentinel group and a Cluster.

- `SentinelGroup`: one master, one replica, one sentinel (quorum 1, down after 1 s), so a killed
  master is replaced by its replica within a few seconds.
- `ClusterGroup`: three primaries with one replica each (`--cluster-enabled yes`, node timeout
  1 s), created with `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`.

Every process listens on a free loopback port and keeps its files in a temporary directory that
`stop()` removes. Without `redis-server` (or `redis-cli` for the cluster) the tests that need
them skip, and fail when `CI` is set (as tests/redis_process.py does).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
import redis.cluster

from .conftest import _free_port

__all__ = ["ClusterGroup", "SentinelGroup", "need_binary"]


def need_binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} binary not installed"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    return binary


def _wait(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 45000)
        if port not in found and _bindable(port) and _bindable(port + 10000):
            found.append(port)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Group:
    def __init__(self, prefix: str) -> None:
        self.binary = need_binary("redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    def _spawn(self, port: int, *extra: str, config: Path | None = None) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        args = [
            *([str(config)] if config is not None else []),
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
            "--repl-diskless-sync-delay",  # a replica syncs at once, not after 5 s
            "0",
            *extra,
        ]
        self.args[port] = args
        self.procs[port] = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again with its own arguments (a cluster node keeps its identity)."""
        self.procs[port] = subprocess.Popen(
            [self.binary, *self.args[port]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup(_Group):
    service = "cmtest"

    def __init__(self) -> None:
        super().__init__("cache-mw-sentinel-")
        self.master_port = _free_port()
        self.replica_port = _free_port()
        self.sentinel_port = _free_port()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self) -> None:
        self._spawn(self.master_port)
        self._spawn(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        conf = self.dir / "sentinel.conf"  # sentinel rewrites its config: a file of its own
        conf.write_text(
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 3000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
            # Told about the replica up front: no wait for the sentinel's 10 s INFO refresh.
            f"sentinel known-replica {self.service} 127.0.0.1 {self.replica_port}\n"
        )
        self._spawn(self.sentinel_port, "--sentinel", config=conf)
        master, replica = self.client(self.master_port), self.client(self.replica_port)
        _wait(lambda: replica.info("replication").get("master_link_status") == "up", "replica")
        sentinel = self.client(self.sentinel_port)
        _wait(lambda: int(self._master_facts(sentinel)["num-slaves"]) >= 1, "sentinel")
        # What clients check before they use the master (redis-py's check_master_state): a busy
        # machine can answer the above before the sentinel has seen the master up.
        _wait(lambda: self._master_facts(sentinel)["flags"] == "master", "sentinel's master up")
        for c in (master, replica, sentinel):
            c.close()

    def _master_facts(self, sentinel: redis.Redis) -> dict[str, str]:
        flat = sentinel.execute_command("SENTINEL", "MASTER", self.service)
        pairs = (
            list(flat.items())
            if isinstance(flat, dict)
            else list(zip(flat[0::2], flat[1::2], strict=True))
        )
        return {_text(k): _text(v) for k, v in pairs}

    def current_master(self) -> int:
        sentinel = self.client(self.sentinel_port)
        try:
            _, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)
        finally:
            sentinel.close()


class ClusterGroup(_Group):
    def __init__(self) -> None:
        super().__init__("cache-mw-cluster-")
        self.cli = need_binary("redis-cli")
        self.ports = _cluster_ports(6)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> None:
        for port in self.ports:
            self._spawn(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "1000",
                # a replica may take over however long it was cut off (tests kill primaries)
                "--cluster-replica-validity-factor",
                "0",
                # as docs/deployment.md recommends for a cache: the primaries still up keep
                # serving their slots while a dead one's replica is being promoted
                "--cluster-require-full-coverage",
                "no",
            )
        for port in self.ports:
            client = self.client(port)
            _wait(client.ping, f"redis-server on {port}")
            client.close()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for port in self.ports:
            self.wait_ok(port)
        # Replicas attached and synced, so a primary killed by a test has a successor.
        for port in self.ports:
            client = self.client(port)
            _wait(
                lambda c=client: (
                    c.info("replication").get("role") == "master"
                    or c.info("replication").get("master_link_status") == "up"
                ),
                f"replica {port} to sync",
            )
            client.close()

    def cluster_client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", p) for p in self.ports[:3]],
            socket_timeout=2.0,
        )

    def wait_ok(self, port: int, timeout: float = 15.0) -> None:
        client = self.client(port)
        try:
            _wait(
                lambda: client.cluster("info")["cluster_state"] == "ok",
                f"cluster state ok on {port}",
                timeout,
            )
        finally:
            client.close()

    def primaries(self) -> list[int]:
        """Ports of the primaries, as the live nodes see them."""
        for port in self.procs:
            client = self.client(port)
            try:
                nodes = client.cluster("nodes")
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
            return sorted(
                int(addr.split(":")[1].split("@")[0])
                for addr, facts in nodes.items()
                if "master" in facts["flags"] and "fail" not in facts["flags"]
            )
        raise RuntimeError("no cluster node answers")
