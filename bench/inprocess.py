"""What one request costs in process, with no server and no load generator.

    python bench/inprocess.py [--redis-url redis://127.0.0.1:6379/14] [--requests 10000]

Calls the ASGI apps of `compare.py` directly, one request after another on one event loop, with
a `send` that does to the response what uvicorn's httptools protocol does to it (its own two
regular expressions over every header name and value, lower-casing, joining), and reports the
fastest of several interleaved batches per variant, in microseconds per request. It also times
that header handling alone for the headers each variant answers with: the part of a response's
cost that grows with its number of headers, which the static endpoint (2 headers) and a cache
HIT (the contract's headers and ours) do not share.

Under wrk the same requests cost more (parsing, the event loop, system calls, and on a small
machine the CPU wrk and Redis take), but that part is the same for every variant: these figures
are the difference between two variants, measured without the noise of a loaded machine.
`compare.py` runs this first and quotes it when it explains a target it missed.

`--miss` measures a MISS the same way, but as the server sees it: 64 requests at once on one
event loop (so the fill scripts of many requests share a socket write, as under load), every
request a new query value, and CPU time rather than wall time (the round trips' waiting is not
this process's cost). Against the bare view under the same queries, the difference is what the
MISS path costs this process per request: key, lookup-and-lease, recording, encoding, store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import EVENTS_PATH, static_app
from compare_apps import (
    ENV_KEY_PREFIX,
    ENV_REDIS_URL,
    cached_miss_app,
    cached_near_app,
    cached_unmatched_app,
    nocache_app,
)
from harness import delete_bench_keys, installed
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

# name -> (factory, what)
VARIANTS: dict[str, tuple[Callable[[], Any], str]] = {
    "static": (static_app, "Starlette, fixed bytes"),
    "near": (cached_near_app, "cache-middleware, near-cache HIT"),
    "nocache": (nocache_app, "Starlette view, no cache"),
    "unmatched": (cached_unmatched_app, "cache-middleware, path matches no route"),
}
BATCHES = 7


def uvicorn_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The header block uvicorn's httptools protocol writes, with its checks (the loop of
    `HttpToolsProtocol.send`, with uvicorn's own regular expressions)."""
    content = []
    for name, value in headers:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        name = name.lower()
        content.extend([name, b": ", value, b"\r\n"])
    return b"".join(content)


class Exchange:
    """One request's ASGI messages; keeps the last response's headers and body."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": EVENTS_PATH,
            "raw_path": EVENTS_PATH.encode(),
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000")],
            "state": {},
        }

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.headers = list(message.get("headers", []))
            uvicorn_headers(self.headers)
        else:
            self.body = message.get("body", b"")


async def run_batch(app: Any, exchange: Exchange, requests: int) -> float:
    scope, receive, send = exchange.scope, exchange.receive, exchange.send
    started = time.perf_counter()
    for _ in range(requests):
        await app(scope(), receive, send)
    return (time.perf_counter() - started) / requests * 1e6


def _header_us(headers: list[tuple[bytes, bytes]], requests: int) -> float:
    best = float("inf")
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(requests):
            uvicorn_headers(headers)
        best = min(best, (time.perf_counter() - started) / requests * 1e6)
    return best


async def _measure(names: list[str], requests: int) -> dict[str, dict[str, Any]]:
    apps = {name: VARIANTS[name][0]() for name in names}
    exchanges = {name: Exchange() for name in names}
    for name in names:
        # The first request fills the entry; the near-cache keeps copies only once its
        # invalidation stream is confirmed, so wait for a HIT served without Redis.
        deadline = time.monotonic() + 10
        while True:
            await apps[name](exchanges[name].scope(), exchanges[name].receive, exchanges[name].send)
            state = dict(exchanges[name].headers).get(b"x-cache")
            if name != "near" or (state == b"HIT" and near_hits() > 0):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: no near-cache HIT within 10 s (got {state!r})")
            await asyncio.sleep(0.05)
        await run_batch(apps[name], exchanges[name], 500)  # warm the memos
    runs: dict[str, list[float]] = {name: [] for name in names}
    for batch in range(BATCHES):
        order = names if batch % 2 == 0 else names[::-1]
        for name in order:
            runs[name].append(await run_batch(apps[name], exchanges[name], requests))
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        headers = exchanges[name].headers
        results[name] = {
            "label": VARIANTS[name][1],
            "us_per_request": min(runs[name]),
            "us_median": sorted(runs[name])[len(runs[name]) // 2],
            "headers": len(headers),
            "header_names": [n.decode("latin-1") for n, _ in headers],
            "header_us": _header_us(headers, requests),
            "x_cache": (dict(headers).get(b"x-cache") or b"").decode(),
        }
    return results


def near_hits() -> int:
    """HITs served by this process's near-caches so far."""
    from cache_middleware.storage import tracking

    return sum(near.hits for near, _ in tracking._shared.values())


