"""Remote commands (contract §5) with real kiosk and panel clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import connect

EVENTS = "/ws/events"


def open_locker(kiosk: str = "kiosk-1", **extra: Any) -> dict[str, Any]:
    return {"type": "open", "kioskId": kiosk, "lockerId": "L9", **extra}


async def kiosk(server, answer: Any, sub: str = "kiosk-1", calls: list | None = None):
    async def on_command(command: dict[str, Any]) -> Any:
        if calls is not None:
            calls.append(command)
        if callable(answer):
            return await answer(command)
        return answer

    client = await connect(server, EVENTS, role="kiosk", sub=sub, handlers={"command": on_command})
    await client.wait_events(EVENTS, "replay_complete", 1)
    return client


async def test_command_round_trip(server) -> None:
    calls: list[dict[str, Any]] = []
    await kiosk(
        server, {"success": True, "message": "opened", "response_data": {"door": 9}}, calls=calls
    )
    watcher = await connect(server, EVENTS, role="admin", auth={"replay": False})
    await watcher.call("subscribe", {"room": "system_events"}, EVENTS)
    panel = await connect(server, EVENTS, role="panel", sub="panel-1")
    ack = await panel.call("command", open_locker(parameters={"hold_s": 3}), EVENTS)
    assert ack["ok"] is True, ack
    event = ack["event"]
    command, result = event["data"]["command"], event["data"]["result"]
    assert event["type"] == "command_applied"
    assert command["issued_by"] == "panel-1" and command["type"] == "open"
    assert command["parameters"] == {"hold_s": 3}
    assert calls[0]["id"] == command["id"] and calls[0]["issued_at"] == command["issued_at"]
    assert result["success"] is True and result["message"] == "opened"
    assert result["response_data"] == {"door": 9}
    assert result["execution_time_ms"] >= 0 and result["timestamp"].endswith("Z")
    # the broadcast carries the same event as the issuer's ack
    await watcher.wait_for(lambda: event in watcher.events(EVENTS, "command_applied"), timeout=5)


async def test_offline_kiosk(server) -> None:
    panel = await connect(server, EVENTS, role="gateway")
    ack = await panel.call("command", open_locker("kiosk-404"), EVENTS)
    assert ack["ok"] is True
    assert ack["event"]["data"]["result"]["success"] is False
    assert ack["event"]["data"]["result"]["error"] == "kiosk_offline"


async def test_timeout(server_factory) -> None:
    server = await server_factory(command_timeout_seconds=0.3)
    never = asyncio.Event()

    async def hang(command: dict[str, Any]) -> Any:
        await never.wait()

    await kiosk(server, hang)
    panel = await connect(server, EVENTS, role="panel")
    ack = await panel.call("command", open_locker(), EVENTS)
    result = ack["event"]["data"]["result"]
    assert result["error"] == "timeout" and result["success"] is False
    assert result["execution_time_ms"] >= 300
    never.set()


async def test_kiosk_disconnecting_mid_command(server) -> None:
    received = asyncio.Event()

    async def drop(command: dict[str, Any]) -> Any:
        received.set()
        await asyncio.Event().wait()

    kiosk_client = await kiosk(server, drop)
    panel = await connect(server, EVENTS, role="panel")
    pending = asyncio.create_task(panel.call("command", open_locker(), EVENTS))
    await received.wait()
    await kiosk_client.sio.eio.disconnect(abort=True)
    ack = await pending
    assert ack["event"]["data"]["result"]["error"] == "kiosk_disconnected"


@pytest.mark.parametrize("answer", ["yes", {"success": "yes"}, {"success": True, "extra": 1}, None])
async def test_malformed_kiosk_answer(server, answer) -> None:
    await kiosk(server, answer)
    panel = await connect(server, EVENTS, role="panel")
    ack = await panel.call("command", open_locker(), EVENTS)
    result = ack["event"]["data"]["result"]
    assert result["success"] is False and result["error"] == "bad_response"


async def test_kiosk_may_not_issue_commands_and_bad_commands_are_named(server) -> None:
    client = await connect(server, EVENTS, role="kiosk", sub="kiosk-1")
    ack = await client.call("command", open_locker(), EVENTS)
    assert ack["error"]["code"] == "forbidden"
    panel = await connect(server, [EVENTS, "/ws/lockers"], role="panel")
    bad = await panel.call("command", {"type": "explode", "kioskId": ""}, EVENTS)
    assert bad["error"]["code"] == "validation_error"
    assert set(bad["error"]["fields"]) == {"type", "kioskId"}
    elsewhere = await panel.call("command", open_locker(), "/ws/lockers")
    assert elsewhere["error"]["code"] == "bad_request"


async def test_idempotent_retry_runs_once(server) -> None:
    calls: list[dict[str, Any]] = []
    await kiosk(server, {"success": True}, calls=calls)
    panel = await connect(server, EVENTS, role="panel")
    first, second = await asyncio.gather(
        panel.call("command", open_locker(idempotency_key="k-1"), EVENTS),
        panel.call("command", open_locker(idempotency_key="k-1"), EVENTS),
    )
    third = await panel.call("command", open_locker(idempotency_key="k-1"), EVENTS)
    assert first["event"]["id"] == second["event"]["id"] == third["event"]["id"]
    assert len(calls) == 1
    other = await panel.call("command", open_locker(idempotency_key="k-2"), EVENTS)
    assert other["event"]["id"] != first["event"]["id"]
    assert len(calls) == 2


async def test_command_goes_to_one_connection_of_a_kiosk(server) -> None:
    calls: list[dict[str, Any]] = []
    await kiosk(server, {"success": True}, calls=calls)
    await kiosk(server, {"success": True}, calls=calls)
    panel = await connect(server, EVENTS, role="panel")
    ack = await panel.call("command", open_locker(), EVENTS)
    assert ack["event"]["data"]["result"]["success"] is True
    assert len(calls) == 1


async def test_command_over_http(server, http) -> None:
    await kiosk(server, {"success": True, "message": "ok"})
    async with http.post(
        f"{server.url}/api/commands", json=open_locker(), headers=server.headers("panel")
    ) as resp:
        assert resp.status == 201
        event = await resp.json()
    assert event["type"] == "command_applied" and event["data"]["result"]["success"] is True
    async with http.post(
        f"{server.url}/api/commands", json=open_locker(), headers=server.headers("kiosk")
    ) as resp:
        assert resp.status == 403
    async with http.post(
        f"{server.url}/api/commands", json={"type": "open"}, headers=server.headers("panel")
    ) as resp:
        assert resp.status == 422
        assert "kioskId" in (await resp.json())["error"]["fields"]
