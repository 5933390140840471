"""Property: no connection ever receives an event its scope does not match (contract §10).

Random fleets of kiosk and panel connections with random scopes, ``auth.filter``
and ``subscribe`` filters, joining the room before or after live events, against
a real server with real python-socketio clients.  Each connection's stream is
compared with a model of §3 and §10 (replay, room path, fallback, gap-fill), and
its HTTP history with its scope and filter.  Bounded to a few seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockerbus.auth import issue_token
from lockerbus.filters import parse_filter
from tests.support import (
    SECRET,
    Client,
    RunningServer,
    close_clients,
    connect,
    locker_event,
    start_server,
)

LOCKERS, ROOM = "/ws/lockers", "locker_updates"
KIOSKS = ["k0", "k1", "k2"]
Spec = dict[str, Any] | None


def matches(spec: Spec, tags: dict[str, str]) -> bool:
    """§10's matching rule, written out."""
    for key, want in (spec or {}).items():
        if tags.get(key) not in ([want] if isinstance(want, str) else want):
            return False
    return True


filters = st.one_of(
    st.none(),
    st.fixed_dictionaries({"kiosk": st.lists(st.sampled_from(KIOSKS), min_size=1, unique=True)}),
    st.fixed_dictionaries({"state": st.sampled_from(["open", "closed"])}),
    st.fixed_dictionaries({"kiosk": st.sampled_from(KIOSKS), "state": st.just("open")}),
)


@dataclass
class Peer:
    role: str
    sub: str
    scope: Spec
    auth_filter: Spec
    joins: str  # "never" | "early" (before live events) | "late" (gap-fill)
    room_filter: Spec

    def reach(self, tags: dict[str, str]) -> bool:
        own = self.role != "kiosk" or tags.get("kiosk") == self.sub
        return own and matches(self.scope, tags)

    def connect_view(self, tags: dict[str, str]) -> bool:
        return self.reach(tags) and matches(self.auth_filter, tags)

    def room_view(self, tags: dict[str, str]) -> bool:
        return self.reach(tags) and matches(self.room_filter, tags)

    def token(self) -> str:
        scope = parse_filter(self.scope) if self.scope else None
        return issue_token(SECRET, self.role, self.sub, 600, scope=scope)


peers = st.builds(
    Peer,
    role=st.sampled_from(["kiosk", "panel"]),
    sub=st.sampled_from(KIOSKS),
    scope=filters,
    auth_filter=filters,
    joins=st.sampled_from(["never", "early", "late"]),
    room_filter=filters,
)
events = st.lists(st.tuples(st.sampled_from(KIOSKS), st.integers(0, 3)), max_size=5)


def tags_of(kiosk: str, n: int) -> dict[str, str]:
    data = locker_event(n, kiosk)["data"]
    return {"kiosk": kiosk, "locker": data["lockerId"], "state": data["newState"]}


class Model:
    """What each peer must receive, in order, by §3 and §10."""

    def __init__(self, fleet: list[Peer]) -> None:
        self.fleet = fleet
        self.got: list[list[int]] = [[] for _ in fleet]
        #: each connection's last_seq: its replay's namespace position, then what it was sent
        self.position = [0 for _ in fleet]
        self.members: list[int] = []
        self.log: list[tuple[int, dict[str, str]]] = []

    def replay(self, history: list[tuple[int, dict[str, str]]]) -> None:
        self.log += history
        for i, peer in enumerate(self.fleet):
            self.got[i] += [seq for seq, tags in history if peer.connect_view(tags)]
            self.position[i] = history[-1][0] if history else 0

    def join(self, i: int) -> None:
        after = self.position[i]
        filled = [s for s, t in self.log if s > after and self.fleet[i].room_view(t)]
        self.got[i] += filled
        self.position[i] = self.log[-1][0] if self.log else 0  # the page went to the end
        self.members.append(i)

    def live(self, seq: int, tags: dict[str, str]) -> None:
        self.log.append((seq, tags))
        readers = [i for i in self.members if self.fleet[i].reach(tags)]
        if readers:
            targets = [i for i in readers if self.fleet[i].room_view(tags)]
        else:
            targets = [i for i, p in enumerate(self.fleet) if p.connect_view(tags)]
        for i in targets:
            self.got[i].append(seq)
            self.position[i] = seq


Batch = list[tuple[str, int]]
Stored = list[tuple[int, dict[str, str]]]


async def publish_all(server: RunningServer, http: aiohttp.ClientSession, batch: Batch) -> Stored:
    """Publish (kiosk, n) locker events as a gateway; their seqs and tags."""
    out: Stored = []
    for kiosk, n in batch:
        status, event = await server.post_event(http, locker_event(n, kiosk))
        assert status == 201, event
        assert event["tags"] == tags_of(kiosk, n)
        out.append((event["seq"], event["tags"]))
    return out


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleet=st.lists(peers, min_size=1, max_size=5),
    history=events,
    middle=events,
    end=events,
)
async def test_no_connection_receives_an_event_outside_its_scope(
    fleet: list[Peer], history: Batch, middle: Batch, end: Batch
) -> None:
    server = await start_server()
    try:
        async with aiohttp.ClientSession() as http:
            await check_fleet(server, http, fleet, history, middle, end)
    finally:
        await close_clients()
        await server.stop()


async def check_fleet(
    server: RunningServer,
    http: aiohttp.ClientSession,
    fleet: list[Peer],
    history: Batch,
    middle: Batch,
    end: Batch,
) -> None:
    model = Model(fleet)
    stored = await publish_all(server, http, history)
    model.replay(stored)
    clients: list[Client] = []
    for peer in fleet:
        auth: dict[str, Any] = {"last_seq": 0}
        if peer.auth_filter is not None:
            auth["filter"] = peer.auth_filter
        client = await connect(server, LOCKERS, token=peer.token(), auth=auth)
        [complete] = await client.wait_events(LOCKERS, "replay_complete", 1)
        assert complete["count"] == len([s for s, t in stored if peer.connect_view(t)])
        assert complete["last_seq"] == (stored[-1][0] if stored else 0)
        clients.append(client)
    for phase, batch in (("early", middle), ("late", end)):
        for i, peer in enumerate(fleet):
            if peer.joins == phase:
                body: dict[str, Any] = {"room": ROOM}
                if peer.room_filter is not None:
                    body["filter"] = peer.room_filter
                assert (await clients[i].call("subscribe", body, LOCKERS)) == {"ok": True}
                model.join(i)
        for seq, tags in await publish_all(server, http, batch):
            model.live(seq, tags)
    for i, (peer, client) in enumerate(zip(fleet, clients, strict=True)):
        want = model.got[i]
        await client.wait_for(lambda: len(client.events(LOCKERS, "locker_state_changed")) >= len(want), 3)  # noqa: B023  # fmt: skip
        got = client.events(LOCKERS, "locker_state_changed")
        assert all(peer.reach(event["tags"]) for event in got), "an event outside the scope"
        assert [event["seq"] for event in got] == want, (peer, model.log)
        # HTTP history: exactly the scope and auth.filter
        url = f"{server.url}/api/events?namespace={LOCKERS}&limit=1000"
        params = {} if peer.auth_filter is None else {"filter": json.dumps(peer.auth_filter)}
        headers = {"Authorization": f"Bearer {peer.token()}"}
        async with http.get(url, params=params, headers=headers) as resp:
            page = await resp.json()
        assert [e["seq"] for e in page["events"]] == [
            s for s, t in model.log if peer.connect_view(t)
        ]