MISS_CONCURRENCY = 64


async def run_miss_batch(
    app: Any, run: str, requests: int, exchange_type: type[Exchange] = Exchange
) -> float:
    """CPU microseconds per request of `requests` unique-query GETs, MISS_CONCURRENCY at once."""

    async def client(number: int) -> None:
        exchange = exchange_type()
        for i in range(requests // MISS_CONCURRENCY):
            scope = exchange.scope()
            scope["query_string"] = f"n={run}-{number}-{i}".encode()
            await app(scope, exchange.receive, exchange.send)

    started = time.process_time()
    await asyncio.gather(*(client(n) for n in range(MISS_CONCURRENCY)))
    done = requests // MISS_CONCURRENCY * MISS_CONCURRENCY
    return (time.process_time() - started) / done * 1e6


async def _measure_miss(requests: int) -> dict[str, float]:
    apps = {"nocache": nocache_app(), "miss": cached_miss_app()}
    run = secrets.token_hex(4)
    for app in apps.values():
        await run_miss_batch(app, f"{run}w", 2 * MISS_CONCURRENCY * 10)  # connect, warm the memos
    runs: dict[str, list[float]] = {name: [] for name in apps}
    for batch in range(5):
        order = list(apps) if batch % 2 == 0 else list(apps)[::-1]
        for name in order:
            runs[name].append(await run_miss_batch(apps[name], f"{run}b{batch}", requests))
    exchange = Exchange()
    scope = exchange.scope()
    scope["query_string"] = f"n={run}-check".encode()
    await apps["miss"](scope, exchange.receive, exchange.send)
    if dict(exchange.headers).get(b"x-cache") != b"MISS":
        raise SystemExit(f"miss: expected X-Cache: MISS, got {exchange.headers!r}")
    return {name: min(values) for name, values in runs.items()}


def measure_miss_in_process(redis_url: str, requests: int = 10_000) -> dict[str, Any]:
    """CPU microseconds per request, in process, of the bare view and of a MISS that fills
    (fastest of 5 interleaved batches, MISS_CONCURRENCY requests at once, unique queries)."""
    loop = "uvloop" if installed("uvloop") else "asyncio"
    with _bench_redis(redis_url):
        if loop == "uvloop":  # as the servers run (harness.uvicorn_flags)
            import uvloop

            results = uvloop.run(_measure_miss(requests))
        else:
            results = asyncio.run(_measure_miss(requests))
    return {
        "nocache_us": results["nocache"],
        "miss_us": results["miss"],
        "concurrency": MISS_CONCURRENCY,
        "requests": requests,
        "loop": loop,
    }


def measure_in_process(
    redis_url: str, names: list[str] | None = None, requests: int = 10_000
) -> dict[str, dict[str, Any]]:
    """Per-request microseconds of each variant in process (fastest batch), with the share its
    response headers cost uvicorn. Uses `redis_url` under a throwaway key prefix."""
    with _bench_redis(redis_url):
        return asyncio.run(_measure(names or list(VARIANTS), requests))


@contextlib.contextmanager
def _bench_redis(redis_url: str) -> Iterator[None]:
    """The apps of compare_apps.py on `redis_url` under a throwaway key prefix, for the block;
    the environment put back and the keys deleted after it."""
    prefix = f"bench:inproc:{secrets.token_hex(4)}"
    saved = {key: os.environ.get(key) for key in (ENV_REDIS_URL, ENV_KEY_PREFIX)}
    os.environ[ENV_REDIS_URL], os.environ[ENV_KEY_PREFIX] = redis_url, prefix
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        delete_bench_keys(redis_url, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--requests", type=int, default=10_000, help="requests per batch")
    parser.add_argument("--only", default="", help="comma-separated variants")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--miss", action="store_true", help="measure a MISS that fills instead (see above)"
    )
    args = parser.parse_args(argv)
    if args.miss:
        miss = measure_miss_in_process(args.redis_url, args.requests)
        if args.json:
            print(json.dumps(miss, indent=2))
            return 0
        print(
            f"CPU us per request, {miss['concurrency']} at once, unique queries: bare view "
            f"{miss['nocache_us']:.1f}, MISS {miss['miss_us']:.1f}: the MISS path costs "
            f"{miss['miss_us'] - miss['nocache_us']:.1f} us per request in process"
        )
        return 0
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    results = measure_in_process(args.redis_url, names, args.requests)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'variant':<11} {'us/request':>10} {'median':>8} {'headers':>8} {'of which':>9}")
    for name, r in results.items():
        print(
            f"{name:<11} {r['us_per_request']:>10.2f} {r['us_median']:>8.2f} {r['headers']:>8} "
            f"{r['header_us']:>7.2f}us  {r['label']}"
        )
    print("\n'of which': uvicorn's checks and joining of the response headers alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
