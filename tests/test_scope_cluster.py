"""Scopes through the cluster relay (contract §9, §10): an event published on one
instance reaches the other instance's connections through the same checks as a
local broadcast.  Real lockerbus processes, one real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from tests.processes import ServerProcess
from tests.support import connect, locker_event

pytestmark = [pytest.mark.needs_redis, pytest.mark.slow]

LOCKERS, ROOM = "/ws/lockers", "locker_updates"


@pytest.fixture
async def pair(redis_server, tmp_path):  # type: ignore[no-untyped-def]
    env = {"LOCKERBUS_MESSAGE_QUEUE": redis_server.url, "LOCKERBUS_LOG_LEVEL": "INFO"}
    procs = [
        ServerProcess(store=redis_server.url, log_path=tmp_path / f"lb-{i}.log", env=env)
        for i in range(2)
    ]
    await asyncio.gather(*(p.started() for p in procs))
    yield procs
    await asyncio.gather(*(p.stopped() for p in procs))


async def test_relayed_events_keep_to_each_scope(pair, http) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    clients = {}
    for sub, role, join in (
        ("kiosk-1", "kiosk", True),  # holds the room on b: kiosk-2's events fall back
        ("kiosk-2", "kiosk", False),
        ("panel-1", "panel", False),
    ):
        client = await connect(b, LOCKERS, role=role, sub=sub, auth={"replay": False})
        await client.wait_events(LOCKERS, "replay_complete", 1)
        if join:
            assert await client.call("subscribe", {"room": ROOM}, LOCKERS) == {"ok": True}
        clients[sub] = client
    for n, kiosk in enumerate(["kiosk-1", "kiosk-2", "kiosk-3", "kiosk-2"]):
        status, event = await a.post_event(http, locker_event(n, kiosk))
        assert status == 201, event
    await clients["kiosk-2"].wait_events(LOCKERS, "locker_state_changed", 2)
    await clients["panel-1"].wait_events(LOCKERS, "locker_state_changed", 3)
    await clients["kiosk-1"].wait_events(LOCKERS, "locker_state_changed", 1)

    def kiosks(sub: str) -> list[str]:
        return [e["tags"]["kiosk"] for e in clients[sub].events(LOCKERS, "locker_state_changed")]

    assert kiosks("kiosk-2") == ["kiosk-2", "kiosk-2"]
    assert kiosks("panel-1") == ["kiosk-2", "kiosk-3", "kiosk-2"], "kiosk-1's stayed in its room"
    assert kiosks("kiosk-1") == ["kiosk-1"]
