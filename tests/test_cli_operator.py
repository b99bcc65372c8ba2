"""The command line covers an operator's day (issue #16, point 6) and `check --connect`
(point 3): stats, invalidate, clear and the worker's logs, run through the real CLI (`main()`
and real `cache-middleware` processes) against the real Redis and RabbitMQ. An app process
(Flask, in this test process) fills the cache; the command, like an operator's shell, only
shares Redis with it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask

from cache_middleware import WSGICacheMiddleware
from cache_middleware.cli import main

from .conftest import _free_port

AMQP_URL = os.environ.get("CACHE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ORG = "0b7f3f0e-8d0e-4b8c-a3c4-2f1d7e9c6b11"
EXE = Path(sys.executable).parent / "cache-middleware"
ROUTES = {
    "/api/events": {"ttl": 600, "tags": ["events"]},
    "/api/venues": {"ttl": 600},
}


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)


def write_config(tmp_path: Path, url: str, prefix: str, **extra: Any) -> str:
    path = tmp_path / "cache.yaml"
    path.write_text(
        yaml.safe_dump({"redis_url": url, "key_prefix": prefix, "routes": ROUTES, **extra})
    )
    return str(path)


def events_section(broker: str, tenant: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "organization_id": ORG,
        "broker_url": broker,
        "connect_timeout": 1,
        "reconnect_max": 0.2,
        "publish_retry": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
    }


class App:
    """A Flask app on the same config: the running cache the commands act on."""

    def __init__(self, config: str) -> None:
        self.calls = 0
        flask_app = Flask(__name__)

        @flask_app.get("/api/<path:rest>")
        def view(rest: str) -> str:
            self.calls += 1
            return f"{rest} call {self.calls}"

        self.middleware = WSGICacheMiddleware(flask_app.wsgi_app, config=config)
        flask_app.wsgi_app = self.middleware  # type: ignore[method-assign]
        self.client = flask_app.test_client()

    def get(self, path: str) -> str:
        response = self.client.get(path)
        # As a server does: read the body whole, then close the iterable (where the middleware
        # stores the entry; a body left unread is a response the client never got).
        response.get_data()
        response.close()
        assert response.status_code == 200
        return str(response.headers["X-Cache"])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err.strip()


# -- check --connect ------------------------------------------------------------------------------


def test_check_connect_reports_server_db_and_keys(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    assert [app.get("/api/events"), app.get("/api/venues")] == ["MISS", "MISS"]
    keys = list(redis.Redis.from_url(redis_url).scan_iter(match=f"{prefix}:*"))
    code, out, err = run(capsys, "check", config, "--connect")
    assert (code, err) == (0, "")
    db = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0)
    version = redis.Redis.from_url(redis_url).info()["redis_version"]
    assert f"redis: reachable: Redis {version}, db {db}, {len(keys)} keys under '{prefix}:'" in out
    assert "broker" not in out  # no events: section, nothing to reach


def test_check_connect_reaches_the_broker(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    rabbitmq: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = events_section(rabbitmq, str(uuid.uuid4()))
    config = write_config(tmp_path, redis_url, prefix, events=events)
    code, out, err = run(capsys, "check", config, "--connect")
    assert (code, err) == (0, "")
    assert "broker: reachable: RabbitMQ" in out
    assert "guest:guest" not in out  # the password masked


def test_check_connect_unreachable_redis_is_one_line_and_exit_3(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"redis://127.0.0.1:{port}/0", prefix)
    code, out, err = run(capsys, "check", config, "--connect")
    assert code == 3
    assert "cache.yaml: OK" in out  # the file itself is fine
    assert one_line(err).startswith(f"error: cannot reach the cache store redis://127.0.0.1:{port}")


def test_check_connect_unreachable_broker_is_one_line_and_exit_3(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = f"amqp://guest:guest@127.0.0.1:{_free_port()}//"
    config = write_config(tmp_path, redis_url, prefix, events=events_section(broker, ORG))
    code, out, err = run(capsys, "check", config, "--connect")
    assert code == 3
    assert "redis: reachable" in out
    assert one_line(err).startswith("error: cannot reach the broker amqp://guest:**@127.0.0.1")


def test_check_validates_the_events_section(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = {**events_section(AMQP_URL, ORG), "tenant_id": "not-a-uuid"}
    config = write_config(tmp_path, redis_url, prefix, events=events)
    code, _, err = run(capsys, "check", config)
    assert code == 1
    assert "tenant_id" in one_line(err)


def test_check_connect_on_the_memory_store_says_there_is_nothing_to_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "memory://", "cli")
    code, out, _ = run(capsys, "check", config, "--connect")
    assert code == 0
    assert "redis: none: the memory store lives in each app process" in out


# -- stats ----------------------------------------------------------------------------------------


def test_stats_prints_what_the_app_processes_counted(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    assert [app.get("/api/events"), app.get("/api/events")] == ["MISS", "HIT"]
    app.middleware.flush_stats()  # what the app does every few seconds
    code, out, err = run(capsys, "stats", config)
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert (body["hits"], body["misses"], body["stores"], body["entries"]) == (1, 1, 1, 1)
    assert body["routes"]["/api/events"]["hits"] == 1
    assert body["backend"]["type"] == "redis"


def test_stats_in_a_real_process(tmp_path: Path, redis_url: str, prefix: str) -> None:
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    app.get("/api/venues")
    app.middleware.flush_stats()
    proc = subprocess.run([str(EXE), "stats", config], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    body = json.loads(proc.stdout)
    assert (body["misses"], body["entries"]) == (1, 1)


def test_stats_refuses_the_memory_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "memory://", "cli")
    code, out, err = run(capsys, "stats", config)
    assert (code, out) == (1, "")
    assert "in-process memory store" in one_line(err)


# -- invalidate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "dropped"),
    [
        (["--path", "/api/events"], {"/api/events"}),  # the path itself, not those below
        (["--tag", "events"], {"/api/events", "/api/events/1"}),
        (["--pattern", "{prefix}:GET:*venues*"], {"/api/venues"}),
        (["--path", "/api/venues", "--path", "/api/events/1"], {"/api/venues", "/api/events/1"}),
    ],
    ids=["path", "tag", "pattern", "two-paths"],
)
def test_invalidate_drops_what_it_names_and_reports_the_count(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    selector: list[str],
    dropped: set[str],
) -> None:
    caplog.set_level(logging.INFO, logger="cache_middleware.events")
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    paths = ["/api/events", "/api/events/1", "/api/venues"]
    assert [app.get(p) for p in paths] == ["MISS"] * 3
    argv = ["invalidate", config, *(s.replace("{prefix}", prefix) for s in selector)]

    code, out, err = run(capsys, *argv, "--dry-run")
    assert (code, err) == (0, "")
    assert json.loads(out)["invalidated"] == len(dropped)
    assert [app.get(p) for p in paths] == ["HIT"] * 3  # a dry run drops nothing
    assert not [r for r in caplog.records if "cache.invalidated" in r.getMessage()]

    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert (body["invalidated"], body["dry_run"]) == (len(dropped), False)
    assert [app.get(p) for p in paths] == ["MISS" if p in dropped else "HIT" for p in paths]
    # No events: section: the event is logged, as the admin API logs it.
    logged = [r.getMessage() for r in caplog.records if "cache.invalidated" in r.getMessage()]
    assert len(logged) == 1
    assert '"reason": "manual"' in logged[0]
    assert f'"count": {len(dropped)}' in logged[0]


def test_invalidate_key_and_selector_errors(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    app.get("/api/venues")
    key = next(iter(redis.Redis.from_url(redis_url).scan_iter(match=f"{prefix}:GET:*"))).decode()
    code, out, _ = run(capsys, "invalidate", config, "--key", key)
    assert (code, json.loads(out)["invalidated"]) == (0, 1)
    assert app.get("/api/venues") == "MISS"

    code, out, err = run(capsys, "invalidate", config)
    assert (code, out) == (2, "")
    assert one_line(err) == "error: nothing to invalidate: give --pattern, --path, --tag or --key"
    code, out, err = run(capsys, "invalidate", config, "--path", "api/x")
    assert (code, out) == (2, "")
    assert one_line(err) == "error: --path 'api/x': a request path starts with '/'"
    # What the operation refuses (the admin API's 400s), in one line too, and nothing deleted.
    for argv, why in (
        (["--pattern", "*"], "would delete every key in the Redis database"),
        (["--key", "someone-elses:key"], "is not the cache's"),
        (["--pattern", "x:*"], "reaches outside the cache's namespaces"),
    ):
        code, out, err = run(capsys, "invalidate", config, *argv)
        assert (code, out) == (2, "")
        assert one_line(err).startswith(f"error: {argv[0]} {argv[1]!r}: ")
        assert why in err
    app.get("/api/venues")
    assert app.get("/api/venues") == "HIT"


def test_invalidate_publishes_the_admin_event_to_the_broker(
    tmp_path: Path, redis_url: str, prefix: str, rabbitmq: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from .test_events_publisher import Listener

    tenant = str(uuid.uuid4())
    config = write_config(tmp_path, redis_url, prefix, events=events_section(rabbitmq, tenant))
    app = App(config)
    app.get("/api/events")
    listener = Listener(rabbitmq, tenant)
    try:
        code, out, err = run(capsys, "invalidate", config, "--path", "/api/events")
        assert (code, err, json.loads(out)["invalidated"]) == (0, "", 1)
        (envelope,) = listener.wait_for(1)
    finally:
        listener.close()
    assert envelope["type"] == "cache.invalidated"
    assert envelope["tenantId"] == tenant
    assert envelope["data"]["reason"] == "manual"
    assert envelope["data"]["count"] == 1


def test_invalidate_with_a_dead_broker_says_the_event_was_not_published(
    tmp_path: Path, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = f"amqp://guest:guest@127.0.0.1:{_free_port()}//"
    config = write_config(tmp_path, redis_url, prefix, events=events_section(broker, ORG))
    app = App(config)
    app.get("/api/events")
    code, out, err = run(capsys, "invalidate", config, "--path", "/api/events")
    assert code == 4
    assert json.loads(out)["invalidated"] == 1  # done ...
    assert "1 cache.invalidated event(s) could not be published" in one_line(err)  # ... but


# -- clear ----------------------------------------------------------------------------------------


def test_clear_needs_yes_then_drops_every_entry(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cache_middleware.events")
    config = write_config(tmp_path, redis_url, prefix)
    app = App(config)
    assert [app.get("/api/events"), app.get("/api/venues")] == ["MISS", "MISS"]
    code, out, err = run(capsys, "clear", config)
    assert (code, out) == (2, "")
    assert one_line(err).endswith("run it again with --yes")
    assert [app.get("/api/events"), app.get("/api/venues")] == ["HIT", "HIT"]

    code, out, err = run(capsys, "clear", config, "--yes")
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert body["key_prefix"] == prefix
    assert body["cleared"] >= 2  # the two entries, and the indexes that listed them
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match=f"{prefix}:GET:*"))
    assert [app.get("/api/events"), app.get("/api/venues")] == ["MISS", "MISS"]
    assert any("cache.cleared" in r.getMessage() for r in caplog.records)


# -- an unreachable store: every command ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["invalidate", "--path", "/api/events"],
        ["invalidate", "--tag", "events", "--dry-run"],
        ["clear", "--yes"],
        ["check", "--connect"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unreachable_store_is_exit_3_and_one_line(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    port = _free_port()
    config = write_config(tmp_path, f"redis://127.0.0.1:{port}/0", prefix)
    code, _, err = run(capsys, argv[0], config, *argv[1:])
    assert code == 3
    assert one_line(err).startswith(f"error: cannot reach the cache store redis://127.0.0.1:{port}")


def test_unreachable_store_in_a_real_process(tmp_path: Path, prefix: str) -> None:
    """No logging configured, as in an operator's shell: the store's outage warning (and its
    traceback) must not add to the one line."""
    config = write_config(tmp_path, f"redis://127.0.0.1:{_free_port()}/0", prefix)
    proc = subprocess.run(
        [str(EXE), "invalidate", config, "--pattern", f"{prefix}:*"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (3, "")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot reach the cache store redis://127.0.0.1:")


# -- events consume --log-level ---------------------------------------------------------------


@pytest.fixture
def consumer_config(tmp_path: Path, redis_url: str, prefix: str, rabbitmq: str) -> Iterator[str]:
    events = events_section(rabbitmq, str(uuid.uuid4()))
    events["consume"] = {"queue": f"cli-test-{uuid.uuid4().hex}"}
    yield write_config(tmp_path, redis_url, prefix, events=events)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not logged; got {lines}")


@pytest.mark.parametrize("flag", [[], ["--log-level", "info"]], ids=["default", "explicit"])
def test_consume_logs_on_stderr_at_info(consumer_config: str, flag: list[str]) -> None:
    proc = subprocess.Popen(
        [str(EXE), "events", "consume", "--config", consumer_config, *flag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = wait_for_line(proc, "cache_middleware.events: connected to amqp://")
        assert all("guest:guest" not in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_consumer(broker: str, queue: str, timeout: float = 20) -> None:
    """Until the worker consumes from its queue: what it would have logged at INFO."""
    import kombu

    deadline = time.monotonic() + timeout
    with kombu.Connection(broker) as conn:
        channel = conn.channel()
        while time.monotonic() < deadline:
            try:
                _, _, consumers = channel.queue_declare(queue=queue, passive=True)
            except Exception:  # not declared yet: a failed passive declare closes the channel
                channel = conn.channel()
                consumers = 0
            if consumers:
                return
            time.sleep(0.05)
    raise AssertionError(f"no consumer on {queue} within {timeout} s")


def test_consume_log_level_warning_hides_the_info_lines(
    consumer_config: str, rabbitmq: str
) -> None:
    proc = subprocess.Popen(
        [str(EXE), "events", "consume", "--config", consumer_config, "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        queue = yaml.safe_load(Path(consumer_config).read_text())["events"]["consume"]["queue"]
        wait_for_consumer(rabbitmq, queue)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "connected to" not in err
