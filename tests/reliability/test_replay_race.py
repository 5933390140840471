"""The race the heavy crash run found: a replay can read an event before its broadcast.

The store commits an append before its caller resumes; a replay reading in
between sends that event, and the broadcast that follows must not send it
again.  Here the real SQLite store is only slowed down on return, so the
window that load opens by chance is open on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from lockerbus.app import create_app, store_options
from lockerbus.config import Settings
from lockerbus.runner import start
from lockerbus.store.sqlite import SqliteEventStore
from tests.reliability.clients import LOCKERS
from tests.support import SECRET, RunningServer, connect, locker_event


class SlowToReturnStore(SqliteEventStore):
    """Commits as usual, then holds the caller while ``hold`` is set."""

    hold = False
    committed: asyncio.Event
    release: asyncio.Event

    async def append(self, event: Any, *, ttl_seconds: float | None = None) -> Any:
        stored = await super().append(event, ttl_seconds=ttl_seconds)
        if self.hold:
            self.committed.set()
            await self.release.wait()
        return stored


async def test_an_event_replayed_before_its_broadcast_comes_once(tmp_path) -> None:
    settings = Settings(secret=SECRET, port=0, store=f"sqlite:///{tmp_path / 'race.db'}")
    store = SlowToReturnStore(str(tmp_path / "race.db"), store_options(settings))
    store.committed, store.release = asyncio.Event(), asyncio.Event()
    server = RunningServer(await start(settings, create_app(settings, store=store)), settings)
    try:
        async with aiohttp.ClientSession() as http:
            store.hold = True
            first = asyncio.create_task(server.post_event(http, locker_event(1)))
            await store.committed.wait()  # stored, not yet broadcast
            client = await connect(server, LOCKERS, auth={"last_seq": 0})
            done = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
            assert (done["last_seq"], done["count"]) == (1, 1)
            store.hold = False
            store.release.set()
            assert (await first)[0] == 201
            assert (await server.post_event(http, locker_event(2)))[0] == 201
            events = await client.wait_events(LOCKERS, "locker_state_changed", 2)
            # in order: a second seq 1 would have come before seq 2
            assert [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")] == [1, 2]
            assert events[0]["replayed"] is True
            await client.close()
    finally:
        await server.stop()
