"""A lockerbus server as a real child process: start, wait for /healthz, kill, restart.

Crash, signal, cluster and reliability tests need servers they can kill, so
those run as processes (``<venv>/bin/lockerbus serve``), not in the test's
event loop.  One class serves them all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lockerbus.auth import issue_token
from tests.support import SECRET, free_port, post_event

LOCKERBUS = Path(sys.executable).with_name("lockerbus")
START_TIMEOUT = 15.0


@dataclass
class ServerProcess:
    """One ``lockerbus serve`` on 127.0.0.1:``port``; restartable on the same port."""

    store: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # where it listens, and a command prefix (``ip netns exec NS``): tests/netns.py
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)

    # the duck-typed surface tests.support.connect() uses
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def token(self, role: str = "gateway", sub: str | None = None, ttl: float = 600) -> str:
        return issue_token(SECRET, role, sub or f"{role}-1", ttl)

    def headers(self, role: str = "gateway", sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def start(self) -> ServerProcess:
        """Start the process and return once GET /healthz answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        # only the settings given here: the suite's own LOCKERBUS_HEAVY etc. are not settings
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOCKERBUS_")}
        env = {
            **inherited,
            "LOCKERBUS_SECRET": SECRET,
            "LOCKERBUS_STORE": self.store,
            "LOCKERBUS_LOG_LEVEL": "WARNING",
            # the suite publishes far above the production default rate limit
            "LOCKERBUS_RATE_LIMIT_PER_SECOND": "1000000",
            "LOCKERBUS_RATE_LIMIT_BURST": "1000000",
            "LOCKERBUS_MAX_CONNECTIONS_PER_PRINCIPAL": "100000",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [
                    *self.wrap,
                    str(LOCKERBUS),
                    "serve",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lockerbus exited with {self.proc.returncode}:\n{self.log()}")
            if self.healthy():
                return self
            time.sleep(0.05)  # polling a process we do not control: nothing to await
        self.kill()
        raise RuntimeError(f"lockerbus did not answer /healthz in {START_TIMEOUT}s:\n{self.log()}")

    async def started(self) -> ServerProcess:
        """:meth:`start` off the event loop, for tests whose clients share it."""
        return await asyncio.to_thread(self.start)

    async def stopped(self) -> int:
        """:meth:`terminate` off the event loop (SIGKILL if it overruns); the exit status."""
        try:
            return await asyncio.to_thread(self.terminate)
        except subprocess.TimeoutExpired:
            return -9

    async def post_event(
        self, http: aiohttp.ClientSession, body: Any, role: str = "gateway", sub: str | None = None
    ) -> tuple[int, Any]:
        return await post_event(self, http, body, role, sub)

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with http.get(f"{self.url}{path}", headers=self.headers("admin")) as resp:
            return resp.status, await resp.json()

    def healthy(self) -> bool:
        """Whether GET /healthz answers 200 right now."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; what a crash or the OOM killer does."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the graceful stop; returns the exit status."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return int(self.proc.returncode)

    def status(self, key: str) -> int:
        """A figure from /proc/<pid>/status in KiB (``VmHWM``: peak RSS, ``VmRSS``: now)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def crashes(self) -> list[str]:
        """Tracebacks the server logged: a hostile client must never cause one."""
        return [line for line in self.log().splitlines() if "Traceback" in line]


async def stored_events(server: ServerProcess, namespace: str) -> tuple[list[dict[str, Any]], str]:
    """Every event ``GET /api/events`` holds for ``namespace``, paged; and the epoch."""
    events: list[dict[str, Any]] = []
    after, epoch = 0, ""
    async with aiohttp.ClientSession(headers=server.headers()) as http:
        while True:
            query = {"namespace": namespace, "after_seq": after, "limit": 1000}
            async with http.get(f"{server.url}/api/events", params=query) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            events.extend(page["events"])
            epoch = page["epoch"]
            if not page["has_more"] or not page["events"]:
                return events, epoch
            after = page["events"][-1]["seq"]
