"""The pipelined GET of the HIT path: correct, pipelined, bounded in time, robust to bad peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage.pipelined_get import PipelinedGetter, ReplyError
from cache_middleware.storage.redis_async import AsyncRedisStore, _pipelined_params

from .redis_process import RedisProcess


def getter_for(url: str, timeout: float = 0.5) -> PipelinedGetter:
    params = _pipelined_params(url, timeout)
    assert params is not None
    return PipelinedGetter(**params)


def test_only_plain_tcp_urls_take_the_fast_path() -> None:
    assert _pipelined_params("redis://127.0.0.1:6379/15", 0.1) == {
        "host": "127.0.0.1",
        "port": 6379,
        "db": 15,
        "username": None,
        "password": None,
        "timeout": 0.1,
    }
    assert _pipelined_params("redis://u:p@h/2", 0.1)["password"] == "p"  # type: ignore[index]
    assert _pipelined_params("rediss://h:6380/0", 0.1) is None
    assert _pipelined_params("unix:///tmp/redis.sock", 0.1) is None
    assert _pipelined_params("redis://h/0?socket_keepalive=true", 0.1) is None


async def test_round_trip_and_pipelining(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    values = {f"{prefix}:{i}": (b"v%d" % i) * (i * 37 % 5000) for i in range(300)}
    client.mset(values)
    client.set(f"{prefix}:binary", bytes(range(256)) * 3 + b"\r\n$-1\r\n")
    getter = getter_for(redis_url)
    connects = 0
    connect = getter._connect

    async def counting_connect() -> Any:
        nonlocal connects
        connects += 1
        return await connect()

    getter._connect = counting_connect  # type: ignore[method-assign]
    try:
        keys = [*values, f"{prefix}:missing", f"{prefix}:binary"]
        results = await asyncio.gather(*(getter.get(k.encode()) for k in keys))
        assert results[:300] == list(values.values())
        assert results[300] is None
        assert results[301] == bytes(range(256)) * 3 + b"\r\n$-1\r\n"
        # All of it on one connection, pipelined.
        assert connects == 1
    finally:
        getter.close()
        client.close()


async def test_password_and_db_handshake() -> None:
    server = RedisProcess(password="s3cr3t")
    server.start()
    try:
        redis.Redis.from_url(server.url.replace("/0", "/3")).set("k", b"in db 3")
        good = getter_for(server.url.replace("/0", "/3"))
        assert await good.get(b"k") == b"in db 3"
        good.close()
        bad = getter_for(server.url.replace("s3cr3t", "wrong"))
        with pytest.raises(ReplyError):
            await bad.get(b"k")
        bad.close()
    finally:
        server.stop()


async def test_paused_server_times_out_then_recovers(redis_process: RedisProcess) -> None:
    redis_process.client().set("k", b"v")
    getter = getter_for(redis_process.url, timeout=0.1)
    assert await getter.get(b"k") == b"v"
    redis_process.client().execute_command("CLIENT", "PAUSE", "800", "ALL")
    start = time.perf_counter()
    results = await asyncio.gather(*(getter.get(b"k") for _ in range(20)), return_exceptions=True)
    assert time.perf_counter() - start < 0.5
    # One stall, one event: the first waiter gets the timeout, the rest are marked collateral
    # (the circuit breaker counts the stall once).
    assert isinstance(results[0], TimeoutError)
    assert all(isinstance(r, ConnectionError) and r.collateral for r in results[1:])  # type: ignore[attr-defined]
    redis_process.client().execute_command("CLIENT", "UNPAUSE")
    assert await getter.get(b"k") == b"v"
    getter.close()


async def test_killed_connection_reconnects(redis_process: RedisProcess) -> None:
    client = redis_process.client()
    client.set("k", b"v")
    getter = getter_for(redis_process.url)
    assert await getter.get(b"k") == b"v"
    client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await asyncio.sleep(0.05)
    assert await getter.get(b"k") == b"v"
    getter.close()


async def test_wrong_type_is_a_foreign_value_not_an_outage(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{prefix}:list", b"x")
    store = AsyncRedisStore(redis_url)
    assert await store.get(f"{prefix}:list") == b""
    assert not store.monitor.down
    await store.aclose()
    client.close()


FakePeer = Callable[[bytes], bytes | None]


@pytest.fixture
async def fake_redis() -> AsyncIterator[Callable[[FakePeer], Awaitable[str]]]:
    """A TCP peer that answers every request with what `reply(request)` returns."""
    servers: list[asyncio.Server] = []

    async def start(reply: FakePeer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                answer = reply(data)
                if answer is not None:
                    writer.write(answer)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b":12\r\n",  # a type GET never returns
        b"$abc\r\nxyz\r\n",  # malformed length
        b"$99999999999\r\n",  # longer than any value Redis may hold
    ],
)
async def test_confused_peer_fails_cleanly(fake_redis: Any, reply: bytes) -> None:
    url = await fake_redis(lambda request: reply)
    getter = getter_for(url)
    try:
        result = await asyncio.gather(getter.get(b"k"), getter.get(b"k"), return_exceptions=True)
        # The first reply may be fine (the unsolicited one); the rest fail, nothing hangs.
        assert any(isinstance(r, ConnectionError) for r in result), result
    finally:
        getter.close()


async def test_unsolicited_reply_closes_the_connection(fake_redis: Any) -> None:
    url = await fake_redis(lambda request: b"$3\r\nabc\r\n$3\r\ndef\r\n")
    getter = getter_for(url)
    assert await getter.get(b"k") == b"abc"
    await asyncio.sleep(0.05)
    assert getter.protocol is None  # dropped: replies no longer line up with requests
    getter.close()


async def test_silent_peer_times_out(fake_redis: Any) -> None:
    url = await fake_redis(lambda request: None)
    store = AsyncRedisStore(url, timeout=0.1)
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    assert time.perf_counter() - start < 0.4
    await store.aclose()


async def test_a_later_request_left_unanswered_times_out_too(fake_redis: Any) -> None:
    """One timer watches the oldest request: once it is answered, the next oldest is watched,
    so a request sent later and never answered still fails within its own timeout."""
    answered = 0

    def reply(request: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return b"$1\r\nv\r\n" if answered == 1 else None  # the first request only

    url = await fake_redis(reply)
    getter = getter_for(url, timeout=0.2)
    try:
        assert await getter.get(b"a") == b"v"
        await asyncio.sleep(0.15)  # the watch armed for "a" fires while "b" is young
        start = time.perf_counter()
        with pytest.raises(TimeoutError) as raised:
            # Bounded here too: a watch that never moved on would hang, not fail.
            await asyncio.wait_for(getter.get(b"b"), 2)
        assert "did not answer" in str(raised.value)  # the watch's, not wait_for's
        # ~0.2 s; the slack absorbs a loaded CI machine (a watch that never moved on would
        # end in wait_for's timeout, at 2 s, which the message check above tells apart).
        assert 0.15 < time.perf_counter() - start < 1.0
        assert getter.protocol is None  # dropped: the next call reconnects
    finally:
        getter.close()


async def test_replies_split_across_packets(fake_redis: Any) -> None:
    chunks = iter([b"$5\r\nhel", b"lo\r\n"])

    def reply(request: bytes) -> bytes:
        return b"".join(chunks)

    url = await fake_redis(reply)
    getter = getter_for(url)
    assert await getter.get(b"k") == b"hello"
    getter.close()


async def test_one_write_per_loop_turn_and_nothing_held_back() -> None:
    """Commands issued in one loop turn leave in one socket write; a command issued while an
    earlier one awaits its reply is written at once (never held for that reply: against a
    remote Redis that would add up to a round trip of latency)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await asyncio.sleep(0.05)  # a slow server
            writer.write(b"$1\r\nv\r\n" * data.count(b"*2\r\n$3\r\nGET"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    getter = getter_for(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0")
    writes: list[bytes] = []
    try:
        first = asyncio.ensure_future(getter.get(b"a"))
        await asyncio.sleep(0.01)  # connected, "a" on the wire, its reply 40 ms away
        protocol = getter.protocol
        assert protocol is not None and protocol.transport is not None

        class Counting:  # the connection's transport, its writes recorded
            def __init__(self, inner: asyncio.Transport) -> None:
                self.inner = inner

            def write(self, data: bytes) -> None:
                writes.append(data)
                self.inner.write(data)

            def abort(self) -> None:
                self.inner.abort()

        protocol.transport = Counting(protocol.transport)  # type: ignore[assignment]
        together = [asyncio.ensure_future(getter.get(b"%d" % i)) for i in range(5)]
        await asyncio.sleep(0.005)
        assert len(writes) == 1 and writes[0].count(b"GET") == 5  # one turn, one write
        assert not first.done()  # written although "a" is still unanswered
        assert await first == b"v"
        assert await asyncio.gather(*together) == [b"v"] * 5
    finally:
        getter.close()
        server.close()
