"""Kiosk presence (contract §11): GET /api/kiosks and the online/offline announcements,
with real Socket.IO kiosks and a short grace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockerbus.auth import issue_token
from lockerbus.filters import parse_filter
from tests.processes import ServerProcess
from tests.redis_support import RedisServer
from tests.support import SECRET, connect

EVENTS = "/ws/events"
GRACE = 0.3


async def watcher(server: Any) -> Any:
    """A panel in the system_events room: it sees every announcement."""
    panel = await connect(server, EVENTS, auth={"replay": False})
    await panel.wait_events(EVENTS, "replay_complete", 1)
    assert await panel.call("subscribe", {"room": "system_events"}, EVENTS) == {"ok": True}
    return panel


def announcements(panel: Any, kiosk: str) -> list[tuple[str, float]]:
    return [
        (e["data"]["status"], e["data"]["health_score"])
        for e in panel.events(EVENTS, "system_status")
        if e["data"]["component"] == "kiosk" and e["tags"].get("kiosk") == kiosk
    ]


async def kiosks(server: Any, http: Any, role: str = "panel", token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else server.headers(role)
    async with http.get(f"{server.url}/api/kiosks", headers=headers) as resp:
        return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def two_instances(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances on one Redis store and message queue, with the short grace."""
    env = {
        "LOCKERBUS_MESSAGE_QUEUE": redis_server.url,
        "LOCKERBUS_KIOSK_OFFLINE_GRACE_SECONDS": str(GRACE),
    }
    a, b = (
        ServerProcess(store=redis_server.url, log_path=tmp_path / f"{i}.log", env=env)
        for i in range(2)
    )
    await asyncio.gather(a.started(), b.started())
    try:
        yield a, b
    finally:
        await asyncio.gather(a.stopped(), b.stopped())


async def test_online_then_offline_after_the_grace_once(server_factory, http) -> None:
    server = await server_factory(kiosk_offline_grace_seconds=GRACE)
    panel = await watcher(server)
    kiosk = await connect(server, [EVENTS, "/ws/lockers"], role="kiosk", sub="kiosk-7")
    await panel.wait_for(lambda: announcements(panel, "kiosk-7") == [("online", 100)])
    [online] = [e for e in panel.events(EVENTS, "system_status") if e["tags"].get("kiosk")]
    assert online["source"] == {"role": "server"}
    assert online["data"]["details"] == {"kioskId": "kiosk-7"}
    status, body = await kiosks(server, http)
    assert status == 200
    [entry] = body["kiosks"]
    assert entry["kioskId"] == "kiosk-7"
    assert (entry["online"], entry["connections"]) == (True, 2), "every namespace counts"
    assert (entry["status"], entry["health_score"]) == ("online", 100)
    assert entry["last_seen"].endswith("Z")

    closed_at = time.monotonic()
    await kiosk.close()
    _, during = await kiosks(server, http)
    assert during["kiosks"][0]["online"] is True, "online during the grace"
    await panel.wait_for(lambda: len(announcements(panel, "kiosk-7")) == 2, timeout=5)
    assert time.monotonic() - closed_at >= GRACE
    assert announcements(panel, "kiosk-7") == [("online", 100), ("offline", 0)]
    _, after = await kiosks(server, http)
    [gone] = after["kiosks"]
    assert (gone["online"], gone["connections"], gone["status"], gone["health_score"]) == (
        False,
        0,
        "offline",
        0,
    )
    await connect(server, EVENTS, role="kiosk", sub="kiosk-7")
    await panel.wait_for(lambda: len(announcements(panel, "kiosk-7")) == 3)
    assert announcements(panel, "kiosk-7")[-1] == ("online", 100)


