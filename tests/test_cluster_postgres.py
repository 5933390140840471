"""Several instances on one PostgreSQL store, Redis as their message queue (contract §9):
real lockerbus processes, a real PostgreSQL cluster and redis-server, real clients.

Each instance publishes its own appends on the channel after they commit, so
two instances' events can cross on it; every instance must still deliver each
event once, in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster_support import wait_ready
from tests.postgres_support import PostgresServer
from tests.processes import ServerProcess
from tests.redis_support import RedisServer
from tests.support import connect, locker_event
from tests.test_cluster import check_publishers_on_both, live_seqs, subscriber

pytestmark = [pytest.mark.needs_redis, pytest.mark.needs_postgres, pytest.mark.slow]

LOCKERS = "/ws/lockers"
HELP = "/ws/help"


@pytest.fixture
async def pg_cluster(redis_server: RedisServer, postgres_shared: PostgresServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start instances sharing a fresh database and ``redis_server``; stopped after."""
    async with _cluster(redis_server, postgres_shared.database(str(tmp_path)), tmp_path) as factory:
        yield factory


@contextlib.asynccontextmanager
async def _cluster(redis_server: RedisServer, store: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[ServerProcess] = []

    async def factory(count: int = 2) -> list[ServerProcess]:
        env = {"LOCKERBUS_MESSAGE_QUEUE": redis_server.url, "LOCKERBUS_LOG_LEVEL": "INFO"}
        procs = [
            ServerProcess(store=store, log_path=tmp_path / f"lockerbus-{i}.log", env=env)
            for i in range(len(started), len(started) + count)
        ]
        started.extend(procs)
        await asyncio.gather(*(p.started() for p in procs))
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, *procs)
        return procs

    try:
        yield factory
    finally:
        await asyncio.gather(*(p.stopped() for p in started))


async def test_publish_on_one_instance_reaches_subscribers_on_both_once(pg_cluster, http) -> None:
    a, b = await pg_cluster()
    on_a, on_b = await subscriber(a), await subscriber(b)
    accepted = [(await a.post_event(http, locker_event(n)))[1] for n in range(3)]
    status, last = await b.post_event(http, locker_event(3))
    assert status == 201, last
    accepted.append(last)
    assert [e["seq"] for e in accepted] == [1, 2, 3, 4]
    for client in (on_a, on_b):
        await client.wait_for(lambda c=client: 4 in live_seqs(c))
        assert client.events(LOCKERS, "locker_state_changed") == accepted, "each once, in order"


async def test_seq_strictly_increases_with_publishers_on_both(pg_cluster, http) -> None:
    a, b = await pg_cluster()
    await check_publishers_on_both(a, b, http)


async def test_replay_and_state_from_the_other_instance(pg_cluster, http) -> None:
    a, b = await pg_cluster()
    first = [(await a.post_event(http, locker_event(n)))[1] for n in range(2)]
    epoch, seen = first[-1]["epoch"], first[-1]["seq"]
    missed = [(await a.post_event(http, locker_event(n)))[1] for n in range(2, 6)]
    client = await connect(b, LOCKERS, auth={"last_seq": seen, "epoch": epoch})
    (done,) = await client.wait_events(LOCKERS, "replay_complete", 1)
    assert (done["recovered"], done["count"], done["last_seq"]) == (True, 4, 6)
    replayed = client.events(LOCKERS, "locker_state_changed")
    assert [e["seq"] for e in replayed] == [e["seq"] for e in missed]
    boards = []
    for server in (a, b):
        async with http.get(f"{server.url}/api/lockers", headers=server.headers("panel")) as resp:
            assert resp.status == 200
            boards.append(await resp.json())
    assert boards[0] == boards[1]
    assert boards[0]["last_seq"] == 6


async def test_racing_help_updates_on_two_instances_exactly_one_wins(pg_cluster, http) -> None:
    a, b = await pg_cluster()
    opened = {
        "type": "help_requested",
        "data": {
            "id": 4242,
            "kiosk_id": "kiosk-1",
            "category": "other",
            "status": "open",
            "created_at": "2026-11-26T19:00:00.000Z",
            "priority": "low",
        },
    }
    status, _ = await a.post_event(http, opened)
    assert status == 201

    def update(agent: str) -> dict[str, Any]:
        return {
            "type": "help_status_updated",
            "data": {
                "id": 4242,
                "old_status": "open",
                "new_status": "assigned",
                "agent_id": agent,
                "updated_at": "2026-11-26T19:01:00.000Z",
            },
        }

    outcomes = await asyncio.gather(
        a.post_event(http, update("agent-a")), b.post_event(http, update("agent-b"))
    )
    assert sorted(status for status, _ in outcomes) == [201, 409], outcomes


