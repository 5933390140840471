"""Scopes and filters on the paths outside socket delivery (contract §2, §10).

A real server on a free port, real python-socketio clients and HTTP: the
envelope's tags and source, scoped HTTP reads, scoped publish and command,
previous secrets, and refused namespaces.
"""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest

from lockerbus.auth import issue_token
from lockerbus.filters import parse_filter
from tests.eventdata import full_data, now_iso
from tests.support import SECRET, RunningServer, connect, locker_event

OLD_SECRET = "an-old-secret-that-is-still-accepted-000000"


def scoped_headers(role: str, sub: str, scope: dict[str, Any] | None = None) -> dict[str, str]:
    token = issue_token(SECRET, role, sub, 600, scope=parse_filter(scope) if scope else None)
    return {"Authorization": f"Bearer {token}"}


async def get(
    server: RunningServer, http: aiohttp.ClientSession, path: str, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.get(f"{server.url}{path}", headers=headers) as resp:
        return resp.status, await resp.json()


async def post(
    server: RunningServer,
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> tuple[int, Any]:
    async with http.post(f"{server.url}{path}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def help_request(help_id: int, kiosk: str) -> dict[str, Any]:
    data = {**full_data("help_requested"), "id": help_id, "kiosk_id": kiosk, "status": "open"}
    return {"type": "help_requested", "data": data}


def help_update(help_id: int) -> dict[str, Any]:
    data = {"id": help_id, "old_status": "open", "new_status": "assigned", "updated_at": now_iso()}
    return {"type": "help_status_updated", "data": data}


async def fleet(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """Events of kiosk-1 and kiosk-2 in every namespace, published by a gateway."""
    for n, kiosk in enumerate(["kiosk-1", "kiosk-2", "kiosk-1", "kiosk-2"]):
        assert (await server.post_event(http, locker_event(n, kiosk)))[0] == 201
    for help_id, kiosk in ((1, "kiosk-1"), (2, "kiosk-2")):
        assert (await server.post_event(http, help_request(help_id, kiosk)))[0] == 201
    status = {"component": "gateway", "status": "online", "health_score": 90}
    assert (await server.post_event(http, {"type": "system_status", "data": status}))[0] == 201


async def test_envelope_carries_tags_and_source(server, http) -> None:
    status, event = await server.post_event(http, locker_event(1, "kiosk-7"), "kiosk", "kiosk-7")
    assert status == 201
    assert event["source"] == {"sub": "kiosk-7", "role": "kiosk"}
    assert event["tags"] == {"kiosk": "kiosk-7", "locker": "L1", "state": "closed"}
    # over HTTP history too (the stored form)
    _, page = await get(server, http, "/api/events?namespace=/ws/lockers", server.headers())
    assert page["events"][-1]["tags"] == event["tags"]
    assert page["events"][-1]["source"] == event["source"]


async def test_help_status_updated_takes_the_kiosk_of_its_request(server, http) -> None:
    assert (await server.post_event(http, help_request(41, "kiosk-5")))[0] == 201
    status, update = await server.post_event(http, help_update(41), "panel", "panel-1")
    assert status == 201, update
    assert update["tags"] == {"kiosk": "kiosk-5", "help": "41", "status": "assigned"}
    assert update["source"] == {"sub": "panel-1", "role": "panel"}
    status, unknown = await server.post_event(http, help_update(999), "panel", "panel-1")
    assert (status, unknown["error"]["code"]) == (409, "conflict"), "unknown id (§11)"


async def test_kiosk_system_status_is_tagged_with_its_kiosk(server) -> None:
    kiosk = await connect(server, "/ws/events", role="kiosk", sub="kiosk-3")
    data = {"component": "kiosk", "status": "online", "health_score": 100}
    ack = await kiosk.call("publish", {"type": "system_status", "data": data}, "/ws/events")
    assert ack["ok"], ack
    assert ack["event"]["tags"] == {"component": "kiosk", "status": "online", "kiosk": "kiosk-3"}


async def test_kiosk_reads_only_its_own_kiosk_over_http(server, http) -> None:
    await fleet(server, http)
    # connections of panels and kiosks produce connection events in /ws/events
    await connect(server, "/ws/events", role="panel", sub="staff-1")
    kiosk = scoped_headers("kiosk", "kiosk-1")
    _, lockers = await get(server, http, "/api/events?namespace=/ws/lockers", kiosk)
    assert [e["data"]["kioskId"] for e in lockers["events"]] == ["kiosk-1", "kiosk-1"]
    assert lockers["has_more"] is False
    _, events = await get(server, http, "/api/events?namespace=/ws/events", kiosk)
    assert events["events"] == []  # a gateway's status and staff connections: not its kiosk
    _, everything = await get(server, http, "/api/events?namespace=/ws/events", server.headers())
    assert {e["type"] for e in everything["events"]} >= {"system_status", "connection"}
    _, board = await get(server, http, "/api/lockers", kiosk)
    assert {entry["kioskId"] for entry in board["lockers"]} == {"kiosk-1"}
    _, open_help = await get(server, http, "/api/help", kiosk)
    assert [r["kiosk_id"] for r in open_help["help_requests"]] == ["kiosk-1"]
    # an unscoped panel sees everything
    _, board = await get(server, http, "/api/lockers", server.headers("panel"))
    assert {entry["kioskId"] for entry in board["lockers"]} == {"kiosk-1", "kiosk-2"}


async def test_scoped_panel_reads_its_kiosks(server, http) -> None:
    await fleet(server, http)
    panel = scoped_headers("panel", "panel-2", {"kiosk": ["kiosk-2"]})
    _, page = await get(server, http, "/api/events?namespace=/ws/lockers", panel)
    assert {e["tags"]["kiosk"] for e in page["events"]} == {"kiosk-2"}
    _, open_help = await get(server, http, "/api/help", panel)
    assert [r["id"] for r in open_help["help_requests"]] == [2]


async def test_filter_narrows_and_counts_matches(server, http) -> None:
    await fleet(server, http)
    query = json.dumps({"kiosk": "kiosk-2"})
    path = f"/api/events?namespace=/ws/lockers&limit=1&filter={query}"
    _, first = await get(server, http, path, server.headers("panel"))
    assert [e["data"]["lockerId"] for e in first["events"]] == ["L1"]
    assert first["has_more"] is True
    after = first["last_seq"]
    _, second = await get(server, http, f"{path}&after_seq={after}", server.headers("panel"))
    assert [e["data"]["lockerId"] for e in second["events"]] == ["L3"]
    assert second["has_more"] is False
    # a filter never widens a scope: outside it, nothing matches
    kiosk = scoped_headers("kiosk", "kiosk-1")
    _, none = await get(server, http, f"/api/events?namespace=/ws/lockers&filter={query}", kiosk)
    assert none["events"] == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [("{", "not valid JSON"), ('{"kiosk": []}', "1 to 100"), ('{"kiosk": 1}', "string")],
)
async def test_malformed_filter_is_bad_request(server, http, value: str, problem: str) -> None:
    path = f"/api/events?namespace=/ws/lockers&filter={value}"
    status, body = await get(server, http, path, server.headers("panel"))
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert problem in body["error"]["message"]


async def test_scoped_publish_outside_scope_is_forbidden(server, http) -> None:
    gateway = scoped_headers("gateway", "gw-east", {"kiosk": ["kiosk-1"]})
    status, body = await post(server, http, "/api/events", locker_event(1, "kiosk-2"), gateway)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _ = await post(server, http, "/api/events", locker_event(1, "kiosk-1"), gateway)
    assert status == 201
    # a panel scoped to kiosk-1 may not update kiosk-2's help request, over the socket too
    assert (await server.post_event(http, help_request(7, "kiosk-2")))[0] == 201
    token = issue_token(SECRET, "panel", "p-1", 600, scope=parse_filter({"kiosk": "kiosk-1"}))
    panel = await connect(server, "/ws/help", token=token)
    ack = await panel.call("publish", help_update(7), "/ws/help")
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    # nothing was stored
    _, page = await get(server, http, "/api/events?namespace=/ws/help", server.headers())
    assert [e["type"] for e in page["events"]] == ["help_requested"]


async def test_scoped_command_outside_scope_is_forbidden(server, http) -> None:
    token = issue_token(SECRET, "panel", "p-1", 600, scope=parse_filter({"kiosk": "kiosk-1"}))
    panel = await connect(server, "/ws/events", token=token)
    outside = await panel.call("command", {"type": "open", "kioskId": "kiosk-2"}, "/ws/events")
    assert outside["ok"] is False and outside["error"]["code"] == "forbidden"
    inside = await panel.call("command", {"type": "open", "kioskId": "kiosk-1"}, "/ws/events")
    assert inside["ok"] is True
    assert inside["event"]["data"]["result"]["error"] == "kiosk_offline"
    headers = scoped_headers("panel", "p-1", {"kiosk": "kiosk-1"})
    body = {"type": "open", "kioskId": "kiosk-2"}
    status, answer = await post(server, http, "/api/commands", body, headers)
    assert (status, answer["error"]["code"]) == (403, "forbidden")


async def test_previous_secrets_still_verify(server_factory, http) -> None:
    server = await server_factory(previous_secrets=(OLD_SECRET,))
    old = issue_token(OLD_SECRET, "panel", "panel-old", 600)
    status, _ = await get(server, http, "/api/lockers", {"Authorization": f"Bearer {old}"})
    assert status == 200
    client = await connect(server, "/ws/lockers", token=old)
    assert client.sio.connected
    unknown = issue_token("a-secret-nobody-configured-000000000000", "panel", "p", 600)
    status, body = await get(server, http, "/api/lockers", {"Authorization": f"Bearer {unknown}"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    # without the previous secret configured, the old token is refused
    plain = await server_factory()
    status, _ = await get(plain, http, "/api/lockers", {"Authorization": f"Bearer {old}"})
    assert status == 401


async def test_bad_scope_claim_is_unauthorized(server, http) -> None:
    import jwt

    claims = {"sub": "p", "role": "panel", "exp": 2**40, "scope": {"kiosk": []}}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    status, body = await get(server, http, "/api/lockers", {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert "scope" in body["error"]["message"]


@pytest.mark.parametrize("namespace", ["/", "/other"])
@pytest.mark.parametrize("with_token", [True, False])
async def test_other_namespaces_are_refused(server, namespace: str, with_token: bool) -> None:
    token = server.token("admin") if with_token else ""
    client = await connect(server, namespace, token=token, expect_refusal=True)
    await client.wait_for(lambda: namespace in client.connect_errors)
    assert namespace not in client.sio.namespaces
    # the three namespaces still accept the same token
    if with_token:
        ok = await connect(server, "/ws/lockers", token=token)
        assert "/ws/lockers" in ok.sio.namespaces


async def page_all(
    server: RunningServer,
    http: aiohttp.ClientSession,
    namespace: str,
    headers: dict[str, str],
    limit: int,
    client_filter: dict[str, Any] | None,
) -> list[Any]:
    """Every event a caller reads in ``namespace``, paging with ``limit``."""
    events: list[Any] = []
    after = 0
    while True:
        path = f"/api/events?namespace={namespace}&limit={limit}&after_seq={after}"
        if client_filter is not None:
            path += f"&filter={json.dumps(client_filter)}"
        status, page = await get(server, http, path, headers)
        assert status == 200, page
        assert len(page["events"]) <= limit
        events += page["events"]
        if not page["has_more"]:
            return events
        assert page["events"], "has_more with an empty page"
        after = page["last_seq"]


async def test_http_reads_are_exactly_the_scope_and_filter(server, http) -> None:
    """Random fleets, scopes and filters: a page never shows an event outside them."""
    rng = random.Random(14)
    kiosks = ["kiosk-1", "kiosk-2", "kiosk-3"]
    for n in range(60):
        kiosk = rng.choice(kiosks)
        body = locker_event(n, kiosk) if n % 3 else help_request(n, kiosk)
        assert (await server.post_event(http, body))[0] == 201
    await connect(server, "/ws/events", role="panel", sub="staff")  # a connection event
    namespaces = ["/ws/lockers", "/ws/help", "/ws/events"]
    everything = {
        ns: await page_all(server, http, ns, server.headers(), 1000, None) for ns in namespaces
    }
    for _ in range(12):
        role = rng.choice(["kiosk", "panel", "gateway"])
        sub = rng.choice(kiosks)
        scope = rng.choice([None, {"kiosk": rng.sample(kiosks, 2)}, {"state": "open"}])
        client = rng.choice([None, {"kiosk": rng.choice(kiosks)}, {"state": ["closed"]}])
        headers = scoped_headers(role, sub, scope)
        for ns in namespaces:
            got = await page_all(server, http, ns, headers, rng.choice([1, 3, 50]), client)
            want = [
                e
                for e in everything[ns]
                if reference(scope, e["tags"])
                and reference(client, e["tags"])
                and (role != "kiosk" or e["tags"].get("kiosk") == sub)
            ]
            assert [e["seq"] for e in got] == [e["seq"] for e in want], (role, scope, client)


def reference(spec: dict[str, Any] | None, tags: dict[str, str]) -> bool:
    """§10's matching rule, written out."""
    for key, want in (spec or {}).items():
        if tags.get(key) not in ([want] if isinstance(want, str) else want):
            return False
    return True
