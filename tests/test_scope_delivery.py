"""Scopes and filters on every socket read path (contract §3, §10).

A real server on a free port and real python-socketio clients: live room
deliveries, the fallback, replay on connect, subscribe gap-fill, ``auth.filter``
and ``subscribe`` filters, and ``replay_complete``'s count/last_seq.  A client
that must not receive an event is checked after it received a later one, so
nothing is left in flight when it is asserted (seqs arrive in order).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from lockerbus.auth import issue_token
from lockerbus.filters import parse_filter
from tests.support import SECRET, Client, RunningServer, connect, locker_event

LOCKERS, EVENTS, ROOM = "/ws/lockers", "/ws/events", "locker_updates"


def scoped_token(role: str, sub: str, scope: dict[str, Any] | None = None) -> str:
    return issue_token(SECRET, role, sub, 600, scope=parse_filter(scope) if scope else None)


async def publish(server: RunningServer, http: aiohttp.ClientSession, *kiosks: str) -> list[int]:
    """One locker event per kiosk, in order, by a gateway; their seqs."""
    seqs = []
    for n, kiosk in enumerate(kiosks):
        status, event = await server.post_event(http, locker_event(n, kiosk))
        assert status == 201, event
        seqs.append(event["seq"])
    return seqs


def kiosks_of(client: Client, namespace: str = LOCKERS) -> list[str]:
    return [e["data"]["kioskId"] for e in client.events(namespace, "locker_state_changed")]


async def live(server: RunningServer, sub: str, role: str = "kiosk", **kwargs: Any) -> Client:
    """A client with no replay, its replay_complete received."""
    auth = {"replay": False, **kwargs.pop("auth", {})}
    client = await connect(server, kwargs.pop("namespaces", LOCKERS), role=role, sub=sub,
                           auth=auth, **kwargs)  # fmt: skip
    for ns in client.sio.namespaces:
        await client.wait_events(ns, "replay_complete", 1)
    return client


async def subscribe(client: Client, body: dict[str, Any], namespace: str = LOCKERS) -> Any:
    return await client.call("subscribe", body, namespace)


async def test_room_members_get_only_their_kiosk(server, http) -> None:
    one, two = await live(server, "kiosk-1"), await live(server, "kiosk-2")
    panel = await live(server, "panel-1", role="panel")
    for client in (one, two, panel):
        assert (await subscribe(client, {"room": ROOM}))["ok"]
    await publish(server, http, "kiosk-1", "kiosk-2", "kiosk-1", "kiosk-2")
    await two.wait_events(LOCKERS, "locker_state_changed", 2)
    await one.wait_events(LOCKERS, "locker_state_changed", 2)
    await panel.wait_events(LOCKERS, "locker_state_changed", 4)
    assert kiosks_of(two) == ["kiosk-2", "kiosk-2"]
    assert kiosks_of(one) == ["kiosk-1", "kiosk-1"]
    assert kiosks_of(panel) == ["kiosk-1", "kiosk-2", "kiosk-1", "kiosk-2"]


async def test_fallback_goes_only_to_connections_that_may_read(server, http) -> None:
    """kiosk-1 holds the room but cannot read kiosk-2's event: it falls back, to kiosk-2
    and the panel only; a room member that may read it keeps it in the room."""
    one = await live(server, "kiosk-1")
    assert (await subscribe(one, {"room": ROOM}))["ok"]
    two = await live(server, "kiosk-2")
    three = await live(server, "kiosk-3")
    panel = await live(server, "panel-1", role="panel")
    await publish(server, http, "kiosk-2", "kiosk-1", "kiosk-3")
    await three.wait_events(LOCKERS, "locker_state_changed", 1)
    await panel.wait_events(LOCKERS, "locker_state_changed", 2)
    assert kiosks_of(two) == ["kiosk-2"]
    assert kiosks_of(three) == ["kiosk-3"]
    assert kiosks_of(one) == ["kiosk-1"]
    assert kiosks_of(panel) == ["kiosk-2", "kiosk-3"], "kiosk-1's event stayed in its room"


async def test_kiosks_never_get_connection_events(server, http) -> None:
    kiosk = await live(server, "kiosk-2", namespaces=EVENTS)
    watcher = await live(server, "panel-9", role="panel", namespaces=EVENTS)
    staff = await live(server, "staff-1", role="panel", namespaces=EVENTS)
    await staff.close()
    await watcher.wait_for(
        lambda: any(e["data"].get("userId") == "staff-1" for e in watcher.events(EVENTS, "disconnection"))
    )  # fmt: skip
    # kiosk-2's own status comes after those in seq order: everything before it has arrived
    status = {"component": "kiosk", "status": "online", "health_score": 100}
    ack = await kiosk.call("publish", {"type": "system_status", "data": status}, EVENTS)
    assert ack["ok"], ack
    await kiosk.wait_events(EVENTS, "system_status", 1)
    assert watcher.events(EVENTS, "connection"), "a panel sees staff connections"
    # its own status, and the server's online announcement for it (§11), nothing else
    assert set(kiosk.names(EVENTS)) == {"replay_complete", "system_status"}
    # nor in a replay of the whole namespace
    again = await connect(server, EVENTS, role="kiosk", sub="kiosk-2", auth={"last_seq": 0})
    [complete] = await again.wait_events(EVENTS, "replay_complete", 1)
    names = again.names(EVENTS)
    replayed = names[: names.index("replay_complete")]
    assert replayed and set(replayed) == {"system_status"}
    assert all(e["tags"]["kiosk"] == "kiosk-2" for e in again.events(EVENTS, "system_status"))
    assert complete["count"] == len(replayed) and complete["last_seq"] > len(replayed)


async def test_replay_sends_only_the_scope_and_counts_what_it_sent(server, http) -> None:
    seqs = await publish(server, http, "kiosk-1", "kiosk-2", "kiosk-1", "kiosk-1")
    two = await connect(server, LOCKERS, role="kiosk", sub="kiosk-2", auth={"last_seq": 0})
    [complete] = await two.wait_events(LOCKERS, "replay_complete", 1)
    assert kiosks_of(two) == ["kiosk-2"]
    assert complete["count"] == 1, "count is the number sent"
    assert complete["last_seq"] == seqs[-1], "last_seq is the namespace position"
    assert complete["recovered"] is True
    # it resumes gap-free from there: later kiosk-2 events only
    more = await publish(server, http, "kiosk-1", "kiosk-2")
    await two.wait_events(LOCKERS, "locker_state_changed", 2)
    assert [e["seq"] for e in two.events(LOCKERS, "locker_state_changed")] == [seqs[1], more[1]]


async def test_a_filtered_client_resumes_gap_free(server, http) -> None:
    seqs = await publish(server, http, "kiosk-1", "kiosk-2")
    auth = {"last_seq": 0, "filter": {"kiosk": "kiosk-1"}}
    first = await connect(server, LOCKERS, role="panel", auth=auth)
    [complete] = await first.wait_events(LOCKERS, "replay_complete", 1)
    assert (complete["count"], complete["last_seq"]) == (1, seqs[-1])
    await first.close()
    later = await publish(server, http, "kiosk-2", "kiosk-1", "kiosk-2")
    auth = {"last_seq": complete["last_seq"], "epoch": complete["epoch"], "filter": {"kiosk": "kiosk-1"}}  # fmt: skip
    again = await connect(server, LOCKERS, role="panel", auth=auth)
    [resumed] = await again.wait_events(LOCKERS, "replay_complete", 1)
    assert resumed["recovered"] is True
    assert (resumed["count"], resumed["last_seq"]) == (1, later[-1])
    assert [e["seq"] for e in again.events(LOCKERS, "locker_state_changed")] == [later[1]]


async def test_subscribe_gap_fill_keeps_to_the_scope(server, http) -> None:
    panel = await live(server, "panel-1", role="panel")
    assert (await subscribe(panel, {"room": ROOM}))["ok"]  # holds the room meanwhile
    two = await live(server, "kiosk-2")
    seqs = await publish(server, http, "kiosk-1", "kiosk-2", "kiosk-1")
    await panel.wait_events(LOCKERS, "locker_state_changed", 3)
    assert kiosks_of(two) == [], "a non-member is skipped while the room has readers"
    assert (await subscribe(two, {"room": ROOM}))["ok"]
    assert [(e["seq"], e.get("replayed")) for e in two.events(LOCKERS, "locker_state_changed")] == [
        (seqs[1], True)
    ]


async def test_scoped_panel_token_reads_its_kiosks_on_every_path(server, http) -> None:
    await publish(server, http, "kiosk-1", "kiosk-2", "kiosk-3")
    token = scoped_token("panel", "panel-2", {"kiosk": ["kiosk-1", "kiosk-3"]})
    panel = await connect(server, LOCKERS, token=token, auth={"last_seq": 0})
    [complete] = await panel.wait_events(LOCKERS, "replay_complete", 1)
    assert complete["count"] == 2
    await publish(server, http, "kiosk-2", "kiosk-3")  # fallback: the room is empty
    assert (await subscribe(panel, {"room": ROOM}))["ok"]
    await publish(server, http, "kiosk-2", "kiosk-1")  # room path
    await panel.wait_events(LOCKERS, "locker_state_changed", 4)
    assert kiosks_of(panel) == ["kiosk-1", "kiosk-3", "kiosk-3", "kiosk-1"]


async def test_auth_filter_narrows_replay_and_fallback(server, http) -> None:
    await publish(server, http, "kiosk-1", "kiosk-2")
    panel = await connect(server, LOCKERS, auth={"last_seq": 0, "filter": {"kiosk": ["kiosk-2"]}})
    [complete] = await panel.wait_events(LOCKERS, "replay_complete", 1)
    assert complete["count"] == 1
    await publish(server, http, "kiosk-1", "kiosk-2")
    await panel.wait_events(LOCKERS, "locker_state_changed", 2)
    assert kiosks_of(panel) == ["kiosk-2", "kiosk-2"]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ([], "auth.filter must be an object"),
        ({"kiosk": []}, "auth.filter.kiosk must list 1 to 100"),
        ({"kiosk": 3}, "auth.filter.kiosk must be a string or a list"),
        ({"kiosk": {"a": "b"}}, "auth.filter.kiosk must be a string or a list"),
        ({f"k{i}": "v" for i in range(17)}, "auth.filter has 17 keys"),
        ({"kiosk": ["x" * 60] * 80}, "auth.filter is"),
    ],
)
async def test_a_malformed_auth_filter_refuses_the_connection(server, bad, problem) -> None:
    client = await connect(server, LOCKERS, auth={"filter": bad}, expect_refusal=True)
    await client.wait_for(lambda: LOCKERS in client.connect_errors)
    error = client.connect_errors[LOCKERS]
    assert error["message"] == "bad_request"
    assert error["data"]["code"] == "bad_request"
    assert error["data"]["message"].startswith(problem), error
    assert not client.sio.connected


async def test_subscribe_filter_narrows_the_room_and_unsubscribe_forgets_it(server, http) -> None:
    panel = await live(server, "panel-1", role="panel")
    ack = await subscribe(panel, {"room": ROOM, "filter": {"kiosk": "kiosk-2"}})
    assert ack == {"ok": True}
    await publish(server, http, "kiosk-1", "kiosk-2")
    await panel.wait_events(LOCKERS, "locker_state_changed", 1)
    assert (await panel.call("unsubscribe", {"room": ROOM}, LOCKERS))["ok"]
    assert (await subscribe(panel, {"room": ROOM}))["ok"]
    await publish(server, http, "kiosk-1")
    await panel.wait_events(LOCKERS, "locker_state_changed", 2)
    assert kiosks_of(panel) == ["kiosk-2", "kiosk-1"]


async def test_subscribing_again_replaces_the_filter(server, http) -> None:
    panel = await live(server, "panel-1", role="panel")
    assert (await subscribe(panel, {"room": ROOM, "filter": {"kiosk": "kiosk-2"}}))["ok"]
    assert (await subscribe(panel, {"room": ROOM, "filter": {"kiosk": "kiosk-1"}}))["ok"]
    await publish(server, http, "kiosk-2", "kiosk-1")
    await panel.wait_events(LOCKERS, "locker_state_changed", 1)
    assert kiosks_of(panel) == ["kiosk-1"]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("kiosk-1", "filter must be an object"),
        ({"kiosk": []}, "filter.kiosk must list 1 to 100"),
        ({"kiosk": ["a", 1]}, "filter.kiosk must list strings only"),
        ({"kiosk": ["x" * 60] * 80}, "filter is"),
    ],
)
async def test_a_malformed_subscribe_filter_is_bad_request(server, http, bad, problem) -> None:
    panel = await live(server, "panel-1", role="panel")
    ack = await subscribe(panel, {"room": ROOM, "filter": bad})
    assert ack["ok"] is False
    assert ack["error"]["code"] == "bad_request"
    assert ack["error"]["message"].startswith(problem), ack
    # it did not join: the room stays empty, so events fall back to it, unfiltered
    await publish(server, http, "kiosk-1", "kiosk-2")
    await panel.wait_events(LOCKERS, "locker_state_changed", 2)
