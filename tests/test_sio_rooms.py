"""The room index: a disconnect costs O(the sid's rooms), and leaves what
python-socketio's own disconnect would leave."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import socketio

from lockerbus.app import GATEWAY
from lockerbus.sio_adapter import HookedRedisManager
from lockerbus.sio_rooms import IndexedAsyncManager, RoomIndex
from tests.support import connect

NS = "/ws/lockers"
EVENTS = "/ws/events"


def managed(manager: Any) -> Any:
    """``manager`` attached to a real AsyncServer (it makes the sids)."""
    socketio.AsyncServer(client_manager=manager)
    return manager


def redis_manager() -> Any:
    # never connects: basic_* and disconnect(ignore_queue=True) stay in this process
    return managed(HookedRedisManager("redis://127.0.0.1:1/0", channel="lockerbus-test"))


MANAGERS = {"single": lambda: managed(IndexedAsyncManager()), "cluster": redis_manager}


async def connected(manager: Any, count: int) -> list[str]:
    sids = []
    for n in range(count):
        sid = await manager.connect(f"eio-{n}", NS)
        await manager.enter_room(sid, NS, f"room-{n % 7}")
        sids.append(sid)
    return sids


async def disconnect_seconds(manager: Any, count: int) -> float:
    """Seconds to disconnect ``count`` connections that all dropped at once."""
    sids = await connected(manager, count)
    began = time.perf_counter()
    for sid in sids:
        manager.pre_disconnect(sid, NS)
        await manager.disconnect(sid, NS, ignore_queue=True)
    spent = time.perf_counter() - began
    assert manager.rooms == {} and manager.rooms_of == {}
    return spent


@pytest.mark.parametrize("kind", MANAGERS)
async def test_disconnecting_n_connections_costs_o_n(kind: str) -> None:
    make = MANAGERS[kind]
    small = min([await disconnect_seconds(make(), 1000) for _ in range(3)])
    large = min([await disconnect_seconds(make(), 4000) for _ in range(3)])
    # linear: 4x; python-socketio's own scan of every room: 16x (0.06 s vs 1.2 s alone)
    assert large / small < 9, (small, large)


async def pending_connect_seconds(manager: Any, count: int) -> float:
    """Seconds to confirm ``count`` connections whose connect handlers all awaited at once
    (each incoming event asks ``is_connected``, which looks in the same pending list)."""
    sids = [await manager.pre_connect(f"eio-{n}", NS) for n in range(count)]
    began = time.perf_counter()
    for sid in sids:
        assert not manager.is_connected(sid, NS)
        await manager.connect(sid, NS)
        assert manager.is_connected(sid, NS)
    spent = time.perf_counter() - began
    assert manager.pending_connect == {}
    return spent


@pytest.mark.parametrize("kind", MANAGERS)
async def test_confirming_n_pending_connections_costs_o_n(kind: str) -> None:
    make = MANAGERS[kind]
    small = min([await pending_connect_seconds(make(), 2000) for _ in range(3)])
    large = min([await pending_connect_seconds(make(), 8000) for _ in range(3)])
    assert large / small < 9, (small, large)


def test_cluster_manager_has_the_index() -> None:
    from lockerbus.cluster import ClusterRedisManager

    assert issubclass(ClusterRedisManager, RoomIndex)


async def test_same_rooms_callbacks_and_pending_as_python_socketio() -> None:
    """Random enters, leaves, closes and disconnects on both managers: same state."""
    ours, theirs = managed(IndexedAsyncManager()), managed(socketio.AsyncManager())
    rng = random.Random(21)
    ids = iter(range(10**6))
    live: list[tuple[str, str]] = []  # (ours, theirs) sid pairs
    made: list[tuple[str, str]] = []
    for _ in range(3000):
        step = rng.random()
        if step < 0.25 or not live:
            eio = f"eio-{next(ids)}"
            pair = (await ours.connect(eio, NS), await theirs.connect(eio, NS))
            live.append(pair)
            made.append(pair)
            continue
        mine, other = rng.choice(live)
        room = f"room-{rng.randrange(5)}"
        if step < 0.5:
            await ours.enter_room(mine, NS, room)
            await theirs.enter_room(other, NS, room)
        elif step < 0.65:
            await ours.leave_room(mine, NS, room)
            await theirs.leave_room(other, NS, room)
        elif step < 0.7:
            await ours.close_room(room, NS)
            await theirs.close_room(room, NS)
        elif step < 0.8:
            ours._generate_ack_id(mine, print)
            theirs._generate_ack_id(other, print)
        elif step < 0.9 and mine not in ours.pending_disconnect.get(NS, ()):
            ours.pre_disconnect(mine, NS)
            theirs.pre_disconnect(other, NS)
        elif step >= 0.9:
            live.remove((mine, other))
            await ours.disconnect(mine, NS)
            await theirs.disconnect(other, NS)
        if (mine, other) in live:
            want = [mine if room == other else room for room in theirs.get_rooms(other, NS)]
            assert sorted(ours.get_rooms(mine, NS)) == sorted(want)
    rename = {other: mine for mine, other in made}

    def renamed(value: Any) -> Any:
        return rename.get(value, value)

    assert {room: dict(members.items()) for room, members in ours.rooms[NS].items()} == {
        renamed(room): {renamed(sid): eio for sid, eio in members.items()}
        for room, members in theirs.rooms[NS].items()
    }
    assert set(ours.callbacks) == {renamed(sid) for sid in theirs.callbacks}
    pending = ours.pending_disconnect.get(NS, [])
    assert sorted(pending) == sorted(renamed(s) for s in theirs.pending_disconnect.get(NS, []))
    for mine, _ in live:
        await ours.disconnect(mine, NS)
    assert ours.rooms == {} and ours.rooms_of == {} and ours.callbacks == {}
    assert ours.pending_disconnect == {} and ours.pending_connect == {}


async def test_a_real_server_leaves_every_room_of_closed_connections(server) -> None:
    manager = server.app[GATEWAY].sio.manager
    assert isinstance(manager, IndexedAsyncManager)
    # the server publishes "disconnection" in a task that runs after its manager's
    # disconnect: once the watcher has it, the rooms have been left
    watcher = await connect(server, EVENTS, role="admin", auth={"replay": False})
    await watcher.wait_events(EVENTS, "replay_complete", 1)
    clients = [await connect(server, NS, role="panel", sub=f"p{n}") for n in range(5)]
    for client in clients:
        await client.wait_events(NS, "replay_complete", 1)
    assert len(manager.rooms[NS][None]) == 5 and len(manager.rooms_of[NS]) == 5
    for client in clients[:3]:
        await client.close()
    await watcher.wait_events(EVENTS, "disconnection", 3)
    stayed = {client.sio.get_sid(NS) for client in clients[3:]}
    assert set(manager.rooms[NS][None]) == stayed
    assert set(manager.rooms_of[NS]) == stayed
    assert {room for room in manager.rooms[NS] if room is not None} == stayed
    assert all(manager.get_rooms(sid, NS) == [sid] for sid in stayed)
    for client in clients[3:]:
        await client.close()
    await watcher.wait_events(EVENTS, "disconnection", 5)
    assert NS not in manager.rooms and NS not in manager.rooms_of
