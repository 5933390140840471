"""Durable state over the wire (contract §11): the board never forgets a locker, a
crash loses none of it, every instance reads the same, help moves are consistent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ServerProcess
from tests.redis_support import RedisServer
from tests.support import connect, help_requested

LOCKERS = "/ws/lockers"


def change(locker: str, new: str, kiosk: str = "kiosk-1") -> dict[str, Any]:
    old = "closed" if new != "closed" else "open"
    return {
        "type": "locker_state_changed",
        "data": {"lockerId": locker, "oldState": old, "newState": new, "kioskId": kiosk},
    }


def help_moved(n: int, old: str, new: str, agent: str) -> dict[str, Any]:
    data = {
        "id": n,
        "old_status": old,
        "new_status": new,
        "agent_id": agent,
        "updated_at": "2026-11-26T19:01:00Z",
    }
    return {"type": "help_status_updated", "data": data}


async def board(server: Any, http: Any, path: str = "/api/lockers") -> dict[str, Any]:
    async with http.get(f"{server.url}{path}", headers=server.headers("panel")) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_locker_whose_event_was_evicted_stays_on_the_board(server_factory, http) -> None:
    server = await server_factory(max_events=2)
    await server.post_event(http, change("L1", "open"))
    for state in ("open", "closed", "open"):
        await server.post_event(http, change("L2", state))
    async with http.get(
        f"{server.url}/api/events?namespace={LOCKERS}", headers=server.headers("admin")
    ) as resp:
        history = (await resp.json())["events"]
    assert [e["data"]["lockerId"] for e in history] == ["L2", "L2"], "L1's event is gone"
    snapshot = await board(server, http)
    assert [(x["lockerId"], x["state"], x["seq"]) for x in snapshot["lockers"]] == [
        ("L1", "open", 1),
        ("L2", "open", 4),
    ]
    assert snapshot["last_seq"] == 4


async def test_the_state_survives_kill_9_with_sqlite(tmp_path: Path, http) -> None:
    server = ServerProcess(store=f"sqlite:///{tmp_path / 'events.db'}", log_path=tmp_path / "log")
    await server.started()
    try:
        for n in range(5):
            assert (await server.post_event(http, change(f"L{n}", "open")))[0] == 201
        assert (await server.post_event(http, help_requested(3)))[0] == 201
        lockers, help_requests = await board(server, http), await board(server, http, "/api/help")
        await asyncio.to_thread(server.kill)
        await server.started()
        assert await board(server, http) == lockers
        assert await board(server, http, "/api/help") == help_requests
        status, body = await server.post_event(http, help_requested(3))
        assert (status, body["error"]["code"]) == (409, "conflict"), "still open after the crash"
    finally:
        await server.stopped()


@pytest.mark.needs_redis
@pytest.mark.slow
async def test_two_instances_read_one_state_and_one_racing_agent_wins(
    redis_server: RedisServer, tmp_path: Path, http
) -> None:
    env = {"LOCKERBUS_MESSAGE_QUEUE": redis_server.url}
    a, b = (
        ServerProcess(store=redis_server.url, log_path=tmp_path / f"{i}.log", env=env)
        for i in range(2)
    )
    await asyncio.gather(a.started(), b.started())
    try:
        await a.post_event(http, change("L1", "open"))
        await b.post_event(http, change("L2", "closed"))
        assert (await a.post_event(http, help_requested(9)))[0] == 201
        assert await board(a, http) == await board(b, http)
        assert len((await board(a, http))["lockers"]) == 2
        # agents on both instances take request 9 at once: exactly one wins
        agents = [
            await connect(server, "/ws/help", role="panel", sub=f"agent-{i}")
            for i, server in enumerate([a, b, a, b, a, b])
        ]
        acks = await asyncio.gather(
            *(
                agent.call("publish", help_moved(9, "open", "assigned", f"agent-{i}"), "/ws/help")
                for i, agent in enumerate(agents)
            )
        )
        won = [ack for ack in acks if ack["ok"]]
        assert len(won) == 1, acks
        assert {ack["error"]["code"] for ack in acks if not ack["ok"]} == {"conflict"}
        help_a, help_b = await board(a, http, "/api/help"), await board(b, http, "/api/help")
        assert help_a == help_b
        [request] = help_a["help_requests"]
        assert request["agent_id"] == won[0]["event"]["data"]["agent_id"]
        assert help_a["last_seq"] == won[0]["event"]["seq"]
    finally:
        await asyncio.gather(a.stopped(), b.stopped())


@pytest.mark.needs_redis
async def test_a_redis_store_from_before_the_state_gets_it_on_open(
    redis_server: RedisServer,
) -> None:
    import redis.asyncio as aioredis

    from lockerbus.store import open_store
    from tests.storekit import help_event, locker_event

    url = f"{redis_server.url}?prefix=old"
    async with open_store(url) as store:
        await store.append(locker_event("k1", "L1", "open"))
        await store.append(help_event(31))
        before = (await store.read_state("lockers"), await store.read_state("help"))
    client = aioredis.from_url(redis_server.url)
    try:  # what a store written by an older lockerbus lacks
        keys = ["lockers", "help", "help:status", "help:upd", "built"]
        await client.delete(*(f"old:state:{k}" for k in keys))
    finally:
        await client.aclose()
    async with open_store(url) as store:
        assert (await store.read_state("lockers"), await store.read_state("help")) == before
        assert len(before[0].entries) == len(before[1].entries) == 1
