"""A bad cache.yaml stops startup, on every server's defaults (DESIGN invariant 5).

Starlette and FastAPI build their middleware on the first call, the lifespan scope: the
middleware keeps a refused config and answers that scope with `lifespan.startup.failed` and
the one-line message, so the server stops instead of serving 500s. Checked by running the real
servers (tests/apps_startup/ holds the import targets), and in process with the frameworks' own
test clients. Flask under gunicorn refuses to boot because the WSGI middleware raises at import.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cache_middleware import CacheMiddleware, ConfigError, WSGICacheMiddleware

from .conftest import _free_port

ROOT = Path(__file__).resolve().parent.parent
BAD = "routes:\n  /cached: {ttl: -5}\n"
GOOD = "routes:\n  /cached: {ttl: 60}\n"
# The one line a user must see: the file, the route, the field.
MESSAGE = "cache.yaml: routes./cached.ttl: must be a positive integer, got -5"
STARTUP_TIMEOUT = 30  # a bad config must stop the server well within this


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cache.yaml"
    path.write_text(text)
    return path


def _env(config: Path) -> dict[str, str]:
    return {
        **os.environ,
        "STARTUP_CACHE_YAML": str(config),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def _server(name: str, target: str, port: int, *extra: str) -> list[str]:
    """The command line of `name` on its defaults, serving `target` on `port`."""
    module = f"tests.apps_startup.{target}:app"
    if name == "uvicorn":
        return [sys.executable, "-m", "uvicorn", module, "--port", str(port), *extra]
    if name == "hypercorn":
        return [sys.executable, "-m", "hypercorn", module, "--bind", f"127.0.0.1:{port}", *extra]
    # gunicorn with the worker class in `extra` (-k ...)
    return [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *extra, module]


def _run_until_exit(command: list[str], config: Path) -> tuple[int, str]:
    """Runs a server that must stop by itself; (exit code, stderr)."""
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=_env(config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=STARTUP_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{command[2]} kept running on a bad config:\n{stderr}")
    return done.returncode, done.stderr


class _Running:
    """A server that is meant to start: up until the test is done with it."""

    def __init__(self, command: list[str], config: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_env(config),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> _Running:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited:\n{self.stderr()}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"the server never answered:\n{self.stderr()}")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# -- real servers, a bad config -------------------------------------------------------------


@pytest.mark.parametrize("target", ["starlette_app", "fastapi_app", "pure_asgi_app"])
def test_uvicorn_refuses_to_start(tmp_path: Path, target: str) -> None:
    """uvicorn's default lifespan ("auto") once took the error for "lifespan unsupported",
    printed "Application startup complete" and answered every request with a 500."""
    code, stderr = _run_until_exit(_server("uvicorn", target, _free_port()), _config(tmp_path, BAD))
    assert code != 0
    assert MESSAGE in stderr
    assert "Application startup complete" not in stderr
    assert "appears unsupported" not in stderr


@pytest.mark.parametrize(
    "worker", ["uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornWorker"]
)
def test_gunicorn_with_uvicorn_workers_refuses_to_start(tmp_path: Path, worker: str) -> None:
    code, stderr = _run_until_exit(
        _server("gunicorn", "starlette_app", _free_port(), "-k", worker),
        _config(tmp_path, BAD),
    )
    assert code != 0
    assert MESSAGE in stderr
    assert "Worker failed to boot" in stderr


def test_hypercorn_refuses_to_start(tmp_path: Path) -> None:
    """hypercorn's worker process fails with the message and the server stops. With its default
    of one worker process, hypercorn 0.18 then exits 0 all the same (its own bug: the final
    join overwrites the worker's exit code, pgjones/hypercorn#269): what it prints and that it
    stops is ours to check; the code is checked where hypercorn keeps it, `--workers 0`."""
    config = _config(tmp_path, BAD)
    _, stderr = _run_until_exit(_server("hypercorn", "starlette_app", _free_port()), config)
    assert MESSAGE in stderr
    code, stderr = _run_until_exit(
        _server("hypercorn", "fastapi_app", _free_port(), "--workers", "0"), config
    )
    assert code != 0
    assert MESSAGE in stderr


def test_without_lifespan_the_first_request_raises_the_error(tmp_path: Path) -> None:
    """A server that runs no lifespan: every request, cached route or not, raises the
    ConfigError (a 500 whose traceback ends with the one-line message)."""
    port = _free_port()
    server = _Running(
        _server("uvicorn", "starlette_app", port, "--lifespan", "off"),
        _config(tmp_path, BAD),
        port,
    )
    with server:
        assert server.get("/other").status_code == 500
        assert server.get("/cached").status_code == 500
        stderr = server.stderr()
    assert f"ConfigError: {MESSAGE}" in stderr


def test_flask_under_gunicorn_refuses_to_boot(tmp_path: Path) -> None:
    code, stderr = _run_until_exit(
        _server("gunicorn", "flask_app", _free_port()), _config(tmp_path, BAD)
    )
    assert code != 0
    assert MESSAGE in stderr


# -- real servers, a good config: the same apps serve and cache -----------------------------


@pytest.mark.parametrize(
    ("name", "target", "extra"),
    [
        ("uvicorn", "starlette_app", ()),
        ("uvicorn", "pure_asgi_app", ()),
        ("hypercorn", "fastapi_app", ()),
        ("gunicorn", "starlette_app", ("-k", "uvicorn_worker.UvicornWorker")),
    ],
)
def test_a_good_config_starts_and_caches(
    tmp_path: Path, name: str, target: str, extra: tuple[str, ...]
) -> None:
    port = _free_port()
    with _Running(_server(name, target, port, *extra), _config(tmp_path, GOOD), port) as server:
        first, second = server.get("/cached"), server.get("/cached")
        assert (first.status_code, second.status_code) == (200, 200)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")


# -- in process ------------------------------------------------------------------------------


def _starlette_app(config: Any, events: list[str] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if events is not None:
            events.append("startup")
        yield

    app = Starlette(routes=[Route("/cached", hello)], lifespan=lifespan)
    app.add_middleware(CacheMiddleware, config=config)
    return app


def test_starlette_test_client_raises_at_startup(tmp_path: Path) -> None:
    events: list[str] = []
    app = _starlette_app(str(_config(tmp_path, BAD)), events)
    with pytest.raises(ConfigError, match=f"^{MESSAGE}$"), TestClient(app):
        pass
    assert events == []  # the app's own startup never ran on a config the cache refused


def test_starlette_test_client_starts_the_app_on_a_good_config(tmp_path: Path) -> None:
    events: list[str] = []
    app = _starlette_app(str(_config(tmp_path, GOOD)), events)
    with TestClient(app) as client:
        assert events == ["startup"]
        assert client.get("/cached").headers["x-cache"] == "MISS"
        assert client.get("/cached").headers["x-cache"] == "HIT"


def test_fastapi_add_middleware_raises_at_startup(tmp_path: Path) -> None:
    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(CacheMiddleware, config=str(_config(tmp_path, BAD)))
    with pytest.raises(ConfigError, match=f"^{MESSAGE}$"), TestClient(app):
        pass


async def test_direct_construction_keeps_the_error_for_startup() -> None:
    """`CacheMiddleware(app, config=bad)` does not raise (a framework may be building it inside
    its first call); the error is `config_error`, the lifespan startup fails with it, and any
    request raises it."""
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    mw = CacheMiddleware(inner, config={"routes": {"/cached": {"ttl": -5}}})
    assert isinstance(mw.config_error, ConfigError)
    message = "<dict>: routes./cached.ttl: must be a positive integer, got -5"
    assert str(mw.config_error) == message

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    with pytest.raises(ConfigError):
        await mw({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed", "message": message}]

    transport = httpx.ASGITransport(app=mw)  # runs no lifespan, as some servers do not
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/cached", "/elsewhere"):
            with pytest.raises(ConfigError, match=f"^{message}$"):
                await client.get(path)
        with pytest.raises(ConfigError):
            await mw({"type": "websocket", "path": "/ws"}, receive, send)
    assert calls == []  # the app is never reached through a refused config


def test_wsgi_construction_raises() -> None:
    """WSGI has no startup protocol: the middleware is built at import, and raises there."""
    with pytest.raises(ConfigError, match=r"^<dict>: routes\./cached\.ttl: must be a positive"):
        WSGICacheMiddleware(lambda e, s: [], config={"routes": {"/cached": {"ttl": -5}}})
