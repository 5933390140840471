"""SIGTERM and SIGINT drain a real server process: connected clients, no accepted event lost."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from tests.processes import ServerProcess, stored_events
from tests.support import connect, locker_event

LOCKERS = "/ws/lockers"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_and_loses_no_accepted_event(tmp_path, sig) -> None:
    # python-socketio clients answer a server's close late; the grace bounds the wait
    proc = ServerProcess(
        store=f"sqlite:///{tmp_path / 'events.db'}",
        log_path=tmp_path / "server.log",
        env={"LOCKERBUS_SHUTDOWN_GRACE_SECONDS": "1.5", "LOCKERBUS_LOG_LEVEL": "INFO"},
    )
    await proc.started()
    try:
        watcher = await connect(proc, LOCKERS, auth={"replay": False})  # type: ignore[arg-type]
        await watcher.wait_events(LOCKERS, "replay_complete", 1)
        publisher = await connect(proc, LOCKERS, role="gateway", auth={"replay": False})  # type: ignore[arg-type]
        acked: list[dict[str, Any]] = []
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
        assert proc.proc is not None
        proc.proc.send_signal(sig)
        status = await asyncio.to_thread(proc.proc.wait, 15)
        await asyncio.wait_for(task, 10)
        assert status == 0, proc.log()
        await watcher.wait_events(LOCKERS, "disconnect", 1)
        assert set(refused) <= {"store_unavailable"}
        assert "shutting down" in proc.log()
    finally:
        proc.kill()

    await proc.started()  # again, on the same file
    try:
        held, epoch = await stored_events(proc, LOCKERS)
        held_ids = {e["id"] for e in held}
        assert [e["id"] for e in acked if e["id"] not in held_ids] == []
        assert [e["seq"] for e in held] == list(range(1, len(held) + 1))
        assert epoch == acked[0]["epoch"]
    finally:
        proc.kill()


async def test_a_polling_client_that_never_polls_again_does_not_hold_the_stop() -> None:
    """Engine.IO waits for each socket's close packet to be taken: a bare long-polling
    handshake never takes it, and the stop used to wait forever."""
    import aiohttp

    from lockerbus import runner
    from lockerbus.config import load_settings

    settings = load_settings(env={"LOCKERBUS_SECRET": "s" * 40, "LOCKERBUS_PORT": "0"})
    running = await runner.start(settings)
    try:
        url = f"http://127.0.0.1:{running.port}/socket.io/?EIO=4&transport=polling"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert (await response.text()).startswith("0{")  # an Engine.IO open packet
    finally:
        # bounded: the stop waits CLOSE_TIMEOUT_SECONDS at most for the close packet
        await asyncio.wait_for(running.stop(), 15)


def test_serving_process_collects_young_objects_less_often() -> None:
    # in a child process: freezing and the thresholds are process-wide
    import subprocess
    import sys

    code = (
        "import gc; from lockerbus.runner import GC_YOUNG_THRESHOLD, tune_gc; tune_gc(); "
        "print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count() > 1000)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]
