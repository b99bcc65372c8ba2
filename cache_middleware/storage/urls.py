"""Is a `redis_url` usable? Asked when the config loads (config.py), without any I/O.

A URL that passes builds every client the stores build from it, sync and async: a typo must
stop startup with a message naming `redis_url`, not turn every cached route into a 500 (a port
that is not a number) or quietly cache on another database (`/notadb`, which redis-py reads as
database 0). The checks are redis-py's own where it has them (`parse_url`, then building the
client and a connection object, which rejects unknown query options), and the project's own
Sentinel and Cluster parsers (`sentinel_parts`, `cluster_parts`) for the URLs redis-py does not
read. Whether anything answers at that address is `cache-middleware check --connect`'s question.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url

from .redis_async import AsyncRedisStore
from .redis_cluster import CLUSTER_SCHEMES, AsyncRedisClusterStore, cluster_parts
from .redis_sync import RedisStore
from .url_parts import SENTINEL_SCHEMES, database_number, port_number, sentinel_parts

__all__ = ["check_redis_url", "database_of"]


def check_redis_url(url: str) -> None:
    """Return when the stores can build their clients from `url`; else raise ValueError saying
    what is wrong (never quoting the password). `memory://` URLs are not Redis URLs: not asked."""
    if url.startswith(CLUSTER_SCHEMES):
        _no_query(url)
        cluster_parts(url)
        _build(AsyncRedisClusterStore(url)._new_client)
    elif url.startswith(SENTINEL_SCHEMES):
        _no_query(url)
        sentinel_parts(url)
        _build(RedisStore(url)._new_client, AsyncRedisStore(url)._new_client)
    else:
        _check_single(url)
        _build(RedisStore(url)._new_client, AsyncRedisStore(url)._new_client)


def _check_single(url: str) -> None:
    """redis://, rediss:// and unix:// URLs: what redis-py would get wrong or read silently."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL names the socket: unix:///path/to/redis.sock[?db=N]")
    else:
        address = parts.netloc.rpartition("@")[2]  # the credentials are not ours to read
        after_host = address.rpartition("]")[2] if address.startswith("[") else address
        if ":" in after_host:
            port_number(after_host.rpartition(":")[2])
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if path:
            database_number(path)
            if "db=" in parts.query:
                raise ValueError("the database is given twice: in the path and as ?db=")
    try:
        options = parse_url(url)
    except ValueError as exc:  # a query option of the wrong type: redis-py names it
        raise ValueError(str(exc)) from None
    if int(options.get("db", 0)) < 0:
        raise ValueError(f"the database must be a number >= 0, got {options['db']}")


def _no_query(url: str) -> None:
    """Sentinel and Cluster URLs are read by our own parsers, which take no options: a query
    string would be ignored without a word."""
    if "?" in url:
        scheme = url.partition("://")[0]
        raise ValueError(f"{scheme}:// URLs take no ?options (they would be ignored)")


def _build(*builders: Callable[[], Any]) -> None:
    """Build each store's client as it will at its first operation, and one connection object
    (no I/O): that is where redis-py checks options (an unknown `?name=` in the query, a bad
    `ssl_cert_reqs`, a `protocol` other than 2 or 3)."""
    for build in builders:
        try:
            client = build()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:  # a Cluster client makes its nodes' connections on first use
                pool.make_connection()
        except Exception as exc:
            raise ValueError(f"redis-py cannot build a client from it: {exc}") from None


def database_of(url: str) -> int:
    """The database a checked URL's stores use (a Cluster has only database 0)."""
    if url.startswith(CLUSTER_SCHEMES):
        return 0
    sentinel = sentinel_parts(url)
    if sentinel is not None:
        return int(sentinel[2].get("db", 0))
    return int(parse_url(url).get("db", 0))
