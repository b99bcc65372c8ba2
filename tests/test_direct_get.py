"""The lean blocking GET of the WSGI HIT path: correct, shared safely by threads, bounded in time,
robust to bad peers, and never used across a fork."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage import direct_get
from cache_middleware.storage.base import Fill
from cache_middleware.storage.direct_get import DirectGetter
from cache_middleware.storage.redis_async import _pipelined_params
from cache_middleware.storage.redis_sync import RedisStore
from cache_middleware.storage.resp import GET_COMMAND, ReplyError, encode_command

from .redis_process import RedisProcess


def getter_for(url: str, timeout: float = 0.5, **kwargs: Any) -> DirectGetter:
    params = _pipelined_params(url, timeout)
    assert params is not None
    return DirectGetter(**params, **kwargs)


def test_round_trip(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    values = {f"{prefix}:{i}": (b"v%d" % i) * (i * 37 % 5000) for i in range(200)}
    values[f"{prefix}:big"] = os.urandom(300_000)  # several reads of the socket
    client.mset(values)
    client.set(f"{prefix}:binary", bytes(range(256)) * 3 + b"\r\n$-1\r\n")
    getter = getter_for(redis_url)
    try:
        for key, value in values.items():
            assert getter.get(key.encode()) == value
        assert getter.get(f"{prefix}:missing".encode()) is None
        assert getter.get(f"{prefix}:binary".encode()) == bytes(range(256)) * 3 + b"\r\n$-1\r\n"
        assert len(getter._idle) == 1  # all of it on one socket, taken and given back
    finally:
        getter.close()
        client.close()


def test_threads_share_a_bounded_set_of_sockets(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call has a socket to itself; idle sockets are reused by any thread (a server that
    starts a thread per request opens no socket per request) and at most `max_idle` stay."""
    opened: list[object] = []

    class Counted(direct_get._Connection):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            opened.append(self)

    monkeypatch.setattr(direct_get, "_Connection", Counted)
    client = redis.Redis.from_url(redis_url)
    client.mset({f"{prefix}:{i}": b"%d" % i for i in range(8)})
    getter = getter_for(redis_url, max_idle=4)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(200):
                assert getter.get(f"{prefix}:{i}".encode()) == b"%d" % i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(opened) <= 8 and len(getter._idle) <= 4  # never more sockets than callers
    before = len(opened)
    for i in range(20):  # a thread per request, one after another: one socket serves them all
        t = threading.Thread(target=getter.get, args=(f"{prefix}:{i % 8}".encode(),))
        t.start()
        t.join()
    assert len(opened) == before
    getter.close()
    client.close()


def test_password_and_db_handshake() -> None:
    server = RedisProcess(password="s3cr3t")
    server.start()
    try:
        redis.Redis.from_url(server.url.replace("/0", "/3")).set("k", b"in db 3")
        good = getter_for(server.url.replace("/0", "/3"))
        assert good.get(b"k") == b"in db 3"
        good.close()
        bad = getter_for(server.url.replace("s3cr3t", "wrong"))
        with pytest.raises(ReplyError):
            bad.get(b"k")
        assert bad._idle == []  # a failed handshake keeps no socket
        bad.close()
    finally:
        server.stop()


def test_paused_server_times_out_then_recovers(redis_process: RedisProcess) -> None:
    redis_process.client().set("k", b"v")
    getter = getter_for(redis_process.url, timeout=0.1)
    assert getter.get(b"k") == b"v"
    redis_process.client().execute_command("CLIENT", "PAUSE", "800", "ALL")
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        getter.get(b"k")
    assert time.perf_counter() - start < 0.5
    assert getter._idle == []  # the socket of the stalled call is out of step: closed
    redis_process.client().execute_command("CLIENT", "UNPAUSE")
    assert getter.get(b"k") == b"v"
    getter.close()


def test_killed_connection_reconnects(redis_process: RedisProcess) -> None:
    client = redis_process.client()
    client.set("k", b"v")
    getter = getter_for(redis_process.url)
    assert getter.get(b"k") == b"v"
    client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    time.sleep(0.05)
    # The idle socket was closed by the server: this call finds out and asks again, at once,
    # on a new connection (issue #18: a dropped socket is not a store failure).
    assert getter.get(b"k") == b"v"
    assert getter.dropped == 1
    assert getter.get(b"k") == b"v"
    getter.close()