async def test_postgres_restart_under_two_instances_loses_nothing(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path, http
) -> None:
    """Both instances answer store_unavailable and /readyz 503 while PostgreSQL is
    down, resume by themselves, and their subscribers get every acknowledged
    event once, in order."""
    async with _cluster(redis_server, postgres_server.url(), tmp_path) as factory:
        a, b = await factory()
        watchers = [await subscriber(a, join=False), await subscriber(b, join=False)]
        acked = [(await a.post_event(http, locker_event(n)))[1] for n in range(3)]
        await asyncio.to_thread(postgres_server.stop)
        for server in (a, b):
            status, body = await server.post_event(http, locker_event(50))
            assert status == 503 and body["error"]["code"] == "store_unavailable", body
        await wait_ready(http, a, b, ready=False)
        await asyncio.to_thread(postgres_server.start)
        await wait_ready(http, a, b)
        for n, server in enumerate((b, a, b)):
            status, event = await server.post_event(http, locker_event(10 + n))
            assert status == 201, event
            acked.append(event)
        assert [e["seq"] for e in acked] == [1, 2, 3, 4, 5, 6]
        for client in watchers:
            await client.wait_for(lambda c=client: 6 in live_seqs(c))
            assert client.events(LOCKERS, "locker_state_changed") == acked


async def test_an_instance_killed_mid_publish_loses_nothing_for_the_other(pg_cluster, http) -> None:
    """An instance can die between its commit and its publish on the channel: the
    other instance's periodic check finds the event in PostgreSQL and delivers it."""
    a, b = await pg_cluster()
    watcher = await subscriber(b, join=False)
    acked: list[dict[str, Any]] = []

    async def publish_on_a() -> None:
        for n in range(10_000):
            try:
                status, event = await a.post_event(http, locker_event(n))
            except aiohttp.ClientError:
                return  # killed
            if status != 201:
                return
            acked.append(event)

    publishing = asyncio.create_task(publish_on_a())
    await watcher.wait_for(lambda: len(live_seqs(watcher)) >= 50)
    await asyncio.to_thread(a.kill)
    await publishing
    status, last = await b.post_event(http, locker_event(99_999))
    assert status == 201
    await watcher.wait_for(lambda: last["seq"] in live_seqs(watcher))
    got = live_seqs(watcher)
    assert got == list(range(1, last["seq"] + 1)), "every stored event once, in order"
    by_seq = {e["seq"]: e for e in watcher.events(LOCKERS, "locker_state_changed")}
    assert all(by_seq[e["seq"]] == e for e in acked), "each acknowledged event as acknowledged"


async def test_the_message_queue_down_keeps_publishes_and_delivers_them_afterwards(
    redis_server: RedisServer, postgres_shared: PostgresServer, tmp_path: Path, http
) -> None:
    """With a PostgreSQL store, Redis is only the message queue: while it is down
    publishes are still stored and acknowledged (the store answers), /readyz says
    503 (live delivery across instances is cut), and once it is back every
    subscriber gets what it missed, from the store, once and in order."""
    store = postgres_shared.database(str(tmp_path))
    async with _cluster(redis_server, store, tmp_path) as factory:
        a, b = await factory()
        watcher = await subscriber(b)
        accepted = [(await a.post_event(http, locker_event(n)))[1] for n in range(3)]
        await watcher.wait_for(lambda: 3 in live_seqs(watcher))

        await asyncio.to_thread(redis_server.kill)
        for n in range(3, 6):
            status, event = await a.post_event(http, locker_event(n))
            assert status == 201, event
            accepted.append(event)
        await wait_ready(http, a, b, ready=False)

        await asyncio.to_thread(redis_server.start)
        await wait_ready(http, a, b)
        status, event = await b.post_event(http, locker_event(6))
        assert status == 201, event
        accepted.append(event)
        assert [e["seq"] for e in accepted] == [1, 2, 3, 4, 5, 6, 7]
        await watcher.wait_for(lambda: 7 in live_seqs(watcher), timeout=15)
        assert watcher.sio.connected
        assert watcher.events(LOCKERS, "locker_state_changed") == accepted
