"""Idempotent and batch publish (contract §12) against real servers and stores."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerbus.auth import Principal
from lockerbus.bus import EventBus
from lockerbus.errors import LockerbusError
from lockerbus.metrics import Metrics
from lockerbus.service import EventService
from lockerbus.store.memory import MemoryEventStore
from tests.support import (
    close_clients,
    connect,
    help_requested,
    locker_event,
    post_event,
    start_server,
)

LOCKERS = "/ws/lockers"
ANY_64_BIT_MESSAGE = "Integer out of range: at most 64 bits (-2**63 to 2**64-1)."


def with_id(payload: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {**payload, "id": event_id or str(uuid.uuid4())}


async def post_batch(
    server: Any,
    http: aiohttp.ClientSession,
    items: Any,
    role: str = "gateway",
    sub: str | None = None,
) -> tuple[int, Any]:
    return await post_event(server, http, items, role, sub, path="/api/events/batch")


async def history(server: Any, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    params = {"namespace": LOCKERS, "limit": "1000"}
    async with http.get(
        f"{server.url}/api/events", params=params, headers=server.headers()
    ) as resp:
        events: list[dict[str, Any]] = (await resp.json())["events"]
    return events


async def test_socket_publish_with_a_held_id_answers_the_stored_event_once(server) -> None:
    panel = await connect(server, LOCKERS, auth={"replay": False})
    await panel.wait_events(LOCKERS, "replay_complete", 1)
    await panel.call("subscribe", {"room": "locker_updates"}, LOCKERS)
    gateway = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
    payload = with_id(locker_event(0))
    first = await gateway.call("publish", payload, LOCKERS)
    assert first["ok"] is True and "duplicate" not in first
    assert first["event"]["id"] == payload["id"]
    again = await gateway.call("publish", payload, LOCKERS)
    assert again == {"ok": True, "event": first["event"], "duplicate": True}
    marker = await gateway.call("publish", locker_event(1), LOCKERS)
    # the marker's arrival proves the duplicate was not broadcast before it
    await panel.wait_for(
        lambda: (
            marker["event"]["seq"]
            in [e["seq"] for e in panel.events(LOCKERS, "locker_state_changed")]
        )
    )
    assert [e["seq"] for e in panel.events(LOCKERS, "locker_state_changed")] == [1, 2]


async def test_http_publish_with_a_held_id_is_200_duplicate(server, http) -> None:
    payload = with_id(locker_event(0))
    status, first = await server.post_event(http, payload)
    assert status == 201 and first["id"] == payload["id"]
    status, again = await server.post_event(http, payload)
    assert status == 200 and again == {"event": first, "duplicate": True}
    # an upper-case spelling is the same id
    status, again = await server.post_event(http, {**payload, "id": payload["id"].upper()})
    assert status == 200 and again["duplicate"] is True
    assert [e["seq"] for e in await history(server, http)] == [1]


async def test_same_id_with_other_content_or_scope_is_conflict(server, http) -> None:
    event_id = str(uuid.uuid4())
    status, _ = await server.post_event(http, with_id(locker_event(0, "kiosk-1"), event_id))
    assert status == 201
    status, body = await server.post_event(http, with_id(locker_event(2, "kiosk-1"), event_id))
    assert status == 409 and body["error"]["code"] == "conflict"
    other_type = {
        "type": "system_status",
        "data": {"component": "gateway", "status": "online", "health_score": 90},
        "id": event_id,
    }
    status, body = await server.post_event(http, other_type)
    assert status == 409 and body["error"]["code"] == "conflict"
    kiosk = await connect(server, LOCKERS, role="kiosk", sub="kiosk-2", auth={"replay": False})
    # kiosk-2 resending kiosk-1's event: forbidden by its data before the id is looked at
    ack = await kiosk.call("publish", with_id(locker_event(0, "kiosk-1"), event_id), LOCKERS)
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    # the same id for kiosk-2's own content: held by an event outside its scope
    ack = await kiosk.call("publish", with_id(locker_event(0, "kiosk-2"), event_id), LOCKERS)
    assert ack["ok"] is False and ack["error"]["code"] == "conflict"
    assert [e["seq"] for e in await history(server, http)] == [1]


@pytest.mark.parametrize("bad", ["not-a-uuid", 12, "", None, "0" * 36, str(uuid.uuid4()) + "x"])
async def test_a_bad_id_is_a_validation_error_naming_id(server, http, bad) -> None:
    status, body = await server.post_event(http, {**locker_event(0), "id": bad})
    assert status == 422
    assert body["error"]["code"] == "validation_error" and "id" in body["error"]["fields"]


async def test_batch_answers_each_item_in_order(server, http) -> None:
    held_id = str(uuid.uuid4())
    status, held = await server.post_event(http, with_id(locker_event(0), held_id))
    assert status == 201
    repeated = str(uuid.uuid4())
    items = [
        locker_event(1),
        {"type": "nope", "data": {}},
        with_id(locker_event(2), repeated),
        with_id(locker_event(0), held_id),
        {**locker_event(3), "id": "bad"},
        with_id(locker_event(2), repeated),
        with_id(locker_event(4), held_id),
        locker_event(5),
    ]
    status, body = await post_batch(server, http, {"events": items})
    assert status == 200
    results = body["results"]
    assert len(results) == len(items)
    assert [r["ok"] for r in results] == [True, False, True, True, False, True, False, True]
    assert results[1]["error"]["code"] == "unknown_type"
    assert results[3] == {"ok": True, "event": held, "duplicate": True}
    assert results[4]["error"]["code"] == "validation_error"
    assert results[5] == {"ok": True, "event": results[2]["event"], "duplicate": True}
    assert results[6]["error"]["code"] == "conflict"
    stored = [results[i]["event"]["seq"] for i in (0, 2, 7)]
    assert stored == [2, 3, 4], "seqs in item order"
    assert [e["seq"] for e in await history(server, http)] == [1, 2, 3, 4]


async def test_batch_over_the_limit_is_413_and_stores_nothing(server, http) -> None:
    status, body = await post_batch(server, http, {"events": [locker_event(0)] * 1001})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert await history(server, http) == []
    status, body = await post_batch(
        server, http, {"events": [locker_event(n) for n in range(1000)]}
    )
    assert status == 200 and all(r["ok"] for r in body["results"])


@pytest.mark.parametrize("body", [[], {"events": {}}, {"events": [], "more": 1}, {}])
async def test_a_malformed_batch_is_bad_request(server, http, body) -> None:
    status, answer = await post_batch(server, http, body)
    assert status == 400 and answer["error"]["code"] == "bad_request"


async def test_kiosk_batch_with_another_kiosks_item(server, http) -> None:
    items = [locker_event(0, "kiosk-1"), locker_event(1, "kiosk-2"), locker_event(2, "kiosk-1")]
    status, body = await post_batch(server, http, {"events": items}, role="kiosk", sub="kiosk-1")
    assert status == 200
    assert [r["ok"] for r in body["results"]] == [True, False, True]
    assert body["results"][1]["error"]["code"] == "forbidden"
    assert [e["data"]["kioskId"] for e in await history(server, http)] == ["kiosk-1", "kiosk-1"]


async def test_batch_needs_a_token(server, http) -> None:
    async with http.post(f"{server.url}/api/events/batch", json={"events": []}) as resp:
        assert resp.status == 401


async def test_idempotency_survives_a_sqlite_restart(server_factory, http, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    payload = with_id(locker_event(0))
    first = await start_server(store=store)
    try:
        status, stored = await first.post_event(http, payload)
        assert status == 201
    finally:
        await close_clients()
        await first.stop()
    second = await server_factory(store=store)
    status, again = await second.post_event(http, payload)
    assert status == 200 and again == {"event": stored, "duplicate": True}
    status, body = await post_batch(second, http, {"events": [payload]})
    assert body["results"] == [{"ok": True, "event": stored, "duplicate": True}]
    assert [e["seq"] for e in await history(second, http)] == [1]


@pytest.mark.needs_redis
async def test_idempotency_across_two_instances_on_one_redis(
    server_factory, http, redis_shared, tmp_path: Path
) -> None:
    from tests.redis_support import shared_url

    store = f"{shared_url()}?prefix=ingest-{tmp_path.name}"
    a = await server_factory(store=store)
    b = await server_factory(store=store)
    payload = with_id(locker_event(0))
    status, stored = await a.post_event(http, payload)
    assert status == 201
    status, again = await b.post_event(http, payload)
    assert status == 200 and again == {"event": stored, "duplicate": True}
    gateway = await connect(b, LOCKERS, role="gateway", auth={"replay": False})
    ack = await gateway.call("publish", payload, LOCKERS)
    assert ack == {"ok": True, "event": stored, "duplicate": True}
    status, body = await post_batch(b, http, {"events": [payload, locker_event(1)]})
    assert body["results"][0] == {"ok": True, "event": stored, "duplicate": True}
    assert body["results"][1]["event"]["seq"] == 2
    assert [e["seq"] for e in await history(a, http)] == [1, 2]


async def test_a_lone_surrogate_is_a_validation_error_naming_the_field(server) -> None:
    gateway = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
    payload = locker_event(0)
    payload["data"]["reason"] = "x\ud800"
    ack = await gateway.call("publish", payload, LOCKERS)
    assert ack["ok"] is False
    assert ack["error"]["code"] == "validation_error"
    assert list(ack["error"]["fields"]) == ["data.reason"]
    payload = locker_event(0)
    payload["data"]["metadata"] = {"k\udc00": 1}
    ack = await gateway.call("publish", payload, LOCKERS)
    assert ack["error"]["code"] == "validation_error"
    assert list(ack["error"]["fields"]) == ["data.metadata.k\\udc00"]
    ack = await gateway.call("publish", {**locker_event(0), "room": "kiosk:\ud800"}, LOCKERS)
    assert ack["error"]["code"] == "validation_error"
    assert list(ack["error"]["fields"]) == ["room"]
    ok = await gateway.call("publish", locker_event(0), LOCKERS)
    assert ok["ok"] is True and ok["event"]["seq"] == 1, "nothing failed in the store"


async def post_raw(server: Any, http: aiohttp.ClientSession, body: bytes) -> tuple[int, Any]:
    headers = {**server.headers("gateway"), "Content-Type": "application/json"}
    async with http.post(f"{server.url}/api/events", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40])
async def test_an_integer_beyond_64_bits_is_refused_naming_the_field_on_every_path(
    server, http, number: int
) -> None:
    # orjson read such a literal as a float over HTTP (the number silently changed)
    payload = locker_event(0)
    payload["data"]["metadata"] = {"count": number}
    status, body = await post_event(server, http, payload)
    assert status == 422, body
    assert body["error"]["fields"] == {"data.metadata.count": [ANY_64_BIT_MESSAGE]}
    gateway = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
    ack = await gateway.call("publish", payload, LOCKERS)
    assert ack["error"]["code"] == "validation_error"
    assert ack["error"]["fields"] == body["error"]["fields"]
    _, batch = await post_batch(server, http, {"events": [payload, locker_event(1)]})
    assert batch["results"][0]["error"]["fields"] == body["error"]["fields"]
    assert batch["results"][1]["ok"] is True and batch["results"][1]["event"]["seq"] == 1


async def test_the_64_bit_limits_are_kept_exactly(server, http) -> None:
    payload = locker_event(0)
    payload["data"]["metadata"] = {"max": 2**64 - 1, "min": -(2**63), "text": "1" * 40}
    status, body = await post_event(server, http, payload)
    assert status == 201, body
    assert body["data"]["metadata"] == payload["data"]["metadata"]
    async with http.get(
        f"{server.url}/api/events?namespace={LOCKERS}", headers=server.headers("admin")
    ) as resp:
        [stored] = (await resp.json())["events"]
    assert stored["data"]["metadata"] == payload["data"]["metadata"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "locker_state_changed", "n": 12345678901234567890123, "x": NaN}',
        b'{"n": 12345678901234567890123, "deep": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b'{"n": 12345678901234567890123, "cut": ',
    ],
    ids=["nan", "too-deep", "truncated"],
)
async def test_a_body_with_long_numbers_is_still_checked_as_json(server, http, raw: bytes) -> None:
    status, body = await post_raw(server, http, raw)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert body["error"]["message"].startswith("body is not valid JSON")


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from(["lockerId", "kioskId", "reason", "userId", "metadata", "room"]),
    # hypothesis leaves surrogates out of characters() unless asked
    text=st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=8),
)
async def test_no_text_in_a_publish_is_a_store_failure(field: str, text: str) -> None:
    store = MemoryEventStore()
    await store.start()
    bus = EventBus(EventService(), store, Metrics())
    payload: dict[str, Any] = locker_event(0)
    if field == "room":
        payload["room"] = f"kiosk:{text}"
    elif field == "metadata":
        payload["data"]["metadata"] = {text: text}
    else:
        payload["data"][field] = text
    error: LockerbusError | None = None
    try:
        published = await bus.publish_request(payload, principal=Principal("gw", "gateway"))
        assert published.event["seq"] == 1
    except LockerbusError as exc:
        error = exc
    finally:
        await store.close()
    if error is not None:
        assert error.code != "store_unavailable", error.message
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            assert error.code == "validation_error", error.message
            assert error.fields


@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.needs_redis)]
)
async def test_a_resent_help_request_is_a_duplicate_not_a_state_conflict(
    server_factory, http, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """§12 before §11: the same id again is the stored event; a new id is the conflict."""
    store = "memory"
    if backend == "sqlite":
        store = f"sqlite:///{tmp_path / 'events.db'}"
    elif backend == "redis":
        request.getfixturevalue("redis_shared")
        from tests.redis_support import shared_url

        store = f"{shared_url()}?prefix=help-{tmp_path.name}"
    server = await server_factory(store=store)
    payload = with_id(help_requested(5))
    status, stored = await server.post_event(http, payload)
    assert status == 201
    status, again = await server.post_event(http, payload)
    assert status == 200 and again == {"event": stored, "duplicate": True}
    gateway = await connect(server, "/ws/help", role="gateway", auth={"replay": False})
    ack = await gateway.call("publish", payload, "/ws/help")
    assert ack == {"ok": True, "event": stored, "duplicate": True}
    fresh = with_id(help_requested(5))  # the open request again under a new id
    status, body = await post_batch(server, http, {"events": [payload, fresh, locker_event(0)]})
    assert status == 200
    results = body["results"]
    assert results[0] == {"ok": True, "event": stored, "duplicate": True}
    assert results[1]["ok"] is False and results[1]["error"]["code"] == "conflict"
    assert results[2]["ok"] is True, "a refused item fails alone"
    async with http.get(f"{server.url}/api/help", headers=server.headers("panel")) as resp:
        open_requests = (await resp.json())["help_requests"]
    assert [(r["id"], r["seq"]) for r in open_requests] == [(5, stored["seq"])]


async def test_a_duplicate_outside_the_callers_scope_tells_nothing_of_it(server, http) -> None:
    """A held id whose event lies outside the caller's scope is conflict, singly and in a
    batch, whatever the content; inside the scope the same resend is the duplicate."""
    held = with_id(locker_event(0, "kiosk-1"))
    status, stored = await server.post_event(http, held)
    assert status == 201
    # kiosk-2, its own content under kiosk-1's event id
    mine = with_id(locker_event(3, "kiosk-2"), held["id"])
    status, body = await post_batch(server, http, {"events": [mine]}, role="kiosk", sub="kiosk-2")
    [result] = body["results"]
    assert result["ok"] is False and result["error"]["code"] == "conflict"
    assert "content" not in result["error"]["message"]
    assert "kiosk-1" not in str(result)
    status, body = await post_batch(server, http, {"events": [held]}, role="kiosk", sub="kiosk-1")
    assert body["results"] == [{"ok": True, "event": stored, "duplicate": True}]
    assert [e["seq"] for e in await history(server, http)] == [1]
