"""What `cache-middleware events consume` tells an operator, on the `cache_middleware.events`
logger (the CLI's `--log-level` puts it on stderr): that it connected; each broker fault once,
at WARNING (a lost connection, or a first failed attempt), the attempts that follow at DEBUG;
each reconnection (INFO); and each dead-lettered message with its reason, never its body. The
password of the broker URL is never logged.

`run_consumer` (what the command runs) runs in a thread with a `stop` event, over kombu's
`memory://` transport and over the real RabbitMQ, the losses played by a TCP proxy in front of
it that is stopped and started (a failure, not a skip, when `CI` is set and RabbitMQ does not
answer).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

kombu = importlib.import_module("kombu") if os.environ.get("CI") else pytest.importorskip("kombu")

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402

from cache_middleware.events import process_sink  # noqa: E402
from cache_middleware.events.consumer import run_consumer  # noqa: E402

from .test_events_publisher import (  # noqa: E402, F401
    UNREACHABLE,
    Proxy,
    events_config,
    proxied,
    proxy,
)

WAIT = 10.0
LOGGER = "cache_middleware.events"


@pytest.fixture(autouse=True)
def close_process_sinks() -> Iterator[None]:
    yield
    process_sink.flush_process_sinks(2)


def write_config(directory: Path, broker: str) -> tuple[Path, str]:
    """A cache.yaml whose worker consumes from a queue of its own; the path and the queue."""
    queue = f"test-logging-{uuid.uuid4().hex[:10]}"
    data: dict[str, Any] = {
        "redis_url": f"memory://{uuid.uuid4().hex[:12]}",
        "routes": {"/api/items": {"ttl": 60}},
        "events": events_config(
            broker_url=broker, consume={"queue": queue, "dead_letter_queue": f"{queue}.dead"}
        ),
    }
    path = directory / "cache.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, queue


class Worker:
    """`run_consumer(path)` in a thread, stopped (and its queues dropped) on exit."""

    def __init__(self, path: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.stop = threading.Event()
        self.caplog = caplog
        self.thread = threading.Thread(
            target=run_consumer, args=(path,), kwargs={"stop": self.stop}, daemon=True
        )

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the worker did not stop"

    def records(self, level: int, text: str) -> list[str]:
        """The messages of one level that start with `text`."""
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(text)
        ]

    def levels(self, text: str) -> list[int]:
        """The level of each message that starts with `text`, in the order logged."""
        return [
            r.levelno
            for r in self.caplog.records
            if r.name == LOGGER and r.getMessage().startswith(text)
        ]

    def wait_for(self, level: int, text: str, count: int = 1) -> list[str]:
        deadline = time.monotonic() + WAIT
        while len(found := self.records(level, text)) < count:
            assert time.monotonic() < deadline, f"never logged {logging.getLevelName(level)} {text}"
            time.sleep(0.01)
        return found


def publish_raw(broker: str, body: str) -> None:
    with Connection(broker) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange=Exchange("coder.events", type="topic", durable=True),
            routing_key="data.updated",
            content_type="text/plain",
            content_encoding="utf-8",
        )


def drop_queues(broker: str, queue: str) -> None:
    with Connection(broker) as conn:
        for name in (queue, f"{queue}.dead"):
            Queue(name)(conn.channel()).delete()


def test_connected_and_dead_letters_over_the_memory_transport(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, queue = write_config(tmp_path, "memory://")
    secret = "do-not-log-" + uuid.uuid4().hex
    with caplog.at_level(logging.INFO, logger=LOGGER), Worker(path, caplog) as worker:
        (connected,) = worker.wait_for(logging.INFO, "connected to memory://")
        assert queue in connected
        publish_raw("memory://", f"not json {secret}")
        (dead,) = worker.wait_for(logging.WARNING, "dead-lettered a message")
    assert "not JSON" in dead and "routing key data.updated" in dead and f"{queue}.dead" in dead
    assert secret not in caplog.text  # the reason, never the body


def test_an_unreachable_broker_is_reported_and_stop_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = write_config(tmp_path, UNREACHABLE)
    with caplog.at_level(logging.DEBUG, logger=LOGGER), Worker(path, caplog) as worker:
        # one fault, said once: the first failed attempt at WARNING, the next ones at DEBUG
        retries = worker.wait_for(logging.DEBUG, "cannot reach amqp://", count=2)
        started = time.monotonic()
        worker.stop.set()
        worker.thread.join(WAIT)
        assert time.monotonic() - started < 5  # between two attempts, not after the outage
    (warning,) = worker.records(logging.WARNING, "cannot reach amqp://")
    assert "retrying in" in warning and all("retrying in" in line for line in retries)
    levels = worker.levels("cannot reach amqp://")
    assert levels == [logging.WARNING] + [logging.DEBUG] * (len(levels) - 1), levels
    assert not worker.records(logging.INFO, "connected to")
    assert "guest:guest@" not in caplog.text  # the password is masked


def test_connection_loss_and_reconnection_over_rabbitmq(
    tmp_path: Path,
    rabbitmq: str,
    proxy: Proxy,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, queue = write_config(tmp_path, proxied(rabbitmq, proxy.port))
    proxy.start()
    secret = "do-not-log-" + uuid.uuid4().hex
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER), Worker(path, caplog) as worker:
            (connected,) = worker.wait_for(logging.INFO, "connected to amqp://")
            assert f"@127.0.0.1:{proxy.port}" in connected and queue in connected
            publish_raw(rabbitmq, f"not json {secret}")
            worker.wait_for(logging.WARNING, "dead-lettered a message")

            proxy.stop()  # the broker goes away under the worker
            worker.wait_for(logging.WARNING, "lost the connection to amqp://")
            # the attempts while it is away belong to the same fault: DEBUG, not WARNING
            worker.wait_for(logging.DEBUG, "cannot reach amqp://", count=2)
            proxy.start()
            (reconnected,) = worker.wait_for(logging.INFO, "reconnected to amqp://")
            assert queue in reconnected and "s without the broker)" in reconnected

            # and it consumes again: a second bad message is dead-lettered too
            publish_raw(rabbitmq, f"not json either {secret}")
            worker.wait_for(logging.WARNING, "dead-lettered a message", count=2)
    finally:
        drop_queues(rabbitmq, queue)
    assert secret not in caplog.text
    assert "guest:guest@" not in caplog.text
    assert len(worker.records(logging.INFO, "connected to amqp://")) == 1  # not "reconnected"
    # one fault, one warning: the loss; every attempt after it (refused) at DEBUG only
    assert worker.levels("lost the connection to amqp://") == [logging.WARNING]
    assert set(worker.levels("cannot reach amqp://")) == {logging.DEBUG}
