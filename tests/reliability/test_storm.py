"""Reconnect storm: every client dropped at once resumes with its last seq while events flow.

The server is SIGKILLed and restarted on the same SQLite file and port; each
python-socketio client reconnects by itself, passing the last seq it saw.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.processes import stored_events
from tests.reliability.clients import LOCKERS, Publisher, Tracker
from tests.reliability.conftest import HEAVY, record

CLIENTS = 1000 if HEAVY else 500
EVENTS_BEFORE = 10
EVENTS_TOTAL = 100 if HEAVY else 50
RATE = 20.0  # events per second: each is delivered to every client, all in this process


async def connect_all(trackers: list[Tracker], batch: int = 50) -> None:
    for start in range(0, len(trackers), batch):
        await asyncio.gather(*(t.connect() for t in trackers[start : start + batch]))


async def all_reach(trackers: list[Tracker], seq: int, timeout: float) -> None:
    await asyncio.gather(*(t.wait_until(seq, timeout) for t in trackers))


async def newest_seq(server) -> int:
    async with (
        aiohttp.ClientSession(headers=server.headers()) as http,
        http.get(f"{server.url}/api/events", params={"namespace": LOCKERS, "limit": 1}) as resp,
    ):
        return int((await resp.json())["last_seq"])


@pytest.mark.timeout(600 if HEAVY else 120)
async def test_reconnect_storm_after_a_crash(server_process, tmp_path) -> None:
    server = server_process(f"sqlite:///{tmp_path / 'storm.db'}")
    trackers = [Tracker(server, f"panel-{i}") for i in range(CLIENTS)]
    await connect_all(trackers)
    publisher = Publisher(server, "http", "kiosk-1", interval=1 / RATE)
    publishing = asyncio.create_task(publisher.run(limit=EVENTS_TOTAL))
    await all_reach(trackers, EVENTS_BEFORE, timeout=60)
    rss_first = server.status("VmHWM")

    killed_at = time.perf_counter()
    server.kill()
    server.start()
    restarted_at = time.perf_counter()
    target = await newest_seq(server)  # what each client must have to be caught up
    await all_reach(trackers, target, timeout=60)
    caught_up_at = time.perf_counter()
    rss_storm = server.status("VmHWM")

    await publishing
    stored, epoch = await stored_events(server, LOCKERS)
    last = stored[-1]["seq"]
    assert [e["seq"] for e in stored] == list(range(1, last + 1))
    assert all(e["epoch"] == epoch for e in publisher.acked)
    await all_reach(trackers, last, timeout=60)
    ids = {e["seq"]: e["id"] for e in stored}
    for tracker in trackers:
        assert tracker.violations == []
        assert tracker.generations == []
        # every event exactly once, in order
        assert tracker.seqs == list(range(1, last + 1)), (tracker.sub, tracker.completes)
        assert tracker.ids == ids
        assert [c["recovered"] for c in tracker.completes[1:]] == [True]
    replayed = sum(t.completes[1]["count"] for t in trackers)
    await asyncio.gather(*(t.close() for t in trackers))
    record(
        "reconnect_storm",
        clients=CLIENTS,
        events=last,
        acknowledged=len(publisher.acked),
        replayed_after_restart=replayed,
        lost=0,
        caught_up_after_restart_s=round(caught_up_at - restarted_at, 2),
        caught_up_after_kill_s=round(caught_up_at - killed_at, 2),
        peak_rss_mib_before_kill=round(rss_first / 1024, 1),
        peak_rss_mib_storm=round(rss_storm / 1024, 1),
    )
