"""Each example runs briefly against a real server and prints what it should."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from lockerbus.client import KioskClient
from tests.support import SECRET, WAIT, locker_event

EXAMPLES = Path(__file__).parent.parent / "examples"


class Example:
    """An example script in a subprocess, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, name: str, *args: str) -> Example:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / name),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def expect(self, pattern: str) -> str:
        """The first line (seen or to come) matching ``pattern``."""
        regex = re.compile(pattern)

        async def read() -> str:
            for line in self.lines:
                if regex.search(line):
                    return line
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"{pattern!r} never printed:\n" + "\n".join(self.lines))
                line = raw.decode().rstrip()
                self.lines.append(line)
                if regex.search(line):
                    return line

        return await asyncio.wait_for(read(), WAIT)

    async def finish(self) -> str:
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), WAIT)
        self.lines.extend(rest.decode().splitlines())
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        output = "\n".join(self.lines)
        assert code == 0, output
        return output

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_kiosk_simulator_with_the_dev_mode_kiosk_token(server, http) -> None:
    # README: dev mode prints a kiosk token (sub kiosk-1); the simulator runs as that kiosk
    sim = await Example.start(
        "kiosk_simulator.py",
        "--url", server.url, "--token", server.token("kiosk", "kiosk-1"),
        "--interval", "0.1", "--duration", "1",
    )  # fmt: skip
    try:
        await sim.expect(r"^kiosk-1 connected=True")
        output = await sim.finish()
    finally:
        sim.kill()
    assert re.search(r"^simulator done: 1 kiosks, [1-9]\d* events$", output, re.M)
    assert "rejected" not in output.replace("0 rejected", "")


async def test_kiosk_simulator_refuses_a_panel_token(server) -> None:
    sim = await Example.start("kiosk_simulator.py", "--token", server.token("panel", "p"))
    try:
        await sim.expect(r"must be a kiosk token")
        assert await asyncio.wait_for(sim.proc.wait(), 30) == 2
    finally:
        sim.kill()


async def test_kiosk_simulator(server, http) -> None:
    sim = await Example.start(
        "kiosk_simulator.py",
        "--url", server.url, "--secret", SECRET,
        "--kiosks", "2", "--interval", "0.1", "--duration", "2",
    )  # fmt: skip
    try:
        await sim.expect(r"^kiosk-1 connected=True")
        await sim.expect(r"^kiosk-2 connected=True")
        async with http.post(
            f"{server.url}/api/commands",
            json={"type": "status_check", "kioskId": "kiosk-2"},
            headers=server.headers("panel"),
        ) as resp:
            assert resp.status == 201
            result = (await resp.json())["data"]["result"]
        assert result["success"] is True
        assert set(result["response_data"]["states"]) == {f"L{n}" for n in range(1, 7)}
        await sim.expect(r"^kiosk-2 command status_check")
        output = await sim.finish()
    finally:
        sim.kill()
    assert re.search(r"^kiosk-\d L\d \w+ -> \w+ \(seq \d+\)$", output, re.M)
    assert re.search(r"^simulator done: 2 kiosks, \d+ events$", output, re.M)
    assert "rejected" not in output.replace("0 rejected", "")
    # the simulated changes reached the projection
    async with http.get(f"{server.url}/api/lockers", headers=server.headers()) as resp:
        lockers = (await resp.json())["lockers"]
    assert {x["kioskId"] for x in lockers} <= {"kiosk-1", "kiosk-2"} and lockers


async def test_panel_cli(server, http) -> None:
    await server.post_event(http, locker_event(1))
    kiosk = KioskClient(server.url, server.token("kiosk", "kiosk-1"), "kiosk-1")
    kiosk.on_command(lambda command: f"{command['type']} {command.get('lockerId')} done")
    async with kiosk:
        panel = await Example.start(
            "panel_cli.py", "--url", server.url, "--token", server.token("panel", "p1"),
            "--command", "open:kiosk-1:L3", "--duration", "1.5",
        )  # fmt: skip
        try:
            await panel.expect(
                r"^/ws/lockers\s+#1\s+locker_state_changed\s+kiosk-1/L1 open -> closed"
            )
            await panel.expect(r"^/ws/lockers\s+live after 1 replayed \(recovered=None\)")
            await panel.expect(r"^command open at kiosk-1: success=True open L3 done$")
            await server.post_event(http, locker_event(2))
            await panel.expect(
                r"^/ws/lockers\s+#2\s+locker_state_changed\s+kiosk-1/L2 closed -> open$"
            )
            await panel.expect(r"^/ws/events\s+#\d+\s+command_applied\s+open at kiosk-1: ok$")
            await panel.finish()
        finally:
            panel.kill()


async def test_gateway_publish(server, http) -> None:
    gateway = await Example.start(
        "gateway_publish.py", "--url", server.url, "--token", server.token("gateway", "gw")
    )
    try:
        output = await gateway.finish()
    finally:
        gateway.kill()
    assert re.search(r"^201 locker_state_changed seq=1 id=[0-9a-f-]{36}$", output, re.M)
    assert re.search(r"^201 help_requested seq=1 ", output, re.M)
    assert re.search(r"^201 help_status_updated seq=2 ", output, re.M)
    assert re.search(r"^201 system_status seq=\d+ ", output, re.M)
    assert re.search(r"^422 validation_error: .*'data\.kioskId'", output, re.M)
    assert "lockers at seq 1:\n  kiosk-1/L1 reserved" in output