async def test_a_kiosk_back_within_the_grace_is_never_offline(server_factory, http) -> None:
    server = await server_factory(kiosk_offline_grace_seconds=GRACE)
    panel = await watcher(server)
    first = await connect(server, EVENTS, role="kiosk", sub="kiosk-8")
    await panel.wait_for(lambda: announcements(panel, "kiosk-8") == [("online", 100)])
    await first.close()
    await connect(server, EVENTS, role="kiosk", sub="kiosk-8")
    # another kiosk's full cycle, longer than the grace, is the clock for this one
    other = await connect(server, EVENTS, role="kiosk", sub="kiosk-9")
    await other.close()
    await panel.wait_for(lambda: ("offline", 0) in announcements(panel, "kiosk-9"), timeout=5)
    assert announcements(panel, "kiosk-8") == [("online", 100)]
    _, body = await kiosks(server, http)
    assert {k["kioskId"]: k["online"] for k in body["kiosks"]} == {
        "kiosk-8": True,
        "kiosk-9": False,
    }


async def test_kiosks_route_is_for_panels_gateways_admins_and_scoped(server_factory, http) -> None:
    server = await server_factory(kiosk_offline_grace_seconds=GRACE)
    panel = await watcher(server)
    for sub in ("kiosk-1", "kiosk-2"):
        await connect(server, EVENTS, role="kiosk", sub=sub)
    await panel.wait_for(lambda: len(panel.events(EVENTS, "system_status")) >= 2)
    status, body = await kiosks(server, http, role="kiosk")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    for role in ("gateway", "admin"):
        status, body = await kiosks(server, http, role=role)
        assert status == 200 and len(body["kiosks"]) == 2
    scoped = issue_token(SECRET, "panel", "p-2", 600, scope=parse_filter({"kiosk": "kiosk-2"}))
    status, body = await kiosks(server, http, token=scoped)
    assert status == 200
    assert [k["kioskId"] for k in body["kiosks"]] == ["kiosk-2"]


@pytest.mark.needs_redis
@pytest.mark.slow
async def test_across_instances_offline_only_when_none_holds_it_and_once(
    redis_server: RedisServer, tmp_path: Path, http
) -> None:
    async with two_instances(redis_server, tmp_path) as (a, b):
        panel = await watcher(a)
        on_a = await connect(a, EVENTS, role="kiosk", sub="kiosk-5")
        await panel.wait_for(lambda: announcements(panel, "kiosk-5") == [("online", 100)])
        on_b = await connect(b, "/ws/lockers", role="kiosk", sub="kiosk-5")
        _, body = await kiosks(b, http)
        assert [(k["kioskId"], k["connections"]) for k in body["kiosks"]] == [("kiosk-5", 2)]
        await on_a.close()  # still held by b: no offline, whatever the grace
        marker = await connect(a, EVENTS, role="kiosk", sub="kiosk-6")
        await marker.close()
        await panel.wait_for(lambda: ("offline", 0) in announcements(panel, "kiosk-6"), timeout=5)
        assert announcements(panel, "kiosk-5") == [("online", 100)]
        await on_b.close()
        await panel.wait_for(lambda: len(announcements(panel, "kiosk-5")) == 2, timeout=5)
        # both instances saw the last close's aftermath; the announcement came once
        again = await connect(b, EVENTS, role="kiosk", sub="kiosk-6")
        await panel.wait_for(lambda: len(announcements(panel, "kiosk-6")) == 3, timeout=5)
        await again.close()
        assert announcements(panel, "kiosk-5") == [("online", 100), ("offline", 0)]
        _, body = await kiosks(a, http)
        assert {k["kioskId"]: k["online"] for k in body["kiosks"]}["kiosk-5"] is False


