"""Current state (contract §8): GET /api/lockers and /api/help from the event log."""

from __future__ import annotations

import asyncio
from typing import Any

from lockerbus.app import STORE
from tests.support import connect, locker_event, start_server


def change(locker: str, old: str, new: str, kiosk: str = "kiosk-1") -> dict[str, Any]:
    return {
        "type": "locker_state_changed",
        "data": {"lockerId": locker, "oldState": old, "newState": new, "kioskId": kiosk},
    }


def help_requested(n: int, priority: str = "medium", status: str = "open") -> dict[str, Any]:
    return {
        "type": "help_requested",
        "data": {
            "id": n,
            "kiosk_id": "kiosk-1",
            "category": "hardware_problem",
            "status": status,
            "created_at": "2026-11-26T19:00:00Z",
            "priority": priority,
            "note": f"request {n}",
        },
    }


def help_updated(n: int, old: str, new: str) -> dict[str, Any]:
    return {
        "type": "help_status_updated",
        "data": {
            "id": n,
            "old_status": old,
            "new_status": new,
            "agent_id": "agent-1",
            "updated_at": "2026-11-26T19:01:00Z",
        },
    }


async def get(server, http, path: str, role: str = "kiosk") -> tuple[int, Any]:
    async with http.get(f"{server.url}{path}", headers=server.headers(role, "kiosk-1")) as resp:
        return resp.status, await resp.json()


async def test_lockers_snapshot_latest_state_per_locker(server, http) -> None:
    status, body = await get(server, http, "/api/lockers")
    assert status == 200
    assert body == {"lockers": [], "last_seq": 0, "epoch": server.app[STORE].epoch}
    await server.post_event(http, change("L1", "closed", "open"))
    await server.post_event(http, change("L1", "open", "reserved"))
    await server.post_event(http, change("L1", "closed", "error", kiosk="kiosk-2"))
    _, last = await server.post_event(http, change("L2", "closed", "maintenance"))
    await server.post_event(http, help_requested(1))  # another namespace: no effect here
    status, body = await get(server, http, "/api/lockers", role="panel")
    assert status == 200
    assert body["last_seq"] == last["seq"] == 4
    assert body["epoch"] == last["epoch"]
    assert [(x["kioskId"], x["lockerId"], x["state"], x["seq"]) for x in body["lockers"]] == [
        ("kiosk-1", "L1", "reserved", 2),
        ("kiosk-1", "L2", "maintenance", 4),
        ("kiosk-2", "L1", "error", 3),
    ]
    assert set(body["lockers"][0]) == {"lockerId", "kioskId", "state", "seq", "timestamp"}


async def test_help_snapshot_keeps_open_requests(server, http) -> None:
    await server.post_event(http, help_requested(1, "low"))
    await server.post_event(http, help_requested(2, "urgent"))
    await server.post_event(http, help_requested(3, "high", status="resolved"))
    await server.post_event(http, help_updated(2, "open", "assigned"))
    _, last = await server.post_event(http, help_updated(1, "open", "resolved"))
    status, refused = await server.post_event(http, help_updated(99, "open", "assigned"))
    assert (status, refused["error"]["code"]) == (409, "conflict"), "unknown id (§11)"
    status, body = await get(server, http, "/api/help")
    assert status == 200
    assert body["last_seq"] == last["seq"], "a refused event takes no seq"
    [request] = body["help_requests"]
    assert request["id"] == 2 and request["priority"] == "urgent"
    assert request["status"] == "assigned" and request["agent_id"] == "agent-1"
    assert request["note"] == "request 2" and request["seq"] == 4


async def test_snapshot_needs_a_valid_token(server, http) -> None:
    for path in ("/api/lockers", "/api/help"):
        async with http.get(f"{server.url}{path}") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(
            f"{server.url}{path}", headers={"Authorization": "Bearer nope"}
        ) as resp:
            assert resp.status == 401


async def test_projection_rebuilt_from_a_durable_store(server_factory, http, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first = await start_server(store=url)  # stopped here, not by the factory
    await first.post_event(http, change("L1", "closed", "open"))
    await first.post_event(http, change("L7", "open", "closed"))
    await first.post_event(http, help_requested(5, "high"))
    _, before = await get(first, http, "/api/lockers")
    _, help_before = await get(first, http, "/api/help")
    await first.stop()
    second = await server_factory(store=url)
    # the state is the store's: nothing to rebuild
    _, after = await get(second, http, "/api/lockers")
    _, help_after = await get(second, http, "/api/help")
    assert after == before and help_after == help_before


async def test_snapshot_then_resume_has_no_gap_and_no_double(server, http) -> None:
    """Publish continuously; snapshot; connect from its last_seq: every seq exactly once."""
    stop = asyncio.Event()
    published: list[int] = []
    milestones = {20: asyncio.Event(), 60: asyncio.Event()}

    async def publisher() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            status, event = await server.post_event(http, locker_event(n))
            assert status == 201
            published.append(event["seq"])
            n += 1
            if n in milestones:
                milestones[n].set()

    task = asyncio.create_task(publisher())
    await asyncio.wait_for(milestones[20].wait(), 10)
    _, snap = await get(server, http, "/api/lockers")
    # the snapshot reflects exactly the events up to its last_seq
    assert max(x["seq"] for x in snap["lockers"]) == snap["last_seq"]
    client = await connect(
        server, "/ws/lockers", auth={"last_seq": snap["last_seq"], "epoch": snap["epoch"]}
    )
    await client.call("subscribe", {"room": "locker_updates"}, "/ws/lockers")
    await asyncio.wait_for(milestones[60].wait(), 10)
    stop.set()
    await task
    await client.wait_for(
        lambda: (
            bool(client.events("/ws/lockers", "locker_state_changed"))
            and client.events("/ws/lockers", "locker_state_changed")[-1]["seq"] == published[-1]
        )
    )
    received = [e["seq"] for e in client.events("/ws/lockers", "locker_state_changed")]
    assert received == list(range(snap["last_seq"] + 1, published[-1] + 1))
    [complete] = client.events("/ws/lockers", "replay_complete")
    assert complete["recovered"] is True
    await client.close()


async def test_help_conflicts_over_http_and_socket(server, http) -> None:
    """Contract §11: an open id reused, an unknown id, a stale old_status are `conflict`."""
    assert (await server.post_event(http, help_requested(8, "low")))[0] == 201
    status, body = await server.post_event(http, help_requested(8, "high"))
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert "already open" in body["error"]["message"]
    status, body = await server.post_event(http, help_updated(8, "assigned", "resolved"))
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert body["error"]["fields"] == {"data.old_status": ["the current status is open"]}
    agent = await connect(server, "/ws/help", role="panel", sub="agent-1")
    await agent.wait_events("/ws/help", "replay_complete", 1)
    request = {"type": "help_status_updated", "data": help_updated(8, "open", "assigned")["data"]}
    ack = await agent.call("publish", request, "/ws/help")
    assert ack["ok"] is True
    ack = await agent.call("publish", request, "/ws/help")
    assert (ack["ok"], ack["error"]["code"]) == (False, "conflict")
    _, snapshot = await get(server, http, "/api/help")
    assert [(r["id"], r["status"]) for r in snapshot["help_requests"]] == [(8, "assigned")]
