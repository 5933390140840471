"""The lockerbus command, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import jwt
import pytest

from lockerbus.auth import ROLES, Principal, verify_token

SECRET = "cli-test-secret-that-is-long-enough-0123456789"
LOCKERBUS = Path(sys.executable).parent / "lockerbus"  # the installed console script


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any LOCKERBUS_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKERBUS_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOCKERBUS), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_console_script_is_installed() -> None:
    assert LOCKERBUS.exists(), "pip install -e . should have made the lockerbus script"


def test_token_verifies_with_the_secret() -> None:
    result = run("token", "--role", "kiosk", "--sub", "k1", env=clean_env(LOCKERBUS_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert verify_token(SECRET, token) == Principal(sub="k1", role="kiosk")


def test_token_ttl() -> None:
    args = ["token", "--role", "panel", "--sub", "p1", "--ttl", "90"]
    result = run(*args, env=clean_env(LOCKERBUS_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert time.time() + 80 < claims["exp"] <= time.time() + 91


def test_token_scope_and_current_secret() -> None:
    previous = "a-previous-secret-that-is-long-enough-000000"
    env = clean_env(LOCKERBUS_SECRET=SECRET, LOCKERBUS_PREVIOUS_SECRETS=previous)
    args = ["token", "--role", "panel", "--sub", "p1", "--scope", '{"kiosk": ["kiosk-1"]}']
    result = run(*args, env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    # signed with the current secret, never a previous one
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["scope"] == {"kiosk": ["kiosk-1"]}
    assert verify_token(SECRET, token).reach.matches({"kiosk": "kiosk-1"})
    assert not verify_token(SECRET, token).reach.matches({"kiosk": "kiosk-2"})


@pytest.mark.parametrize("scope", ['{"kiosk": []}', "not json", '{"kiosk": 3}'])
def test_token_bad_scope_is_refused(scope: str) -> None:
    args = ["token", "--role", "panel", "--sub", "p1", "--scope", scope]
    result = run(*args, env=clean_env(LOCKERBUS_SECRET=SECRET))
    assert result.returncode == 2
    assert "--scope" in result.stderr and result.stdout == ""


def test_python_dash_m_works_too() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lockerbus", "token", "--role", "admin", "--sub", "a"],
        env=clean_env(LOCKERBUS_SECRET=SECRET),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert verify_token(SECRET, result.stdout.strip()).role == "admin"


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["serve"], {"LOCKERBUS_PORT": "eighty"}, "LOCKERBUS_PORT"),
        (["serve"], {"LOCKERBUS_SECRET": "too-short"}, "LOCKERBUS_SECRET"),
        (["serve"], {"LOCKERBUS_STORE": "mysql://db"}, "LOCKERBUS_STORE"),
        (["serve", "--port", "99999"], {}, "--port"),
        (["serve", "--config", "/nonexistent/lockerbus.toml"], {}, "config"),
        (["token", "--role", "kiosk", "--sub", "k1"], {"LOCKERBUS_SECRET": "short"}, "SECRET"),
    ],
)
def test_bad_setting_exits_with_one_line_naming_it(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = run(*args, env=clean_env(**env))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_variable_warns_once_and_the_command_still_runs() -> None:
    env = clean_env(LOCKERBUS_SECRET=SECRET, LOCKERBUS_MAX_EVENTZ="1", LOCKERBUS_OOPS="2")
    result = run("token", "--role", "kiosk", "--sub", "k1", env=env)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "LOCKERBUS_MAX_EVENTZ" in line]
    assert len(warning) == 1, result.stderr
    assert "LOCKERBUS_OOPS" in warning[0]
    assert verify_token(SECRET, result.stdout.strip()).sub == "k1"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["token", "--role", "kiosk", "--sub", "k1"], "no secret"),
        (["token", "--role", "kiosk", "--sub", "k1", "--ttl", "0"], "--ttl"),
        (["token", "--role", "kiosk", "--sub", "k1", "--ttl", "nan"], "--ttl"),
        (["token", "--role", "kiosk", "--sub", "k1", "--ttl", "inf"], "--ttl"),
        (["token", "--role", "kiosk", "--sub", ""], "--sub"),
    ],
)
def test_token_refusals_are_one_line(args: list[str], said: str) -> None:
    env = clean_env() if said == "no secret" else clean_env(LOCKERBUS_SECRET=SECRET)
    result = run(*args, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert said in result.stderr


def test_unknown_role_is_refused_by_the_parser() -> None:
    result = run("token", "--role", "root", "--sub", "x", env=clean_env(LOCKERBUS_SECRET=SECRET))
    assert result.returncode == 2
    assert "root" in result.stderr


# --------------------------------------------------------------------------
# serve, for real


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A ``lockerbus serve`` process whose stderr lines (all its human output) arrive on a queue."""

    def __init__(self, port: int, env: dict[str, str], stdout: IO[str]) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [str(LOCKERBUS), "serve", "--port", str(port)],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout_path: Path | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} in {timeout}s: {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited before {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def get(self, path: str, timeout: float = 15) -> tuple[int, Any]:
        """GET ``path``, polling until the server answers (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}{path}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except (urllib.error.URLError, ConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer in {timeout}s: {exc}") from exc
                # the wait doubles as the poll interval and notices a dead server at once
                try:
                    code = self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    continue
                raise AssertionError(f"server exited with {code}: {self.seen}") from exc

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
            raise AssertionError("server did not stop on SIGTERM within 15 s") from None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """A factory starting ``lockerbus serve`` on a free port; every server is stopped after."""
    servers: list[Server] = []
    logs: list[IO[str]] = []

    def start(**env: str) -> Server:
        log = (tmp_path / f"stdout-{len(logs)}.log").open("w")
        logs.append(log)
        server = Server(free_port(), clean_env(**env), log)
        server.stdout_path = tmp_path / f"stdout-{len(logs) - 1}.log"
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for log in logs:
        log.close()


def test_serve_in_dev_mode_prints_tokens_and_answers_healthz(serve: Any) -> None:
    server = serve()
    line = server.wait_for_line("serving on", timeout=60)
    assert f"http://127.0.0.1:{server.port}" in line
    output = "\n".join(server.seen)
    assert "DEV MODE" in output
    for role in ROLES:
        token_lines = [x for x in server.seen if x.strip().startswith(role)]
        assert len(token_lines) == 1, output
        token = token_lines[0].rsplit(" ", 1)[-1]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["role"] == role
    status, body = server.get("/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert server.stop() == 0
    # human output goes to stderr; stdout stays empty
    assert server.stdout_path is not None
    assert server.stdout_path.read_text() == ""


def test_json_log_format_writes_one_object_per_line(serve: Any) -> None:
    server = serve(LOCKERBUS_SECRET=SECRET, LOCKERBUS_LOG_FORMAT="json", LOCKERBUS_ACCESS_LOG="1")
    server.wait_for_line("serving on", timeout=60)
    assert server.get("/healthz") == (200, {"status": "ok"})
    server.wait_for_line("lockerbus.access", timeout=30)
    assert server.stop() == 0
    records = []
    for line in server.seen:
        if line.startswith("lockerbus serving on"):
            continue
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    loggers = {record["logger"] for record in records}
    assert "lockerbus.app" in loggers
    access = [r for r in records if r["logger"] == "lockerbus.access"]
    assert any("GET /healthz" in r["message"] for r in access), access


def test_access_log_is_off_by_default(serve: Any) -> None:
    server = serve(LOCKERBUS_SECRET=SECRET)
    server.wait_for_line("serving on", timeout=60)
    assert server.get("/healthz") == (200, {"status": "ok"})
    assert server.stop() == 0
    server.lines.put(None)
    with pytest.raises(AssertionError):
        server.wait_for_line("GET /healthz", timeout=5)


def test_serve_with_a_secret_prints_no_tokens(serve: Any) -> None:
    server = serve(LOCKERBUS_SECRET=SECRET)
    server.wait_for_line("serving on", timeout=60)
    assert not any("DEV MODE" in line for line in server.seen)
    assert server.get("/healthz") == (200, {"status": "ok"})


def test_config_prints_effective_settings_with_sources_and_no_secrets(tmp_path: Path) -> None:
    import tomllib

    toml = tmp_path / "lockerbus.toml"
    toml.write_text('[lockerbus]\nmax_events = 77\nadmin_password = "hunter2-hunter2"\n')
    env = clean_env(
        LOCKERBUS_SECRET=SECRET,
        LOCKERBUS_STORE="redis://user:s3cret-pw@redis.example:6379/0",
        LOCKERBUS_MESSAGE_QUEUE="redis://user:s3cret-pw@redis.example:6379/0",
    )
    result = run("config", "--config", str(toml), "--port", "9123", env=env)
    assert result.returncode == 0, result.stderr
    for secret in (SECRET, "s3cret-pw", "hunter2-hunter2"):
        assert secret not in result.stdout
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    assert lines["port"].endswith("# flag")
    assert lines["max_events"].endswith("# file")
    assert lines["secret"].endswith("# env")
    assert lines["host"].endswith("# default")
    # what it prints is TOML a reader can load again
    parsed = tomllib.loads(result.stdout)["lockerbus"]
    assert parsed["port"] == 9123
    assert parsed["max_events"] == 77
    assert parsed["store"] == "redis://user:<redacted>@redis.example:6379/0"
    assert parsed["secret"] == "<redacted>"


def test_config_check_passes_a_good_configuration() -> None:
    result = run("config", "--check", env=clean_env(LOCKERBUS_SECRET=SECRET))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "valid" in result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"LOCKERBUS_PORT": "eighty"},
        {"LOCKERBUS_SECRET": "short"},
        {"LOCKERBUS_MAX_SEND_QUEUE": "10"},
    ],
)
def test_config_check_fails_a_bad_configuration(env: dict[str, str]) -> None:
    result = run("config", "--check", env=clean_env(**env))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert next(iter(env)) in result.stderr or "replay_buffer_size" in result.stderr


def test_state_rebuild_folds_the_history_into_the_state(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from lockerbus.store.sqlite import SqliteEventStore
    from tests.storekit import help_event, locker_event

    path = tmp_path / "events.db"

    async def fill() -> None:
        async with SqliteEventStore(path) as store:
            await store.append(locker_event("k1", "L1", "open"))
            await store.append(help_event(12))

    asyncio.run(fill())
    with sqlite3.connect(path) as conn:  # a restore that brought back events but no state
        conn.execute("DELETE FROM state")
    result = run("state", "rebuild", "--store", f"sqlite:///{path}", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "2 entries" in result.stdout
    with sqlite3.connect(path) as conn:
        kinds = sorted(kind for (kind,) in conn.execute("SELECT kind FROM state"))
    assert kinds == ["help", "lockers"]
