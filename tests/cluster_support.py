"""Real lockerbus processes for the several-instances tests (contract §9)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from lockerbus.auth import issue_token
from tests.support import SECRET, free_port


class LockerbusProcess:
    """``python -m lockerbus serve`` on a free port; duck-types support.RunningServer."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.directory = directory
        self.env = {**os.environ, "LOCKERBUS_SECRET": SECRET, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / f"lockerbus-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str = "gateway", sub: str | None = None, ttl: float = 600) -> str:
        return issue_token(SECRET, role, sub or f"{role}-1", ttl)

    def headers(self, role: str = "gateway", sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def post_event(
        self, http: aiohttp.ClientSession, body: Any, role: str = "gateway", sub: str | None = None
    ) -> tuple[int, Any]:
        async with http.post(
            f"{self.url}/api/events", json=body, headers=self.headers(role, sub)
        ) as resp:
            return resp.status, await resp.json()

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        async with http.get(f"{self.url}{path}", headers=self.headers("admin")) as resp:
            return resp.status, await resp.json()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", "lockerbus", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lockerbus did not start: {self.log_text()}")
                await asyncio.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 5)
            self.process = None


async def wait_ready(http: aiohttp.ClientSession, *servers: Any, ready: bool = True) -> None:
    """Poll /readyz until every server answers as wanted (readiness has no event to await)."""
    deadline = time.monotonic() + 20
    while True:
        states = []
        for server in servers:
            try:
                async with http.get(f"{server.url}/readyz") as resp:
                    states.append(resp.status == 200)
            except aiohttp.ClientError:
                states.append(False)
        if all(state == ready for state in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"readiness never became {ready}: {states}")
        await asyncio.sleep(0.05)
