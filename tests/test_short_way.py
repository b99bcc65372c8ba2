"""The Redis HIT's short way (`_core/held.py`, both adapters): a plain GET seen before is
answered from one GET of its key without building the request's plan; anything but a fresh
entry goes the full way with what was read, so nothing is read twice. And the per-key memo of
decoded reads (`CachePolicy.decoded`) that lets those HITs share one decoded entry.

Against the real Redis (the stores count the calls the middleware makes)."""

from __future__ import annotations

import inspect
import time
from collections import Counter
from typing import Any

import pytest
import redis

from cache_middleware._core import reading as reading_module
from cache_middleware._core.entry import (
    CachedResponse,
    CorruptEntry,
    HeldEntry,
    encode_entry,
    encode_vary,
)
from cache_middleware._core.policy import CachePolicy
from cache_middleware.config import load_config
from cache_middleware.errors import StoreUnavailable
from cache_middleware.storage.redis_async import AsyncRedisStore
from cache_middleware.storage.redis_sync import RedisStore
from cache_middleware.wiring import build_policy

from .adapters import Harness

CONFIG: dict[str, Any] = {"routes": {"/api": {"ttl": 60, "stale_while_revalidate": 30}}}
_COUNTED = ("get", "get_or_acquire", "acquire_fill", "store_fill", "release_fill", "forget")


class _Counting:
    """Counts the store calls the middleware makes; `fail_gets` makes its reads fail as an
    unreachable Redis does."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=2.0)  # type: ignore[call-arg]
        self.calls: Counter[str] = Counter()
        self.fail_gets = False

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in _COUNTED:
            return attr
        store = self

        def count() -> None:
            store.calls[name] += 1
            if name == "get" and store.fail_gets:
                raise StoreUnavailable("Redis is down (test)")

        if inspect.iscoroutinefunction(attr):

            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                count()
                return await attr(*args, **kwargs)

            return counted_async

        def counted(*args: Any, **kwargs: Any) -> Any:
            count()
            return attr(*args, **kwargs)

        return counted


class CountingAsyncRedis(_Counting, AsyncRedisStore):
    """The real async Redis store, counted."""


class CountingSyncRedis(_Counting, RedisStore):
    """The real blocking Redis store, counted."""


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def harness(adapter: str, redis_url: str, prefix: str) -> tuple[Harness, Any]:
    store: Any = (
        CountingAsyncRedis(redis_url) if adapter == "asgi" else CountingSyncRedis(redis_url)
    )
    backend = {"url": redis_url, "async_store": store, "sync_store": store}
    return Harness(adapter, {**CONFIG, "key_prefix": prefix}, backend), store


async def warm(h: Harness) -> Any:
    """A MISS, then a HIT: after it the route's lookups mostly hit (see the first test)."""
    first = await h.request("GET", "/api/events")
    assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    return first


