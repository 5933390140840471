"""Crash: SIGKILL the server while publishers stream; nothing acknowledged is lost.

Modelled on Centrifugo's recovery tests: clients resume with their last
position, and the server either fills the gap exactly (``recovered: true``)
or says it cannot (``recovered: false``) - never a silent gap.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.processes import stored_events
from tests.reliability.clients import LOCKERS, Publisher, Tracker
from tests.reliability.conftest import HEAVY, record
from tests.support import connect

BEFORE_KILL = 2000 if HEAVY else 300
AFTER_RESTART = 1000 if HEAVY else 100


async def test_sqlite_crash_keeps_every_acknowledged_event(server_process, tmp_path: Path) -> None:
    await crash_keeps_every_acknowledged_event(
        server_process, f"sqlite:///{tmp_path / 'events.db'}", "crash_sqlite"
    )


async def crash_keeps_every_acknowledged_event(server_process, store: str, case: str) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL a server on durable ``store`` mid-stream, restart it: every acknowledged
    event is stored as acknowledged, and every tracker resumes recovered."""
    server = server_process(store, replay_buffer_size=10_000, max_send_queue=20_000)
    trackers = [await Tracker(server, f"panel-{i}").connect() for i in range(3)]
    http_pub = Publisher(server, "http", "kiosk-h")
    sock_pub = Publisher(server, "socket", "kiosk-s")
    running = [asyncio.create_task(p.run()) for p in (http_pub, sock_pub)]
    await trackers[0].wait_until(BEFORE_KILL, timeout=60)

    server.kill()  # mid-stream: both publishers have calls in flight
    await running[1]  # the socket publisher ends with its connection
    epoch = http_pub.acked[0]["epoch"]
    acked_before = len(http_pub.acked) + len(sock_pub.acked)
    server.start()

    # the HTTP publisher retried through the outage; a new socket publisher joins
    sock_pub2 = Publisher(server, "socket", "kiosk-s")
    await sock_pub2.run(limit=AFTER_RESTART)
    await http_pub.wait_acked(len(http_pub.acked) + AFTER_RESTART)
    http_pub.stop.set()
    await running[0]

    acked = http_pub.acked + sock_pub.acked + sock_pub2.acked
    stored, stored_epoch = await stored_events(server, LOCKERS)
    assert stored_epoch == epoch
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    by_seq = {e["seq"]: e for e in stored}
    for event in acked:
        assert event["epoch"] == epoch
        assert by_seq[event["seq"]] == event, "an acknowledged event changed or vanished"
    unacked_stored = len(stored) - len(acked)
    assert unacked_stored >= 0

    last = stored[-1]["seq"]
    for tracker in trackers:
        await tracker.wait_until(last, timeout=30)
        assert tracker.violations == []
        assert tracker.generations == []  # never told to rebuild
        assert tracker.seqs == list(range(1, last + 1))  # every event exactly once, in order
        assert all(tracker.ids[s] == by_seq[s]["id"] for s in tracker.seqs)
        assert len(tracker.completes) >= 2, "the tracker never reconnected"
        assert all(c["recovered"] is True for c in tracker.completes[1:])
        assert all(c["epoch"] == epoch for c in tracker.completes)
        await tracker.close()

    # a client that slept through everything resumes from seq 0 of the same epoch
    late = Tracker(server, "panel-late", reconnection=False)
    late.last_seq, late.epoch = 0, epoch
    await late.connect()
    await late.wait_until(last)
    assert late.completes[0]["recovered"] is True
    assert late.seqs == list(range(1, last + 1))
    await late.close()
    replayed = sum(c["count"] for t in trackers for c in t.completes[1:])
    record(
        case,
        publish_attempts=http_pub.failed + sock_pub.failed + sock_pub2.failed + len(acked),
        acknowledged=len(acked),
        acknowledged_before_kill=acked_before,
        stored_unacknowledged=unacked_stored,
        replayed_after_restart=replayed,
        lost=0,
    )


async def test_memory_crash_changes_epoch_and_says_not_recovered(server_process) -> None:
    server = server_process("memory")
    tracker = await Tracker(server, "panel-1").connect()
    pub = Publisher(server, "http", "kiosk-1")
    await pub.run(limit=20)
    await tracker.wait_until(20)
    old_epoch = tracker.epoch
    assert old_epoch == pub.acked[0]["epoch"]

    server.kill()
    server.start()
    async with asyncio.timeout(15):
        while len(tracker.completes) < 2:
            tracker.changed.clear()
            await tracker.changed.wait()
    after = tracker.completes[1]
    assert after["recovered"] is False  # not a silent gap
    assert after["epoch"] != old_epoch
    assert tracker.generations == [list(range(1, 21))]

    # live events of the new epoch arrive in order after the rebuild
    pub2 = Publisher(server, "http", "kiosk-1")
    await pub2.run(limit=5)
    await tracker.wait_until(5)
    assert tracker.seqs == [1, 2, 3, 4, 5]
    assert tracker.violations == []
    await tracker.close()

    # last_seq without epoch counts as the current epoch: seq 20 was never issued here
    client = await connect(server, LOCKERS, auth={"last_seq": 20})
    done = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert done["recovered"] is False
    assert done["epoch"] == after["epoch"]
    await client.close()
    record("crash_memory", epoch_changed=True, recovered=False)
