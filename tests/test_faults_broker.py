"""Issue #18 point 4: a broker that stops answering while its connections stay open (a stall,
through the fault proxy in front of the real RabbitMQ) is not silent.

Before, the publisher waited for its publisher confirm with no timeout and heartbeats off: it
hung, logged nothing, and the buffer filled until it overflowed. Now each confirm is awaited
`connect_timeout` seconds, the stall is logged once, retries are quiet, and the events flow
again (at least once) when the broker answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from cache_middleware.events.publisher import KombuEventSink

from .faults.proxy import FaultProxy
from .test_events_publisher import ADMIN_DATA, AMQP_URL, Listener, events_config

LOGGER = "cache_middleware.events"


def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_stalled_broker_is_reported_once_and_the_events_follow(
    rabbitmq: str, caplog: pytest.LogCaptureFixture
) -> None:
    host_port = rabbitmq.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1) if ":" in host_port else (host_port, "5672")
    proxy = FaultProxy(host, int(port)).start()
    config = events_config(connect_timeout=0.5)
    sink = KombuEventSink(config, broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
    listener = Listener(AMQP_URL, config["tenant_id"])
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            sink.emit("cache.warmed", ADMIN_DATA["cache.warmed"])
            listener.wait_for(1)
            proxy.stall()
            for _ in range(3):
                sink.emit("cache.cleared", ADMIN_DATA["cache.cleared"])
            _until(lambda: sink.failures >= 3)  # timed-out confirms and reconnections
            assert sink.pending >= 3  # (the first may be delivered and its confirm stalled)
            proxy.resume()
            proxy.cut()  # the stalled connections: what a broker's heartbeat timeout ends
            envelopes = listener.wait_for(4)
            _until(lambda: sink.pending == 0)
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "cannot publish" in r.message
        ]
        assert len(warnings) == 1, [r.message for r in warnings]
        again = [r for r in caplog.records if "again" in r.message and r.levelno == logging.INFO]
        assert len(again) == 1
        assert [e["type"] for e in envelopes][:1] == ["cache.warmed"]
        assert sum(e["type"] == "cache.cleared" for e in envelopes) >= 3  # at least once
    finally:
        sink.close(2)
        proxy.stop()
        listener.close()