def count_plans(h: Harness) -> list[str]:
    """Spy on the middleware's policy: the paths it built a full plan for."""
    planned: list[str] = []
    plan = h.middleware.policy.plan

    def spy(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        planned.append(path)
        return plan(method, path, *args, **kwargs)

    h.middleware.policy.plan = spy
    return planned


async def test_a_plain_hit_is_one_get_and_no_plan(
    adapter: str, redis_url: str, prefix: str
) -> None:
    h, store = harness(adapter, redis_url, prefix)
    planned = count_plans(h)
    miss = await h.request("GET", "/api/events")
    assert miss.x_cache == "MISS"
    # The route's only lookup so far missed (a route that mostly misses reads the full way,
    # which takes the lease with the read): this HIT goes the full way and turns the trend.
    assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    assert planned == ["/api/events"] * 2
    store.calls.clear()
    hits = [await h.request("GET", "/api/events") for _ in range(4)]
    assert [r.x_cache for r in hits] == ["HIT"] * 4
    assert {r.body for r in hits} == {miss.body}
    assert planned == ["/api/events"] * 2  # the HITs took the short way
    assert store.calls == Counter(get=4)  # one round trip each, nothing else
    assert h.state.calls == 1
    # The same as the full way answers: a request with a validator goes the full way.
    full = await h.request("GET", "/api/events", {"If-None-Match": '"nope"'})
    assert full.x_cache == "HIT" and planned == ["/api/events"] * 3
    for name in ("x-cache-key", "x-cache-ttl", "cache-control", "etag", "content-type"):
        assert hits[-1].headers[name] == full.headers[name]
    snapshot = h.middleware.stats.snapshot()
    assert (snapshot["hits"], snapshot["misses"], snapshot["stores"]) == (6, 1, 1)
    # Counted per route as the full way counts: the short way's HITs included.
    (route,) = h.middleware.book.routes.values()
    assert (route.hits, route.misses) == (6, 1)
    await h.aclose()


async def test_a_miss_after_the_short_read_does_not_read_again(
    adapter: str, redis_url: str, prefix: str
) -> None:
    """The entry is gone (invalidated elsewhere): the short read's nothing is the full way's
    first read, so the MISS costs the read, the lease and the store, as before."""
    h, store = harness(adapter, redis_url, prefix)
    await warm(h)
    redis.Redis.from_url(redis_url).delete(
        h.middleware.policy.plain_key_of("GET", "/api/events", "", "t", "http")[1]
    )
    store.calls.clear()
    again = await h.request("GET", "/api/events")
    assert again.x_cache == "MISS" and again.call == 2
    assert store.calls == Counter(get=1, acquire_fill=1, store_fill=1)
    await h.aclose()


async def test_a_stale_entry_read_the_short_way_is_served_stale(
    adapter: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its TTL, within stale-while-revalidate: the full way serves it STALE from the one
    read and refreshes it behind."""
    h, store = harness(adapter, redis_url, prefix)
    first = await warm(h)
    later = time.time() + 61
    monkeypatch.setattr(f"cache_middleware.{adapter}.time.time", lambda: later)
    store.calls.clear()
    stale = await h.request("GET", "/api/events")
    assert stale.x_cache == "STALE" and stale.body == first.body
    assert store.calls["get"] == 1
    await h.aclose()


async def test_a_vary_record_read_the_short_way_is_followed(
    adapter: str, redis_url: str, prefix: str
) -> None:
    """Another process stored a Vary record under the key since this one saw it: the full way
    follows the record from the short read (record, then variant: two reads, not three)."""
    h, store = harness(adapter, redis_url, prefix)
    await warm(h)
    key = h.middleware.policy.plain_key_of("GET", "/api/events", "", "t", "http")[1]
    redis.Redis.from_url(redis_url).set(key, encode_vary(("accept-language",)))
    store.calls.clear()
    reply = await h.request("GET", "/api/events", {"Accept-Language": "fr"})
    assert reply.x_cache == "MISS" and reply.call == 2
    assert store.calls["get"] == 2
    assert h.middleware.policy.plain_key_of("GET", "/api/events", "", "t", "http") is None
    await h.aclose()


async def test_the_short_read_fails_open(adapter: str, redis_url: str, prefix: str) -> None:
    """Redis unreachable at the short read: the app answers, BYPASS, counted once, no retry."""
    h, store = harness(adapter, redis_url, prefix)
    await warm(h)
    store.fail_gets = True
    store.calls.clear()
    reply = await h.request("GET", "/api/events")
    assert reply.status == 200 and reply.x_cache == "BYPASS" and reply.call == 2
    assert "store-unavailable" in reply.headers["cache-status"]
    assert store.calls == Counter(get=1)
    assert h.middleware.stats.snapshot()["errors"] == 1
    store.fail_gets = False
    assert (await h.request("GET", "/api/events")).x_cache == "HIT"
    await h.aclose()


async def test_a_route_that_mostly_misses_keeps_the_merged_lookup(
    adapter: str, redis_url: str, prefix: str
) -> None:
    """Where lookups mostly find nothing, the first read also takes the lease (one round trip
    for both): a plain GET there skips the short read rather than pay a third round trip."""
    h, store = harness(adapter, redis_url, prefix)
    for n in range(12):  # misses in a row: the route now mostly misses
        await h.request("GET", f"/api/events?n={n}")
    await h.request("GET", "/api/events?n=0")  # seen before, plain: and a HIT
    flush = redis.Redis.from_url(redis_url)
    for key in flush.scan_iter(match=f"{prefix}:GET:*"):
        flush.delete(key)
    store.calls.clear()
    reply = await h.request("GET", "/api/events?n=1")
    assert reply.x_cache == "MISS"
    assert store.calls == Counter(get_or_acquire=1, store_fill=1)
    await h.aclose()


# -- CachePolicy.decoded ------------------------------------------------------------------------


def _policy() -> CachePolicy:
    return build_policy(load_config({"routes": {"/api": {"ttl": 60}}}))


def _raw(body: bytes, stored_at: float = 1000.0) -> bytes:
    return encode_entry(
        CachedResponse(200, [(b"content-type", b"text/plain")], body, stored_at, 60)
    )


def test_the_same_bytes_under_a_key_decode_to_one_shared_entry() -> None:
    policy = _policy()
    first = policy.decoded("k", _raw(b"a"))
    assert policy.decoded("k", _raw(b"a")) is first  # equal bytes, another object: shared
    other = policy.decoded("k", _raw(b"a", stored_at=1001.0))
    assert other is not first and isinstance(other, CachedResponse)
    assert other.stored_at == 1001.0  # new bytes under the key: decoded afresh
    assert policy.decoded("j", _raw(b"a")) is not first  # per key
    # ... and the replayed headers are then built once for them (the memo keyed by the entry).
    rule = policy.match("/api")
    assert rule is not None
    assert policy.plain_hit_headers(rule, None, first, 1000.0) == policy.plain_hit_headers(
        rule, None, policy.decoded("k", _raw(b"a")), 1000.0
    )


def test_what_is_not_an_entry_is_never_remembered() -> None:
    policy = _policy()
    assert policy.decoded("k", encode_vary(("accept",))).names == ("accept",)  # type: ignore[union-attr]
    assert policy._reads == {}
    for _ in range(2):
        with pytest.raises(CorruptEntry):
            policy.decoded("k", b"CMR\x02garbage")
    held = HeldEntry(_raw(b"a"))
    assert policy.decoded("k", held) is policy.decoded("k", held)  # the bytes remember it
    assert policy._reads == {}


def test_the_decoded_reads_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    monkeypatch.setattr(reading_module, "_READS_MEMO_LIMIT", 4)
    for n in range(10):
        policy.decoded(f"k{n}", _raw(b"a"))
        assert len(policy._reads) <= 4
    monkeypatch.setattr(reading_module, "_READS_MEMO_BYTES", 16 * 1024)
    big = _raw(b"x" * 2048)  # over a sixteenth of the bytes allowed: decoded, not kept
    policy.decoded("big", big)
    assert "big" not in policy._reads
    for n in range(40):
        policy.decoded(f"m{n}", _raw(b"y" * 100))
        assert policy._reads_bytes <= 16 * 1024