def test_wrong_type_is_a_foreign_value_not_an_outage(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{prefix}:list", b"x")
    store = RedisStore(redis_url)
    assert store._direct is not None
    assert store.get(f"{prefix}:list") == b""
    assert not store.monitor.down
    assert store.get(f"{prefix}:missing") is None  # the connection stayed in step
    store.close()
    client.close()


def test_only_plain_urls_and_no_given_client_take_the_lean_path(redis_url: str) -> None:
    assert RedisStore(redis_url)._direct is not None
    assert RedisStore(redis_url, fast_get=False)._direct is None
    assert RedisStore("rediss://127.0.0.1:6380/0")._direct is None
    assert RedisStore(redis_url, client=redis.Redis.from_url(redis_url))._direct is None
    # redis-py options the lean sockets would not honour keep the store on redis-py.
    assert RedisStore(redis_url, password="x")._direct is None
    assert RedisStore(redis_url, socket_keepalive=True)._direct is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_socket(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}:k", b"parent and child")
    getter = getter_for(redis_url)
    assert getter.get(f"{prefix}:k".encode()) == b"parent and child"
    inherited = getter._idle[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the inherited socket must not be used
        try:
            ok = getter.get(f"{prefix}:k".encode()) == b"parent and child"
            ok = ok and getter._idle[0] is not inherited
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10  # never hang the suite on a child stuck after fork
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish within 10 s")
        time.sleep(0.01)
    assert os.read(read, 1) == b"1"
    assert getter._idle == [inherited]  # the parent's socket is still its own, and works
    assert getter.get(f"{prefix}:k".encode()) == b"parent and child"
    getter.close()
    client.close()


FakePeer = Callable[[bytes], "bytes | None"]


@pytest.fixture
def fake_redis() -> Iterator[Callable[[FakePeer], str]]:
    """A TCP peer that answers every request with what `reply(request)` returns."""
    listeners: list[socket.socket] = []

    def start(reply: FakePeer) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    while data := conn.recv(65536):
                        answer = reply(data)
                        if answer is not None:
                            conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"redis://127.0.0.1:{listener.getsockname()[1]}/0"

    yield start
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize(
    "reply",
    [
        b":12\r\n",  # a type GET never returns
        b"$abc\r\nxyz\r\n",  # malformed length
        b"$99999999999\r\n",  # longer than any value Redis may hold
        b"$3\r\nabc\r\n$3\r\ndef\r\n",  # a reply nobody asked for after the right one
    ],
)
def test_confused_peer_fails_cleanly(fake_redis: Any, reply: bytes) -> None:
    getter = getter_for(fake_redis(lambda request: reply))
    with pytest.raises(ConnectionError):
        getter.get(b"k")
    getter.close()


def test_silent_peer_times_out(fake_redis: Any) -> None:
    store = RedisStore(fake_redis(lambda request: None), timeout=0.1)
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable):
        store.get("k")
    assert time.perf_counter() - start < 0.4
    store.close()


def test_replies_split_across_packets() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"$5\r\nhel")
            time.sleep(0.02)
            conn.sendall(b"lo\r\n")
            conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    getter = getter_for(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
    try:
        assert getter.get(b"k") == b"hello"
    finally:
        getter.close()
        listener.close()


def test_fill_scripts_ride_the_lean_sockets_and_survive_a_script_flush(
    redis_url: str, prefix: str
) -> None:
    """The WSGI MISS path's scripts go where its GET goes; after SCRIPT FLUSH (or a restart) the
    first call loads its script again; redis-py is never needed for a lookup, fill or release."""
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    store = RedisStore(redis_url, timeout=2.0)
    key, lock, index = f"{prefix}:GET:/a", f"{prefix}:lock:GET:/a", f"{prefix}:index:/a"
    value, epoch = store.get_or_acquire(key, lock, "t1", 5000, index)
    assert value is None and isinstance(epoch, int)
    assert store.get_or_acquire(key, lock, "t2", 5000, index) == (None, None)  # t1 holds it
    assert store.store_fill(Fill(lock, "t1", epoch, [(key, b"entry", 60)], [index], 60)) is True
    assert store.get_or_acquire(key, lock, "t3", 5000, index) == (b"entry", None)
    other = store.acquire_fill(f"{lock}2", "t4", 5000, index)
    assert isinstance(other, int)
    store.release_fill(f"{lock}2", "t4")
    assert client.exists(f"{lock}2") == 0
    assert store._client is None  # no redis-py client was built
    store.close()
    client.close()


@pytest.mark.parametrize(
    "key", [b"", b"k", b"cm:GET:/api/events", b"a\r\n$3\r\nDEL", bytes(range(256))]
)
def test_the_get_template_is_the_encoded_command(key: bytes) -> None:
    # Both lean connections send every HIT's GET from the template: it must be the command.
    assert GET_COMMAND % (len(key), key) == encode_command(b"GET", key)
