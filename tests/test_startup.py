"""Start-up failures: one line on stderr naming the setting, a distinct exit code,
and an optional bounded wait for a store that is not up yet."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lockerbus.startup import EXIT_CANNOT_LISTEN, EXIT_STORE_UNAVAILABLE, LISTEN_BACKLOG
from tests.test_cli import LOCKERBUS, SECRET, clean_env, free_port


def serve(port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(LOCKERBUS), "serve", "--port", str(port)],
        env=clean_env(LOCKERBUS_SECRET=SECRET, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_one_failure_line(stderr: str, named: str) -> None:
    assert "Traceback" not in stderr
    ours = [line for line in stderr.splitlines() if line.startswith("lockerbus: ")]
    assert len(ours) == 1, stderr
    assert ours[0].startswith(f"lockerbus: {named}: "), stderr
    assert stderr.rstrip().splitlines()[-1] == ours[0]


def test_store_that_cannot_be_opened_exits_3_naming_the_store(tmp_path: Path) -> None:
    process = serve(free_port(), LOCKERBUS_STORE=f"sqlite:///{tmp_path}/missing-dir/x.db")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_STORE_UNAVAILABLE == 3
    assert_one_failure_line(stderr, "store")
    assert "missing-dir/x.db" in stderr


def test_port_in_use_exits_4_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve(port)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_CANNOT_LISTEN == 4
    assert_one_failure_line(stderr, "port")
    assert f"127.0.0.1:{port}" in stderr


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def poll(port: int, path: str, want: int, process: subprocess.Popen[str]) -> Any:
    """GET ``path`` until it answers ``want`` (60 s at most); the body."""
    deadline = time.monotonic() + 60
    while True:
        try:
            status, body = get(port, path)
        except (urllib.error.URLError, ConnectionError):
            status, body = 0, None
        if status == want:
            return body
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never answered {want}: {status} {body}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)  # the poll interval; notices an exit at once


def listen_backlog(port: int) -> int:
    """The accept-queue size of the socket listening on ``port`` (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "LISTEN", out
    return int(out[2])


def expected_backlog() -> int:
    """LISTEN_BACKLOG as the kernel caps it (net.core.somaxconn)."""
    return min(LISTEN_BACKLOG, int(Path("/proc/sys/net/core/somaxconn").read_text()))


def test_store_wait_answers_503_until_the_store_comes(tmp_path: Path) -> None:
    port = free_port()
    directory = tmp_path / "later"
    process = serve(
        port, LOCKERBUS_STORE=f"sqlite:///{directory}/x.db", LOCKERBUS_STORE_WAIT_SECONDS="60"
    )
    try:
        body = poll(port, "/readyz", 503, process)
        assert body["status"] == "unavailable"
        assert "waiting for the store" in body["reason"]
        assert get(port, "/healthz") == (200, {"status": "ok"})
        # the stand-in, like the server, queues a fleet's reconnect storm
        assert listen_backlog(port) == expected_backlog() > 128
        directory.mkdir()
        assert poll(port, "/readyz", 200, process) == {"status": "ready"}
        assert listen_backlog(port) == expected_backlog()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_store_wait_is_bounded(tmp_path: Path) -> None:
    process = serve(
        free_port(),
        LOCKERBUS_STORE=f"sqlite:///{tmp_path}/never/x.db",
        LOCKERBUS_STORE_WAIT_SECONDS="0.5",
    )
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_STORE_UNAVAILABLE
    assert_one_failure_line(stderr, "store")