async def test_a_restart_remembers_kiosks_and_announces_the_ones_that_never_return(
    tmp_path: Path, http
) -> None:
    # the single instance's presence book is in memory: after a crash it is seeded
    # from the store's history, and a kiosk that does not come back is announced
    # offline once the grace has passed (it would otherwise stay online forever)
    server = ServerProcess(
        store=f"sqlite:///{tmp_path / 'events.db'}",
        log_path=tmp_path / "server.log",
        env={"LOCKERBUS_KIOSK_OFFLINE_GRACE_SECONDS": str(GRACE)},
    )
    await server.started()
    try:
        panel = await watcher(server)
        gone = await connect(server, EVENTS, role="kiosk", sub="kiosk-gone")
        back = await connect(server, EVENTS, role="kiosk", sub="kiosk-back")
        await panel.wait_for(lambda: len(panel.events(EVENTS, "system_status")) == 2)
        await asyncio.to_thread(server.kill)
        for client in (panel, gone, back):
            await client.close()
        await server.started()
        panel = await watcher(server)
        again = await connect(server, EVENTS, role="kiosk", sub="kiosk-back")
        await panel.wait_for(lambda: ("offline", 0) in announcements(panel, "kiosk-gone"), 10)
        assert announcements(panel, "kiosk-gone") == [("offline", 0)]
        assert announcements(panel, "kiosk-back") == [], "still announced online: not again"
        _, body = await kiosks(server, http)
        listed = {k["kioskId"]: (k["online"], k["connections"]) for k in body["kiosks"]}
        assert listed == {"kiosk-gone": (False, 0), "kiosk-back": (True, 1)}
        await again.close()
        await panel.wait_for(lambda: ("offline", 0) in announcements(panel, "kiosk-back"), 10)
    finally:
        await server.stopped()


@pytest.mark.needs_redis
@pytest.mark.slow
async def test_a_crashed_instances_kiosks_are_announced_offline_by_another(
    redis_server: RedisServer, tmp_path: Path, http
) -> None:
    async with two_instances(redis_server, tmp_path) as (a, b):
        panel = await watcher(b)
        kiosk = await connect(a, EVENTS, role="kiosk", sub="kiosk-3")
        await panel.wait_for(lambda: announcements(panel, "kiosk-3") == [("online", 100)])
        await asyncio.to_thread(a.kill)  # no close reaches b; a's heartbeat just stops
        await kiosk.close()
        # a's entries count until its heartbeat key expires (presence TTL), then the grace
        await panel.wait_for(lambda: len(announcements(panel, "kiosk-3")) == 2, timeout=30)
        assert announcements(panel, "kiosk-3") == [("online", 100), ("offline", 0)]
        _, body = await kiosks(b, http)
        assert [(k["kioskId"], k["online"]) for k in body["kiosks"]] == [("kiosk-3", False)]


@pytest.mark.needs_redis
async def test_cluster_listing_counts_live_connections_and_drops_dead_ones(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipelined listing (several batches) says what the per-kiosk reads said."""
    from lockerbus import presence as module

    monkeypatch.setattr(module, "LISTING_BATCH", 7)
    live, dead = (module.Presence(redis_server.url, instance_id=i) for i in ("live", "dead"))
    try:
        await live.heartbeat({EVENTS: 1})  # "dead" never beats: its entries do not count
        for n in range(20):
            await live.opened(f"k{n:02}", f"s{n}", 1000.0 + n)
            if n % 3 == 0:
                await dead.opened(f"k{n:02}", f"d{n}", 2000.0 + n)
            if n % 4 == 0:
                await live.closed(f"k{n:02}", f"s{n}", 3000.0 + n)
        await live.note_status("k05", "degraded", 0.5)
        assert await live.claim("k05", "online")
        listed = await live.listing()
        assert [e["kioskId"] for e in listed] == [f"k{n:02}" for n in range(20)]
        assert [e["connections"] for e in listed] == [0 if n % 4 == 0 else 1 for n in range(20)]
        assert listed[5] == {
            "kioskId": "k05",
            "connections": 1,
            "last_seen": 1005.0,
            "announced": "online",
            "status": "degraded",
            "health_score": 0.5,
        }
        assert listed[3]["last_seen"] == 2003.0 and listed[3]["announced"] is None
        # the dead instance's entries were removed, the live ones kept
        client = redis_server.client()
        _, prefix = module.split_url(redis_server.url)
        assert client.hgetall(f"{prefix}:kconn:k03") == {b"s3": b"live"}
        assert [await live.count(f"k{n:02}") for n in (0, 3, 6)] == [0, 1, 1]
    finally:
        for presence in (live, dead):
            await presence.close()
