"""A real ``lockerbus serve`` process on a free 127.0.0.1 port, for crash and signal tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lockerbus.auth import issue_token
from tests.support import SECRET, free_port

LOCKERBUS = str(Path(sys.executable).with_name("lockerbus"))


@dataclass
class ServerProcess:
    """One ``lockerbus serve`` subprocess and the settings it was started with."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str = "gateway", sub: str | None = None) -> str:
        return issue_token(SECRET, role, sub or f"{role}-1", 600)

    def headers(self, role: str = "gateway", sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def start(self, timeout: float = 20.0) -> None:
        env = {**os.environ, "LOCKERBUS_SECRET": SECRET, **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            LOCKERBUS,
            "serve",
            "--port",
            str(self.port),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.ensure_future(self._collect())
        async with aiohttp.ClientSession() as http:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError("server exited at start:\n" + "".join(self.output))
                try:
                    async with http.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("server did not answer /healthz:\n" + "".join(self.output))
                await asyncio.sleep(0.05)  # polling a process that is starting: nothing to await

    async def _collect(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))

    async def signal(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def events(self, http: aiohttp.ClientSession, namespace: str) -> list[dict[str, Any]]:
        """Every held event of ``namespace``, paging through GET /api/events."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            params = {"namespace": namespace, "after_seq": str(after), "limit": "1000"}
            async with http.get(
                f"{self.url}/api/events", params=params, headers=self.headers()
            ) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            out.extend(page["events"])
            if not page["has_more"]:
                return out
            after = page["last_seq"]
