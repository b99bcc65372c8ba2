"""The lookup flow (`_core/flow.py`) with no I/O at all: each case feeds the results of the
steps the flow asks for and checks what it asks for next and what it ends with. The adapters'
own tests run the same flow through real stores and servers; this is the table of decisions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cache_middleware._core.entry import CachedResponse, encode_entry
from cache_middleware._core.flow import (
    Acquire,
    Claim,
    Forget,
    Get,
    GetOrAcquire,
    OnlyIfCached,
    PassOn,
    Release,
    RunApp,
    Serve,
    WaitLocal,
    WaitRemote,
    drive_sync,
    lookup_flow,
)
from cache_middleware._core.held import PlainRead
from cache_middleware._core.policy import CachePolicy, Found, Lookup
from cache_middleware._core.stats import StatsBook
from cache_middleware._core.trend import MissTrend
from cache_middleware.config import load_config
from cache_middleware.errors import StoreUnavailable
from cache_middleware.wiring import build_policy

NOW = 10_000.0
DOWN = StoreUnavailable("store down")


class Request:
    """A request's headers as `plan()` reads them."""

    def __init__(self, **headers: str) -> None:
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def has_any(self, names: frozenset[str]) -> bool:
        return any(name in self.headers for name in names)

    def default_user(self) -> None:
        return None

    def native(self) -> object:
        return self

    def view(self) -> Any:
        raise AssertionError("no condition configured")


def policy(**settings: Any) -> CachePolicy:
    routes = {"/api": {"ttl": 60, "stale_while_revalidate": 30, "stale_if_error": 300}}
    return build_policy(load_config({"routes": routes, **settings}))


def plan_of(p: CachePolicy, method: str = "GET", **headers: str) -> Lookup:
    plan = p.plan(method, "/api/x", "", Request(**headers))
    assert isinstance(plan, Lookup)
    return plan


def entry(age: float) -> bytes:
    return encode_entry(
        CachedResponse(200, [(b"content-type", b"text/plain")], b"body", NOW - age, 60, 30, 300)
    )


# Past its 10 s of freshness by 90 s, no stale window, with the app's own ETag: a standard
# route keeps it (revalidate_window) and may revalidate it.
STALE_WITH_ETAG = encode_entry(
    CachedResponse(200, [(b"etag", b'"app"')], b"body", NOW - 100, 10, 0, 0)
)


def run(flow: Any, answers: list[tuple[type, Any]]) -> tuple[list[Any], Serve | PassOn | RunApp]:
    """Drive `flow`: each step must be of the next expected type; its answer (an exception is
    raised into the flow) is sent back. Returns the steps seen and the outcome."""
    seen: list[Any] = []
    queue = list(answers)

    def perform(step: Any) -> Any:
        seen.append(step)
        assert queue, f"unexpected step {step!r}"
        kind, answer = queue.pop(0)
        assert isinstance(step, kind), (step, kind)
        if isinstance(answer, Exception):
            raise answer
        return answer

    outcome = drive_sync(flow, perform)
    assert not queue, f"steps not asked for: {queue}"
    return seen, outcome


def flow_of(p: CachePolicy, plan: Lookup, **kwargs: Any) -> Any:
    kwargs.setdefault("clock", lambda: NOW)
    return lookup_flow(p, MissTrend(), StatsBook(), plan, **kwargs)


