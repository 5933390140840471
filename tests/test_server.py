"""The Socket.IO contract (§2, §3, §5, §6) against a real server and real clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lockerbus.auth import issue_token
from tests.support import SECRET, connect, locker_event

LOCKERS = "/ws/lockers"
HELP = "/ws/help"
EVENTS = "/ws/events"


def help_request(kiosk: str = "kiosk-1", n: int = 1) -> dict[str, Any]:
    return {
        "type": "help_requested",
        "data": {
            "id": n,
            "kiosk_id": kiosk,
            "category": "access_issue",
            "status": "open",
            "created_at": "2026-11-26T19:00:00Z",
            "priority": "high",
        },
    }


# -- authentication ------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (None, "missing"),
        (issue_token("another-secret-" + "y" * 40, "panel", "p1"), "signature"),
        (issue_token(SECRET, "panel", "p1", ttl_seconds=-30), "expired"),
        ("not.a.jwt", "malformed"),
    ],
)
async def test_refused_connections_get_unauthorized(server, token, why) -> None:
    auth = {} if token is None else {"token": token}
    client = await connect(server, LOCKERS, auth=auth, token="", expect_refusal=True)
    if token is None:
        client = await connect(server, LOCKERS, token="", expect_refusal=True)
    await client.wait_for(lambda: LOCKERS in client.connect_errors)
    error = client.connect_errors[LOCKERS]
    assert error["message"] == "unauthorized", why
    assert error["data"]["code"] == "unauthorized"
    assert error["data"]["message"]
    assert not client.sio.connected


async def test_unknown_role_is_refused(server) -> None:
    import jwt

    token = jwt.encode({"sub": "x", "role": "root", "exp": 4102444800}, SECRET, algorithm="HS256")
    client = await connect(server, LOCKERS, token=token, expect_refusal=True)
    await client.wait_for(lambda: LOCKERS in client.connect_errors)
    assert client.connect_errors[LOCKERS]["data"]["code"] == "unauthorized"


async def test_bad_replay_request_is_bad_request(server) -> None:
    client = await connect(server, LOCKERS, auth={"last_seq": "ten"}, expect_refusal=True)
    await client.wait_for(lambda: LOCKERS in client.connect_errors)
    assert client.connect_errors[LOCKERS]["data"]["code"] == "bad_request"
    assert "last_seq" in client.connect_errors[LOCKERS]["data"]["message"]


# -- publish, routing, permissions ---------------------------------------------


async def test_publish_is_acked_stored_and_routed_by_type(server) -> None:
    watcher = await connect(server, LOCKERS, role="panel")
    await watcher.wait_events(LOCKERS, "replay_complete", 1)
    publisher = await connect(server, HELP, role="gateway")
    ack = await publisher.call("publish", locker_event(0), HELP)
    assert ack["ok"] is True
    event = ack["event"]
    assert event["namespace"] == LOCKERS and event["room"] == "locker_updates"
    assert event["seq"] == 1 and event["epoch"] and event["version"] == "1.0"
    got = await watcher.wait_events(LOCKERS, "locker_state_changed", 1)
    assert got[0] == event
    assert publisher.events(HELP, "locker_state_changed") == []


async def test_validation_error_names_fields_and_nothing_is_broadcast(server) -> None:
    watcher = await connect(server, LOCKERS)
    await watcher.wait_events(LOCKERS, "replay_complete", 1)
    publisher = await connect(server, LOCKERS, role="gateway")
    bad = locker_event(0)
    bad["data"]["newState"] = "ajar"
    bad["data"]["colour"] = "red"
    ack = await publisher.call("publish", bad, LOCKERS)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "validation_error"
    assert set(ack["error"]["fields"]) == {"data.newState", "data.colour"}
    ok = await publisher.call("publish", locker_event(1), LOCKERS)
    got = await watcher.wait_events(LOCKERS, "locker_state_changed", 1)
    assert [e["seq"] for e in got] == [ok["event"]["seq"]] == [1]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("just a string", "bad_request"),
        ([1, 2, 3], "bad_request"),
        ({"type": "teleport", "data": {}}, "unknown_type"),
        ({"type": "locker_state_changed", "data": "open"}, "validation_error"),
        ({"type": "locker_state_changed", "data": {}, "extra": 1}, "bad_request"),
        ({"type": "locker_state_changed", "data": {}, "version": "2.0"}, "unsupported_version"),
        ({"type": "connection", "data": {}}, "forbidden"),
        ({"type": "locker_state_changed", "data": {"x": "y" * 70000}}, "payload_too_large"),
    ],
)
async def test_malformed_publishes_get_contract_errors(server, payload, code) -> None:
    client = await connect(server, LOCKERS, role="gateway")
    ack = await client.call("publish", payload, LOCKERS)
    assert ack["ok"] is False
    assert ack["error"]["code"] == code
    assert client.sio.connected


async def test_deeply_nested_data_is_refused_cleanly(server) -> None:
    client = await connect(server, LOCKERS, role="gateway")
    nested: Any = {}
    for _ in range(300):
        nested = {"n": nested}
    payload = locker_event(0)
    payload["data"]["metadata"] = nested
    ack = await client.call("publish", payload, LOCKERS)
    assert ack["ok"] is False and ack["error"]["code"] in ("bad_request", "validation_error")
    assert (await client.call("publish", locker_event(1), LOCKERS))["ok"] is True


@pytest.mark.parametrize(
    ("role", "sub", "payload", "allowed"),
    [
        ("kiosk", "kiosk-1", locker_event(0, "kiosk-1"), True),
        ("kiosk", "kiosk-1", locker_event(0, "kiosk-2"), False),
        ("kiosk", "kiosk-1", help_request("kiosk-1"), True),
        ("kiosk", "kiosk-1", help_request("kiosk-9"), False),
        ("panel", "panel-1", locker_event(0), False),
        ("panel", "panel-1", help_request(), False),
        ("gateway", "gw", locker_event(0), True),
        ("admin", "root", help_request(), True),
        ("kiosk", "kiosk-1", {**locker_event(0, "kiosk-1"), "room": "locker_updates"}, False),
        ("gateway", "gw", {**locker_event(0), "room": "locker_updates"}, True),
    ],
)
async def test_publish_permissions(server, role, sub, payload, allowed) -> None:
    client = await connect(server, LOCKERS, role=role, sub=sub)
    ack = await client.call("publish", payload, LOCKERS)
    if allowed:
        assert ack["ok"] is True, ack
    else:
        assert ack == {"ok": False, "error": ack["error"]}
        assert ack["error"]["code"] == "forbidden"


async def test_kiosk_system_status_only_for_component_kiosk(server) -> None:
    client = await connect(server, EVENTS, role="kiosk", sub="kiosk-1")
    status = {"type": "system_status", "data": {"status": "online", "health_score": 90}}
    status["data"]["component"] = "kiosk"
    assert (await client.call("publish", status, EVENTS))["ok"] is True
    status["data"]["component"] = "database"
    ack = await client.call("publish", status, EVENTS)
    assert ack["error"]["code"] == "forbidden"


async def test_help_status_updated_by_panel(server, http) -> None:
    opened = {
        "type": "help_requested",
        "data": {
            "id": 1,
            "kiosk_id": "kiosk-1",
            "category": "other",
            "status": "open",
            "created_at": "2026-11-26T19:00:00Z",
            "priority": "low",
        },
    }
    assert (await server.post_event(http, opened))[0] == 201
    client = await connect(server, HELP, role="panel")
    payload = {
        "type": "help_status_updated",
        "data": {
            "id": 1,
            "old_status": "open",
            "new_status": "assigned",
            "updated_at": "2026-11-26T19:00:00+01:00",
        },
    }
    ack = await client.call("publish", payload, HELP)
    assert ack["ok"] is True and ack["event"]["room"] == "help_requests"


# -- rooms and fallback ------------------------------------------------------------


async def test_subscribe_rules(server) -> None:
    client = await connect(server, [LOCKERS, EVENTS], role="panel")
    assert await client.call("subscribe", {"room": "locker_updates"}, LOCKERS) == {"ok": True}
    assert await client.call("unsubscribe", {"room": "locker_updates"}, LOCKERS) == {"ok": True}
    forbidden = await client.call("subscribe", {"room": "kiosk:kiosk-1"}, EVENTS)
    assert forbidden["error"]["code"] == "forbidden"
    unknown = await client.call("subscribe", {"room": "help_requests"}, LOCKERS)
    assert unknown["error"]["code"] == "bad_request"
    assert (await client.call("subscribe", "locker_updates", LOCKERS))["ok"] is False


async def test_room_members_only_unless_room_is_empty(server) -> None:
    member = await connect(server, LOCKERS, role="panel", sub="member")
    other = await connect(server, LOCKERS, role="panel", sub="other")
    publisher = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
    for c in (member, other):
        await c.wait_events(LOCKERS, "replay_complete", 1)

    # empty room: falls back to every connection of the namespace
    first = (await publisher.call("publish", locker_event(0), LOCKERS))["event"]
    await member.wait_events(LOCKERS, "locker_state_changed", 1)
    await other.wait_events(LOCKERS, "locker_state_changed", 1)

    # a member: only members get it
    assert (await member.call("subscribe", {"room": "locker_updates"}, LOCKERS))["ok"]
    second = (await publisher.call("publish", locker_event(1), LOCKERS))["event"]
    got = await member.wait_events(LOCKERS, "locker_state_changed", 2)
    assert [e["seq"] for e in got] == [first["seq"], second["seq"]]
    # a third event to the member proves the other's stream has had time to show the second
    third = (await publisher.call("publish", locker_event(2), LOCKERS))["event"]
    await member.wait_events(LOCKERS, "locker_state_changed", 3)
    assert [e["seq"] for e in other.events(LOCKERS, "locker_state_changed")] == [first["seq"]]
    assert third["seq"] == 3
    stats = await server.app[__import__("lockerbus.app").app.STATS]()
    assert stats["fallback_broadcasts"][LOCKERS] == 1


async def test_connection_events_are_published_on_events_namespace(server) -> None:
    watcher = await connect(server, EVENTS, role="admin", auth={"replay": False})
    await watcher.wait_events(EVENTS, "replay_complete", 1)
    other = await connect(server, LOCKERS, role="panel", sub="panel-7")
    got = await watcher.wait_events(EVENTS, "connection", 1)
    data = got[-1]["data"]
    assert data["namespace"] == LOCKERS and data["userId"] == "panel-7"
    assert data["connection_count"] == 1
    await other.close()
    gone = await watcher.wait_events(EVENTS, "disconnection", 1)
    assert gone[-1]["data"]["connection_count"] == 0


# -- replay ---------------------------------------------------------------------


async def publish_many(server, http, count: int, start: int = 0) -> list[dict[str, Any]]:
    out = []
    for n in range(start, start + count):
        status, body = await server.post_event(http, locker_event(n))
        assert status == 201, body
        out.append(body)
    return out


async def test_replay_by_last_seq_recovers(server, http) -> None:
    events = await publish_many(server, http, 5)
    epoch = events[0]["epoch"]
    client = await connect(server, LOCKERS, auth={"last_seq": 2, "epoch": epoch})
    complete = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    replayed = client.events(LOCKERS, "locker_state_changed")
    assert [e["seq"] for e in replayed] == [3, 4, 5]
    assert all(e["replayed"] is True for e in replayed)
    assert complete == {
        "namespace": LOCKERS,
        "count": 3,
        "last_seq": 5,
        "epoch": epoch,
        "recovered": True,
    }
    assert client.names(LOCKERS)[-1] == "replay_complete"


async def test_replay_with_other_epoch_is_not_recovered(server, http) -> None:
    await publish_many(server, http, 3)
    client = await connect(server, LOCKERS, auth={"last_seq": 1, "epoch": "some-other-epoch"})
    complete = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["recovered"] is False
    assert [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")] == [1, 2, 3]


async def test_replay_of_too_many_is_not_recovered(server_factory, http) -> None:
    server = await server_factory(replay_buffer_size=3)
    await publish_many(server, http, 6)
    client = await connect(server, LOCKERS, auth={"last_seq": 1})
    complete = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["recovered"] is False and complete["count"] == 3
    assert [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")] == [4, 5, 6]


async def test_replay_since_and_disabled_and_default_window(server, http) -> None:
    events = await publish_many(server, http, 3)
    since = await connect(server, LOCKERS, auth={"since": events[1]["timestamp"]})
    complete = (await since.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["recovered"] is None and complete["last_seq"] == 3
    assert [e["seq"] for e in since.events(LOCKERS, "locker_state_changed")][-1] == 3
    replayed = since.events(LOCKERS, "locker_state_changed")
    assert all(e["timestamp"] >= events[1]["timestamp"] for e in replayed)

    off = await connect(server, LOCKERS, auth={"replay": False})
    complete = (await off.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete == {
        "namespace": LOCKERS,
        "count": 0,
        "last_seq": 3,
        "epoch": events[0]["epoch"],
        "recovered": None,
    }
    assert off.events(LOCKERS, "locker_state_changed") == []

    default = await connect(server, LOCKERS)
    complete = (await default.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["count"] == 3 and complete["recovered"] is None


async def test_default_window_zero_replays_nothing(server_factory, http) -> None:
    server = await server_factory(replay_window_minutes=0)
    await publish_many(server, http, 2)
    client = await connect(server, LOCKERS)
    complete = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["count"] == 0 and complete["last_seq"] == 2


async def test_replay_under_load_is_gap_free_and_ordered(server, http) -> None:
    await publish_many(server, http, 50)
    publisher = await connect(server, LOCKERS, role="gateway", auth={"replay": False})

    async def publish_more() -> None:
        for n in range(300):
            ack = await publisher.call("publish", locker_event(n), LOCKERS)
            assert ack["ok"], ack

    task = asyncio.create_task(publish_more())
    clients = []
    for last in (10, 25, 40):
        clients.append(await connect(server, LOCKERS, auth={"last_seq": last}))
    await task
    for client, last in zip(clients, (10, 25, 40), strict=True):
        await client.wait_for(
            lambda c=client: any(e["seq"] == 350 for e in c.events(LOCKERS, "locker_state_changed"))
        )
        seqs = [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")]
        assert seqs == list(range(last + 1, 351)), f"gap or duplicate after {last}"
        names = client.names(LOCKERS)
        marker = names.index("replay_complete")
        complete = client.events(LOCKERS, "replay_complete")[0]
        assert complete["recovered"] is True
        live = client.events(LOCKERS, "locker_state_changed")[complete["count"] :]
        assert all("replayed" not in e for e in live)
        assert all(n == "locker_state_changed" for n in names[:marker])


async def test_reconnect_with_last_seq_misses_nothing(server, http) -> None:
    await publish_many(server, http, 3)
    client = await connect(server, LOCKERS, auth={"last_seq": 0})
    await client.wait_events(LOCKERS, "replay_complete", 1)
    seen = client.events(LOCKERS, "locker_state_changed")
    last = seen[-1]
    gateway = server.app[__import__("lockerbus.app").app.GATEWAY]
    sid = client.sio.get_sid(LOCKERS)
    await gateway.sio.disconnect(sid, namespace=LOCKERS)
    await client.wait_events(LOCKERS, "disconnect", 1)
    await publish_many(server, http, 4, start=3)
    again = await connect(server, LOCKERS, auth={"last_seq": last["seq"], "epoch": last["epoch"]})
    complete = (await again.wait_events(LOCKERS, "replay_complete", 1))[0]
    assert complete["recovered"] is True
    assert [e["seq"] for e in again.events(LOCKERS, "locker_state_changed")] == [4, 5, 6, 7]


# -- in-process API, transport details ---------------------------------------------


async def test_in_process_emit_api_reaches_subscribers(server) -> None:
    from lockerbus.app import BUS

    watcher = await connect(server, [LOCKERS, HELP, EVENTS], role="admin", auth={"replay": False})
    await watcher.wait_events(EVENTS, "replay_complete", 1)
    bus = server.app[BUS]
    locker = await bus.emit_locker_state_changed(
        "locker-1", "closed", "open", "kiosk-1", user_id="user-123", metadata={"rfid": "C1"}
    )
    help_event = await bus.emit_help_requested(
        {
            "id": 1,
            "kiosk_id": "kiosk-1",
            "category": "access_issue",
            "status": "open",
            "created_at": "2026-11-26T19:00:00Z",
            "note": "Cannot open locker",
        },
        "high",
    )
    status = await bus.emit_system_status("database", "degraded", 61.5, metrics={"cpu_usage": 93})
    applied = await bus.emit_command_applied(
        {
            "id": "cmd-123",
            "type": "open",
            "lockerId": "locker-1",
            "issued_by": "admin-user",
            "issued_at": "2026-11-26T19:00:00Z",
        },
        {"success": True, "timestamp": "2026-11-26T19:00:01Z", "execution_time_ms": 150},
    )
    assert help_event["data"]["priority"] == "high"
    assert (await watcher.wait_events(LOCKERS, "locker_state_changed", 1))[0] == locker
    assert (await watcher.wait_events(HELP, "help_requested", 1))[0] == help_event
    assert (await watcher.wait_events(EVENTS, "system_status", 1))[0] == status
    assert (await watcher.wait_events(EVENTS, "command_applied", 1))[0] == applied


async def test_in_process_emit_validates(server) -> None:
    from lockerbus.app import BUS
    from lockerbus.errors import EventValidationError

    with pytest.raises(EventValidationError) as info:
        await server.app[BUS].emit_locker_state_changed("locker-1", "invalid-state", "open", "k1")
    assert "data.oldState" in info.value.fields


async def test_websocket_compression_is_refused_by_default(server_factory, http) -> None:
    for enabled in (False, True):
        srv = await server_factory(websocket_compression=enabled)
        url = f"{srv.url}/socket.io/?EIO=4&transport=websocket"
        async with http.ws_connect(url, compress=15) as ws:
            assert bool(ws.compress) is enabled


async def test_publish_of_a_newer_minor_drops_unknown_fields(server) -> None:
    client = await connect(server, LOCKERS, role="gateway")
    payload = locker_event(0)
    payload["version"] = "1.7"
    payload["data"]["colour"] = "red"
    ack = await client.call("publish", payload, LOCKERS)
    assert ack["ok"] is True, ack
    assert "colour" not in ack["event"]["data"]
    assert ack["event"]["version"] == "1.0"
    payload["version"] = "1.0"
    strict = await client.call("publish", payload, LOCKERS)
    assert strict["error"]["fields"] == {"data.colour": ["Unknown field."]}


async def test_subscribe_fills_the_gap_since_the_connection_last_heard(server, http) -> None:
    member = await connect(server, LOCKERS, auth={"replay": False})
    await member.wait_events(LOCKERS, "replay_complete", 1)
    assert (await member.call("subscribe", {"room": "locker_updates"}, LOCKERS))["ok"]
    late = await connect(server, LOCKERS, auth={"replay": False})
    await late.wait_events(LOCKERS, "replay_complete", 1)
    missed = (await publish_many(server, http, 2))[-1]  # to members only: late is not one
    await member.wait_events(LOCKERS, "locker_state_changed", 2)
    assert (await late.call("subscribe", {"room": "locker_updates"}, LOCKERS)) == {"ok": True}
    after = (await publish_many(server, http, 1, start=2))[0]
    got = await late.wait_events(LOCKERS, "locker_state_changed", 3)
    assert [e["seq"] for e in got] == [1, 2, 3]
    assert got[1]["id"] == missed["id"]
    assert got[1]["replayed"] is True
    assert got[2]["id"] == after["id"]
    assert "replayed" not in got[2]
    # subscribing again sends nothing twice
    assert (await late.call("subscribe", {"room": "locker_updates"}, LOCKERS)) == {"ok": True}
    await publish_many(server, http, 1, start=3)
    got = await late.wait_events(LOCKERS, "locker_state_changed", 4)
    assert [e["seq"] for e in got] == [1, 2, 3, 4]
