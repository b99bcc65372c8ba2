"""Redis URLs read by the project itself: Sentinel URLs (redis-py has no reader for them), the
connection facts of the lean connections, and the URL as log lines may show it.

Shared by the single-server stores, the Cluster stores and the config check (urls.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from redis.asyncio.connection import parse_url

__all__ = [
    "SENTINEL_SCHEMES",
    "database_number",
    "host_port",
    "pipelined_params",
    "port_number",
    "safe_url",
    "sentinel_kwargs",
    "sentinel_parts",
    "split_credentials",
]


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]] | None:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` ->
    (sentinel addresses, service name, master connection kwargs); None for other schemes.

    The credentials and the db are the master's (and its replicas'); the sentinels are asked
    without a password. `rediss+sentinel://` speaks TLS to the sentinels and the master."""
    if not url.startswith(SENTINEL_SCHEMES):
        return None
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    netloc, kwargs = split_credentials(netloc)
    nodes = [host_port(part, 26379) for part in netloc.split(",") if part]
    parts = [p for p in path.split("/") if p]
    if not nodes or not parts or len(parts) > 2:
        raise ValueError(
            f"{scheme}:// URLs read {scheme}://host:port[,host:port...]/service_name[/db]"
        )
    service = unquote(parts[0])
    if len(parts) == 2:
        kwargs["db"] = database_number(parts[1])
    if scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return nodes, service, kwargs


def split_credentials(netloc: str) -> tuple[str, dict[str, Any]]:
    """`user:password@hosts` -> (hosts, {"username": ..., "password": ...}), percent-decoded;
    a bare `secret@hosts` is a password, as in `redis://secret@host`."""
    kwargs: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
            if user:
                kwargs["username"] = unquote(user)
        elif user:
            kwargs["password"] = unquote(user)
    return netloc, kwargs


def host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    return unquote(host) or "localhost", port_number(port) if port else default_port


def port_number(text: str) -> int:
    """A TCP port from a URL, or a ValueError that says which part of the URL is wrong."""
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"the port {text!r} is not a number from 1 to 65535")
    return int(text)


def database_number(text: str) -> int:
    """A Redis database number from a URL's path: redis-py would silently use database 0 for
    `/notadb`, and a cache on the wrong database serves and invalidates the wrong entries."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"the database {text!r} is not a number (0, 1, 2...)")
    return int(text)


def sentinel_kwargs(store_kwargs: dict[str, Any], url_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection options for the sentinels themselves: our timeouts, TLS if the URL says so."""
    out = {k: v for k, v in store_kwargs.items() if k.startswith("socket_")}
    if url_kwargs.get("ssl"):
        out["ssl"] = True
    return out


def pipelined_params(url: str, timeout: float) -> dict[str, Any] | None:
    """Connection facts for the pipelined GET, or None when the URL needs redis-py (TLS,
    unix sockets, Sentinel, Cluster, extra options)."""
    if not url.startswith("redis://"):
        return None
    try:
        params = parse_url(url)
    except ValueError:
        return None
    if set(params) - {"host", "port", "db", "username", "password"}:
        return None
    return {
        "host": params.get("host", "localhost"),
        "port": int(params.get("port", 6379)),
        "db": int(params.get("db", 0)),
        "username": params.get("username"),
        "password": params.get("password"),
        "timeout": timeout,
    }


def safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