# Each case: settings, request headers, flow arguments, the steps answered, the outcome check.
Check = Callable[[Any], bool]
CASES: list[tuple[str, dict[str, Any], dict[str, str], dict[str, Any], list[Any], Check]] = [
    (
        "fresh entry: served",
        {}, {}, {},
        [(Get, entry(10))],
        lambda o: isinstance(o, Serve) and o.stale == "" and not o.refresh,
    ),
    (
        "stale within stale-while-revalidate: served stale, refreshed behind",
        {}, {}, {},
        [(Get, entry(70))],
        lambda o: isinstance(o, Serve) and o.stale == "stale-while-revalidate" and o.refresh,
    ),
    (
        "nothing stored: claim, lease, run the app holding both",
        {}, {}, {},
        [(Get, None), (Claim, True), (Acquire, 7)],
        lambda o: isinstance(o, RunApp) and o.epoch == 7 and o.token and o.claimed,
    ),
    (
        "stale within stale-if-error: the app runs with the stale entry to fall back on",
        {}, {}, {},
        [(Get, entry(200)), (Claim, True), (Acquire, 1)],
        lambda o: isinstance(o, RunApp) and o.stale is not None and o.stale.body == b"body",
    ),
    (
        "the read fails: pass on with the store's detail",
        {}, {}, {},
        [(Get, DOWN)],
        lambda o: isinstance(o, PassOn) and o.detail == DOWN.detail,
    ),
    (
        "garbage under the key: forgotten, then filled",
        {}, {}, {},
        [(Get, b"not an entry"), (Forget, None), (Claim, True), (Acquire, 1)],
        lambda o: isinstance(o, RunApp) and o.token is not None,
    ),
    (
        "another request of this process fills: wait, then serve its entry",
        {}, {}, {},
        [(Get, None), (Claim, False), (WaitLocal, None), (Get, entry(0))],
        lambda o: isinstance(o, Serve) and o.stale == "",
    ),
    (
        "another request's fill stored nothing: the app answers, nothing stored",
        {}, {}, {},
        [(Get, None), (Claim, False), (WaitLocal, None), (Get, None)],
        lambda o: isinstance(o, RunApp) and o.token is None and not o.claimed,
    ),
    (
        "another process holds the lease: wait for it, release the claim, serve its entry",
        {}, {}, {},
        [(Get, None), (Claim, True), (Acquire, None), (WaitRemote, None), (Release, None),
         (Get, entry(0))],
        lambda o: isinstance(o, Serve),
    ),
    (
        "the lease cannot be taken (store down): release the claim, pass on",
        {}, {}, {},
        [(Get, None), (Claim, True), (Acquire, DOWN), (Release, None)],
        lambda o: isinstance(o, PassOn),
    ),
    (
        "a route that mostly misses: read and lease in one round trip",
        {}, {}, {"takes_lease": True},
        [(GetOrAcquire, (None, 3)), (Claim, True)],
        lambda o: isinstance(o, RunApp) and o.epoch == 3 and o.claimed,
    ),
    (
        "only-if-cached on a route that mostly misses: a plain read, never a lease it would hold",
        {}, {"cache-control": "only-if-cached"}, {"takes_lease": True},
        [(Get, None)],
        lambda o: isinstance(o, OnlyIfCached),
    ),
    (
        "read-and-lease found the entry: served, no lease",
        {}, {}, {"takes_lease": True},
        [(GetOrAcquire, (entry(1), None))],
        lambda o: isinstance(o, Serve),
    ),
    (
        "HEAD cannot fill: the app answers, nobody waits on it",
        {}, {}, {"method": "HEAD"},
        [(Get, None)],
        lambda o: isinstance(o, RunApp) and o.token is None,
    ),
    (
        "credentials: fill alone with the lease if free, never make others wait",
        {}, {"authorization": "Bearer x"}, {},
        [(Get, None), (Acquire, 5)],
        lambda o: isinstance(o, RunApp) and o.epoch == 5 and not o.claimed,
    ),
    (
        "credentials, lease taken elsewhere: just answer",
        {}, {"authorization": "Bearer x"}, {},
        [(Get, None), (Acquire, None)],
        lambda o: isinstance(o, RunApp) and o.token is None,
    ),
    (
        "honoured request no-cache: not read; fills alone if the lease is free",
        {"honor_request_no_cache": True}, {"cache-control": "no-cache"}, {},
        [(Acquire, 2)],
        lambda o: isinstance(o, RunApp) and o.epoch == 2 and not o.claimed,
    ),
    (
        "honoured request no-cache while another fills: never waits nor replays its entry",
        {"honor_request_no_cache": True}, {"cache-control": "no-cache"}, {},
        [(Acquire, None)],
        lambda o: isinstance(o, RunApp) and o.token is None,
    ),
    (
        "standard mode, past freshness with a validator: revalidated under the lease",
        {"mode": "standard"}, {}, {},
        [(Get, STALE_WITH_ETAG), (Claim, True), (Acquire, 4)],
        lambda o: isinstance(o, RunApp) and o.validating is not None,
    ),
    (
        "standard mode, a credentialed request: refetched, never merged into the shared entry",
        {"mode": "standard"}, {"authorization": "Bearer x"}, {},
        [(Get, STALE_WITH_ETAG), (Acquire, 4)],
        lambda o: isinstance(o, RunApp) and o.validating is None,
    ),
    (
        "standard mode, a HEAD for a kept entry: its 200 may refresh it",
        {"mode": "standard"}, {}, {"method": "HEAD"},
        [(Get, STALE_WITH_ETAG), (Acquire, 4)],
        lambda o: isinstance(o, RunApp) and o.freshening is not None,
    ),
    (
        "standard mode, a credentialed HEAD: never refreshes the shared entry",
        {"mode": "standard"}, {"authorization": "Bearer x"},
        {"method": "HEAD"},
        [(Get, STALE_WITH_ETAG)],
        lambda o: isinstance(o, RunApp) and o.freshening is None and o.token is None,
    ),
    (
        "the short way's read is the first read",
        {}, {}, {"prefetched": True},
        [],
        lambda o: isinstance(o, Serve),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "headers", "options", "answers", "check"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_lookup_flow(
    settings: dict[str, Any],
    headers: dict[str, str],
    options: dict[str, Any],
    answers: list[Any],
    check: Check,
) -> None:
    p = policy(**settings)
    options = dict(options)
    plan = plan_of(p, options.pop("method", "GET"), **headers)
    if options.pop("prefetched", False):
        options["prefetched"] = PlainRead(plan.key, entry(1))
    _, outcome = run(flow_of(p, plan, **options), answers)
    assert check(outcome), outcome


def test_an_entry_held_in_process_needs_no_read() -> None:
    p = policy()
    plan = plan_of(p)
    held = p.on_read(plan, plan.key, entry(1), first=True)
    assert isinstance(held, Found)
    seen, outcome = run(flow_of(p, plan, local=held), [])
    assert seen == [] and isinstance(outcome, Serve)


def test_a_failed_prefetch_passes_on_without_another_read() -> None:
    p = policy()
    plan = plan_of(p)
    seen, outcome = run(flow_of(p, plan, prefetched=PlainRead(plan.key, None, DOWN)), [])
    assert seen == [] and isinstance(outcome, PassOn)


def test_the_flow_counts_what_it_decides() -> None:
    p, book = policy(), StatsBook()
    plan = plan_of(p)
    flow = lookup_flow(p, MissTrend(), book, plan, clock=lambda: NOW)
    run(flow, [(Get, None), (Claim, False), (WaitLocal, None), (Get, entry(0))])
    counts = book.drain()
    assert "coalesced" in str(counts) and "hits" in str(counts)


# -- through the adapters: a honoured no-cache request never rides another request's fill ------


def _no_cache_settings(memory_url: str) -> dict[str, Any]:
    return {
        "redis_url": memory_url,
        "honor_request_no_cache": True,
        "routes": {"/api": {"ttl": 60}},
    }


def test_a_no_cache_request_does_not_wait_for_a_fill_in_flight_asgi(memory_url: str) -> None:
    import asyncio

    import httpx

    from cache_middleware import CacheMiddleware

    release = asyncio.Event()
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(dict(scope["headers"]).get(b"cache-control", b"").decode())
        body = f"answer {len(calls)}".encode()
        if len(calls) == 1:
            await release.wait()  # the first request's fill is in flight
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    cached = CacheMiddleware(app, config=_no_cache_settings(memory_url))

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=cached)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.ensure_future(client.get("/api/x"))
            while not calls:
                await asyncio.sleep(0.001)
            fresh = await asyncio.wait_for(  # the fill in flight is not waited for
                client.get("/api/x", headers={"Cache-Control": "no-cache"}), 2
            )
            release.set()
            return await first, fresh

    first, fresh = asyncio.run(main())
    assert fresh.text == "answer 2", fresh.headers.get("cache-status")
    assert first.text == "answer 1"


def test_a_no_cache_request_does_not_wait_for_a_fill_in_flight_wsgi(memory_url: str) -> None:
    import threading

    from werkzeug.test import Client

    from cache_middleware import WSGICacheMiddleware

    release, started = threading.Event(), threading.Event()
    calls: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(1)
        body = f"answer {len(calls)}".encode()
        if len(calls) == 1:
            started.set()
            release.wait(5)  # the first request's fill is in flight
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    cached = WSGICacheMiddleware(app, config=_no_cache_settings(memory_url))
    results: dict[str, Any] = {}

    def first() -> None:
        results["first"] = Client(cached).get("/api/x")

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(5)
    fresh = Client(cached).get("/api/x", headers={"Cache-Control": "no-cache"})
    release.set()
    thread.join(5)
    assert fresh.text == "answer 2", fresh.headers.get("Cache-Status")
    assert results["first"].text == "answer 1"
