"""SIGTERM drains a real server process: connected clients, no accepted event lost."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.processes import ServerProcess
from tests.support import Client, connect, locker_event

LOCKERS = "/ws/lockers"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_and_loses_no_accepted_event(tmp_path, http, sig) -> None:
    db = tmp_path / "events.db"
    # python-socketio clients answer a server's close late; the grace bounds the wait
    env = {"LOCKERBUS_STORE": f"sqlite:///{db}", "LOCKERBUS_SHUTDOWN_GRACE_SECONDS": "1.5"}
    proc = ServerProcess(env)
    await proc.start()
    try:
        watcher: Client = await connect(proc, LOCKERS, auth={"replay": False})  # type: ignore[arg-type]
        await watcher.wait_events(LOCKERS, "replay_complete", 1)
        publisher = await connect(proc, LOCKERS, role="gateway", auth={"replay": False})  # type: ignore[arg-type]
        acked: list[dict] = []
        refused: list[str] = []

        async def stream() -> None:
            n = 0
            while publisher.sio.connected:
                try:
                    ack = await publisher.call("publish", locker_event(n), LOCKERS)
                except Exception:  # the connection went away mid-call: not acknowledged
                    return
                if ack["ok"]:
                    acked.append(ack["event"])
                else:
                    refused.append(ack["error"]["code"])
                n += 1

        task = asyncio.create_task(stream())
        await publisher.wait_for(lambda: len(acked) >= 50)
        status = await proc.signal(sig)
        await asyncio.wait_for(task, 10)
        assert status == 0, "".join(proc.output)
        await watcher.wait_events(LOCKERS, "disconnect", 1)
        assert set(refused) <= {"store_unavailable"}
    finally:
        await proc.stop()

    again = ServerProcess(env)
    await again.start()
    try:
        held = await again.events(http, LOCKERS)
        held_ids = {e["id"] for e in held}
        assert [e["id"] for e in acked if e["id"] not in held_ids] == []
        assert [e["seq"] for e in held] == list(range(1, len(held) + 1))
        assert {e["epoch"] for e in held} == {acked[0]["epoch"]}
    finally:
        await again.stop()
