"""The package as a user gets it: build the wheel, install it in a fresh venv
(dependencies from the configured index), serve the board from that install."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.test_cli import SECRET, clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("lockerbus-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def test_wheel_holds_the_package_data_and_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    for needed in (
        "lockerbus/static/board.html",
        "lockerbus/static/board.js",
        "lockerbus/static/console.js",
        "lockerbus/static/follow.js",
        "lockerbus/py.typed",
    ):
        assert needed in names
    assert any(n.endswith("/client/__init__.py") for n in names)
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    for extra in ("redis", "client", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "Requires-Dist: python-socketio<6,>=5.18.1" in metadata


def test_fresh_install_serves_the_board(fresh_venv: Path, tmp_path: Path) -> None:
    python = fresh_venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import lockerbus; print(lockerbus.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(fresh_venv)), where.stdout + where.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [str(fresh_venv / "bin" / "lockerbus"), "serve", "--port", str(port)],
        env=clean_env(LOCKERBUS_SECRET=SECRET),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/board", timeout=5) as resp:
                    page = resp.read().decode()
                    assert resp.status == 200
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "the installed server never answered"
                time.sleep(0.1)  # polling a process we do not control
        assert "<html" in page.lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/board/board.js", timeout=5) as resp:
            assert resp.status == 200
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        log.close()


def test_client_library_imports_no_server_module(fresh_venv: Path) -> None:
    code = (
        "import sys, lockerbus.client\n"
        "bad = [m for m in ('aiohttp.web', 'lockerbus.server', 'lockerbus.app',"
        " 'lockerbus.store', 'lockerbus.http', 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
