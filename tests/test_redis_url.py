"""Every redis_url is checked when the config loads (issue #16, point 3): a URL the stores could
not use, or would read as something else, is a ConfigError naming `redis_url` (and the
environment when CACHE_REDIS_URL gave it); a URL that passes builds every client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cache_middleware import ConfigError, load_config
from cache_middleware.cli import main
from cache_middleware.storage import make_async_store, make_sync_store

BAD = [
    # (url, what the message must say)
    ("redis://127.0.0.1:notaport/0", "the port 'notaport'"),
    ("redis://127.0.0.1:6379/notadb", "the database 'notadb' is not a number"),
    ("redis://127.0.0.1:99999/0", "the port '99999'"),
    ("redis://127.0.0.1:0/0", "the port '0'"),
    ("redis://127.0.0.1:6379/0/1", "the database '0/1'"),
    ("redis://127.0.0.1:6379/-1", "the database '-1'"),
    ("redis://127.0.0.1:6379/0?db=3", "the database is given twice"),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ("redis://127.0.0.1:6379/0?no_such_option=1", "no_such_option"),
    ("redis://127.0.0.1:6379/0?protocol=9", "protocol"),
    ("rediss://127.0.0.1:notaport/0", "the port 'notaport'"),
    ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=bogus", "ssl"),
    ("rediss://127.0.0.1:6379/db1", "the database 'db1'"),
    ("unix://", "names the socket"),
    ("unix:///run/redis.sock?db=one", "'db'"),
    ("unix:///run/redis.sock?db=-2", "the database must be a number >= 0"),
    ("redis+sentinel://s1:26379,s2:notaport/mymaster/0", "the port 'notaport'"),
    ("redis+sentinel://s1:26379/mymaster/notadb", "the database 'notadb'"),
    ("redis+sentinel://s1:26379", "service_name"),
    ("redis+sentinel://s1:26379/mymaster/0?socket_timeout=1", "take no ?options"),
    ("rediss+sentinel://s1:70000/mymaster", "the port '70000'"),
    ("redis+cluster://n1:6379,n2:notaport", "the port 'notaport'"),
    ("redis+cluster://n1:6379/3", "database 0 only"),
    ("redis+cluster://", "host:port"),
    ("rediss+cluster://n1:6379?ssl_cert_reqs=none", "take no ?options"),
]

GOOD = [
    "redis://127.0.0.1:6379/15",
    "redis://127.0.0.1/2",
    "redis://localhost",
    "redis://user:s3cret@127.0.0.1:6380/0?socket_keepalive=true",
    "redis://[::1]:6379/1",
    "rediss://cache.example:6380/0?ssl_cert_reqs=none",
    "unix:///run/redis.sock?db=3",
    "redis+sentinel://s1:26379,s2:26380/mymaster/3",
    "rediss+sentinel://app:pw@s1/mymaster",
    "redis+cluster://n1:6379,n2:6379",
    "rediss+cluster://app:pw@n1:6379/0",
    "memory://",
    "memory://named",
]


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)


def _yaml(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "cache.yaml"
    path.write_text(f'redis_url: "{url}"\nroutes:\n  /api: {{ttl: 60}}\n')
    return path


@pytest.mark.parametrize(("url", "why"), BAD, ids=[u for u, _ in BAD])
def test_bad_url_is_a_config_error_naming_file_and_field(
    tmp_path: Path, url: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_yaml(tmp_path, url))
    message = str(caught.value)
    assert message.startswith("cache.yaml: redis_url: "), message
    assert why in message


@pytest.mark.parametrize(("url", "why"), BAD, ids=[u for u, _ in BAD])
def test_bad_url_from_the_environment_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, why: str
) -> None:
    monkeypatch.setenv("CACHE_REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_config(_yaml(tmp_path, "redis://127.0.0.1:6379/0"))  # the file's own is fine
    message = str(caught.value)
    assert message.startswith(
        "cache.yaml: redis_url (from the environment variable CACHE_REDIS_URL): "
    ), message
    assert why in message


def test_env_url_with_a_foreign_scheme_says_it_came_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CACHE_REDIS_URL", "http://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"redis_url \(from the environment variable"):
        load_config({})


def test_the_password_never_appears_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"redis_url": "redis://app:hunter2@127.0.0.1:notaport/0"})
    assert "hunter2" not in str(caught.value)
    assert "***@127.0.0.1:notaport" in str(caught.value)


@pytest.mark.parametrize("url", GOOD)
def test_a_url_that_passes_builds_every_client(url: str) -> None:
    """What the check lets through, the stores can build their clients from (no I/O)."""
    settings = load_config({"redis_url": url, "routes": {"/api": {"ttl": 60}}})
    assert settings.redis_url == url
    if not settings.uses_redis:
        return
    sync_store: Any = make_sync_store(settings)
    async_store: Any = make_async_store(settings)
    if "+cluster://" not in url:  # the blocking Cluster client reads the topology when built
        client = sync_store._new_client()
        client.connection_pool.make_connection()
        client.close()
    async_client = async_store._new_client()
    pool = getattr(async_client, "connection_pool", None)
    if pool is not None:
        pool.make_connection()


def test_check_command_rejects_the_issue_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for url, why in BAD[:2]:
        assert main(["check", str(_yaml(tmp_path, url))]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cache.yaml: redis_url: ")
        assert why in err
        assert "\n" not in err  # one line, no traceback


def test_check_command_in_a_real_process_reads_the_environment(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "cache-middleware"
    env = {"CACHE_REDIS_URL": "redis://127.0.0.1:6379/notadb", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(exe), "check", str(_yaml(tmp_path, "redis://127.0.0.1:6379/0"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: cache.yaml: redis_url (from the environment variable CACHE_REDIS_URL): "
        "the database 'notadb' is not a number (0, 1, 2...) in 'redis://127.0.0.1:6379/notadb'"
    )
