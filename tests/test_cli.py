"""The `cache-middleware` command: `check` and `demo`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cache_middleware.cli import main

from .conftest import _free_port


def test_check_prints_route_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CACHE_REDIS_URL", raising=False)
    path = tmp_path / "cache.yaml"
    path.write_text(
        "routes:\n  /api/events: {ttl: 600}\n  /api/search: {ttl: 300, vary_by: [q, category]}\n"
        "  /api/me: {ttl: 3600, private: true}\n"
    )
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cache.yaml: OK" in out
    assert "store: memory://" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ROUTE"))
    assert lines[header].split() == ["ROUTE", "TTL", "SCOPE", "VARY_BY", "CONDITION"]
    assert lines[header + 1].split() == ["/api/events", "600", "public", "(whole", "query)", "-"]
    assert lines[header + 2].split() == ["/api/me", "3600", "private", "(whole", "query)", "-"]
    assert lines[header + 3].split() == ["/api/search", "300", "public", "q,category", "-"]


def test_check_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("routes:\n  /api/search: {ttl: -5}\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: cache.yaml: routes./api/search.ttl: must be a positive integer, got -5"
    )


def test_check_command_is_installed(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text("routes:\n  /api/x: {tll: 5}\n")
    exe = Path(sys.executable).parent / "cache-middleware"
    proc = subprocess.run([str(exe), "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "routes./api/x.tll: unknown field" in proc.stderr


def test_demo_serves_on_memory_store() -> None:
    port = _free_port()
    env = {**os.environ, "CACHE_REDIS_URL": "redis://127.0.0.1:1/0"}  # must be ignored
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache_middleware.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first
        deadline = time.monotonic() + 15
        while True:
            try:
                miss = httpx.get(f"http://127.0.0.1:{port}/api/events", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "demo server did not start"
                time.sleep(0.1)
        hit = httpx.get(f"http://127.0.0.1:{port}/api/events", timeout=2)
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
        assert hit.content == miss.content
        assert (
            httpx.get(f"http://127.0.0.1:{port}/api/tickets/availability").headers["x-cache-ttl"]
            == "30"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_check_imports_conditions_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mycond_cli_test.py").write_text("def ok(request):\n    return True\n")
    path = tmp_path / "cache.yaml"
    path.write_text('routes:\n  /r: {ttl: 5, condition: "mycond_cli_test:ok"}\n')
    exe = Path(sys.executable).parent / "cache-middleware"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(exe), "check", "cache.yaml"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "mycond_cli_test:ok" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "missing", "message"),
    [
        (
            ["demo"],
            "uvicorn",
            "error: the demo needs uvicorn: pip install 'cache-middleware[demo]'",
        ),
        (
            ["events", "consume", "--config", "cache.yaml"],
            "kombu",
            "error: the event bridge needs kombu: pip install 'cache-middleware[events]'",
        ),
    ],
)
def test_a_command_without_its_extra_names_the_extra_to_install(
    argv: list[str],
    missing: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == message
