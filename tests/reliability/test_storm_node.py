"""Reconnect storm with the official socket.io-client: 200 clients (2000 heavy) across a SIGKILL.

The python-socketio storm (test_storm.py) cannot hold 2000 clients in one
process on 2 cores; tests/node/storm.mjs can (worker threads).  Each client
follows /ws/lockers and resumes with ``auth {token, last_seq, epoch}`` from the
last event it received (half of them first connect with no ``last_seq``, the
time-based default, and take their position from ``replay_complete``, as the
python Tracker does).  While an HTTP publisher streams, the server is
SIGKILLed and restarted on the same SQLite file and port: every client drops
at once and reconnects.  Each client's stream must then be every stored event
exactly once, in order, with the stored ids, and every resume ``recovered``.

Heavy mode repeats the case ``LOCKERBUS_STORM_RUNS`` times (5 by default):
one earlier 2000-client run lost a client's first 79 events.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.processes import stored_events
from tests.reliability.clients import LOCKERS, Publisher
from tests.reliability.conftest import HEAVY, record
from tests.test_node_client import NODE_DIR, ensure_node_modules

CLIENTS = 2000 if HEAVY else 200
WORKERS = 2 if HEAVY else 1
EVENTS_BEFORE = 20  # every client has these before the kill
EVENTS_TOTAL = 120 if HEAVY else 60
RATE = 10.0 if HEAVY else 20.0  # events per second, each delivered to every client
RUNS = int(os.environ.get("LOCKERBUS_STORM_RUNS", "5")) if HEAVY else 1


class StormClients:
    """tests/node/storm.mjs as a child process, driven over stdin/stdout JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, tokens: list[str], tmp: Path) -> StormClients:
        config = tmp / "storm-config.json"
        config.write_text(json.dumps({"tokens": tokens, "workers": WORKERS}))
        proc = await asyncio.create_subprocess_exec(
            ensure_node_modules(),
            str(NODE_DIR / "storm.mjs"),
            url,
            str(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        return cls(proc)

    async def answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, f"storm.mjs exited with {await self.proc.wait()}"
        reply: dict[str, Any] = json.loads(line)
        assert reply["event"] != "error", reply
        return reply

    async def ask(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.answer(timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.ask(30, cmd="close")
                await asyncio.wait_for(self.proc.wait(), 10)
            finally:
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.timeout(600 if HEAVY else 120)
async def test_node_storm_after_a_crash(server_process, tmp_path: Path, run: int) -> None:
    server = server_process(f"sqlite:///{tmp_path / 'storm.db'}")
    tokens = [server.token("panel", f"panel-{i}") for i in range(CLIENTS)]
    clients = await StormClients.start(server.url, tokens, tmp_path)
    try:
        connected = await clients.answer(timeout=240)
        publisher = Publisher(server, "http", "kiosk-1", interval=1 / RATE)
        publishing = asyncio.create_task(publisher.run(limit=EVENTS_TOTAL))
        await clients.ask(120, cmd="wait", seq=EVENTS_BEFORE, timeout_ms=110_000)
        rss_before = server.status("VmHWM")

        killed_at = time.perf_counter()
        server.kill()
        await server.started()
        restarted_at = time.perf_counter()
        stored, _ = await stored_events(server, LOCKERS)
        target = stored[-1]["seq"]  # what each client must have to be caught up
        await clients.ask(120, cmd="wait", seq=target, timeout_ms=110_000)
        caught_up_at = time.perf_counter()
        rss_storm = server.status("VmHWM")

        await publishing
        stored, epoch = await stored_events(server, LOCKERS)
        last = stored[-1]["seq"]
        assert [e["seq"] for e in stored] == list(range(1, last + 1))
        assert all(e["epoch"] == epoch for e in publisher.acked)
        assert {e["id"] for e in publisher.acked} <= {e["id"] for e in stored}
        await clients.ask(120, cmd="wait", seq=last, timeout_ms=110_000)
        ids_path = tmp_path / "ids.json"
        ids_path.write_text(json.dumps([None] + [e["id"] for e in stored]))
        result = await clients.ask(120, cmd="check", ids=str(ids_path))
    finally:
        await clients.close()
    figures = {
        "clients": result["clients"],
        "events": last,
        "acknowledged": len(publisher.acked),
        "replayed_after_restart": result["replayed"],
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "reordered": result["reordered"],
        "not_recovered": result["unrecovered"],
        "connect_all_s": round(connected["ms"] / 1000, 2),
        "caught_up_after_restart_s": round(caught_up_at - restarted_at, 2),
        "caught_up_after_kill_s": round(caught_up_at - killed_at, 2),
        "server_peak_rss_mib_before_kill": round(rss_before / 1024, 1),
        "server_peak_rss_mib_storm": round(rss_storm / 1024, 1),
        "loadgen_rss_mib": result["rss_mib"],
    }
    record(f"reconnect_storm_node_{run}", **figures)
    assert result["clients"] == CLIENTS
    assert result["bad_clients"] == 0, result["bad"]
    assert result["lost"] == result["duplicated"] == result["reordered"] == 0
    assert result["wrongId"] == result["unrecovered"] == 0
