"""Replays served from the stored bytes (issue 21): what a client receives is exactly
what encoding the decoded event afresh would give, for every store; a replay of many
events reaches the socket in a few writes, not one per event."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import socketio
from engineio import packet as eio_packet

from lockerbus.app import GATEWAY, STORE
from lockerbus.fanout import Outgoing, encode_event, encode_replayed, replayed_json
from lockerbus.store import EventStore, StoredRow
from lockerbus.store.codec import encode
from tests.storekit import Factory, make_event, seqs
from tests.support import connect

LOCKERS = "/ws/lockers"


def unusual_event(n: int) -> dict[str, Any]:
    """An envelope with what could trip a byte splice: unicode, floats, nesting, and the
    word "replayed" inside data."""
    event = {**make_event(LOCKERS), "tags": {"kiosk": f"kiosk-{n % 3}", "locker": "ü-1"}}
    event["data"] = {
        **event["data"],
        "reason": 'said "hi" \u2603 \\ / \n',
        "metadata": {"replayed": n, "ratio": 0.1 + n / 3, "big": 2**53 + n, "none": None},
    }
    return event


async def fill(store: EventStore, n: int) -> list[dict[str, Any]]:
    return [await store.append(unusual_event(i)) for i in range(n)]


async def test_stored_reads_hand_out_the_bytes_a_fresh_encode_gives(
    store_factory: Factory,
) -> None:
    store = await store_factory()
    stored = await fill(store, 12)
    replay = await store.replay(LOCKERS, after_seq=2, limit=100)
    raw = await store.replay_stored(LOCKERS, after_seq=2, limit=100)
    assert (raw.last_seq, raw.epoch, raw.recovered, raw.has_more) == (
        replay.last_seq,
        replay.epoch,
        replay.recovered,
        replay.has_more,
    )
    assert [e.seq for e in raw.events] == seqs(replay.events) == list(range(3, 13))
    for event, row in zip(replay.events, raw.events, strict=True):
        assert row.json == encode(event)
        assert (row.type, row.room, dict(row.tags)) == (
            event["type"],
            event["room"],
            event["tags"],
        )
    assert [orjson.loads(row.json) for row in raw.events] == stored[2:]
    page = await store.page(LOCKERS, after_seq=4, limit=3)
    raw_page = await store.page_stored(LOCKERS, after_seq=4, limit=3)
    assert [row.json for row in raw_page.events] == [encode(e) for e in page.events]
    assert (raw_page.last_seq, raw_page.has_more) == (page.last_seq, page.has_more) == (7, True)


async def test_a_stored_replay_across_a_corrupt_record_reports_the_hole(
    store_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Checksums are still verified when nothing is decoded."""
    store = await store_factory()
    await fill(store, 5)
    await store_factory.backend.corrupt(store, LOCKERS, 3)
    with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
        raw = await store.replay_stored(LOCKERS, after_seq=1, limit=100)
    assert (raw.recovered, [e.seq for e in raw.events]) == (False, [1, 2, 4, 5])
    assert "seq=3" in caplog.text
    assert (await store.stats()).evictions["corrupt"] == 1


def test_replayed_frames_are_byte_for_byte_the_freshly_encoded_ones() -> None:
    events = [{**unusual_event(n), "seq": n + 1, "epoch": "e1"} for n in range(8)]
    events[4]["replayed"] = False  # a top-level "replayed" keeps its place, as a merge does
    events[5]["data"]["reason"] = "x" * 70_000  # a frame with a 64-bit length
    events[6]["type"] = "help_requested"  # another event name in the same run
    stored = [StoredRow(e["seq"], e["type"], e["room"], e["tags"], encode(e)) for e in events]
    fresh = [encode_event(LOCKERS, e["type"], {**e, "replayed": True}) for e in events]
    run = encode_replayed(LOCKERS, stored)
    assert run.count == len(events)
    assert run.frames == b"".join(out.frame for out in fresh)
    # the queued (long-polling) form
    assert [p.encode() for p in run.packets()] == [out.packet.encode() for out in fresh]
    for event, row in zip(events, stored, strict=True):
        assert orjson.loads(replayed_json(row.json)) == {**event, "replayed": True}


def test_an_outgoing_from_text_is_the_one_from_its_packet() -> None:
    text = '2/ws/lockers,["x",{"a":"\u00fc"}]'
    from_packet = Outgoing(eio_packet.Packet(eio_packet.MESSAGE, data=text))
    from_text = Outgoing(text=text.encode())
    assert from_text.frame == from_packet.frame
    assert from_text.packet.encode() == from_packet.packet.encode()


def test_an_outgoing_needs_a_packet_or_its_text() -> None:
    packet = eio_packet.Packet(eio_packet.MESSAGE, data="2x")
    with pytest.raises(ValueError, match="not both"):
        Outgoing(packet, text=b"2x")
    with pytest.raises(ValueError, match="not both"):
        Outgoing()


async def test_a_replay_of_many_events_takes_a_few_writes(server) -> None:  # type: ignore[no-untyped-def]
    """300 missed events, replay_complete and all: at most 2 transport writes (one when
    the connection's writer is idle), where one write per event was made before."""
    store, sender = server.app[STORE], server.app[GATEWAY].sender
    appended = [await store.append(unusual_event(i)) for i in range(300)]
    writes, queued = sender.writes, sender.queued
    client = await connect(server, LOCKERS, sub="panel-storm", auth={"last_seq": 0})
    complete = await client.wait_events(LOCKERS, "replay_complete", 1)
    assert complete[0]["count"] == 300
    assert complete[0]["recovered"] is True
    got = client.events(LOCKERS, "locker_state_changed")
    assert got == [{**event, "replayed": True} for event in appended]
    assert client.names(LOCKERS)[-1] == "replay_complete"
    assert (sender.writes - writes) + (sender.queued - queued) <= 2


async def test_a_scoped_replay_from_bytes_keeps_only_what_its_scope_matches(server) -> None:  # type: ignore[no-untyped-def]
    store = server.app[STORE]
    appended = [await store.append(unusual_event(i)) for i in range(30)]
    client = await connect(server, LOCKERS, role="kiosk", sub="kiosk-1", auth={"last_seq": 0})
    complete = await client.wait_events(LOCKERS, "replay_complete", 1)
    mine = [{**e, "replayed": True} for e in appended if e["tags"]["kiosk"] == "kiosk-1"]
    assert client.events(LOCKERS, "locker_state_changed") == mine
    assert complete[0]["count"] == len(mine) == 10


async def test_a_long_polling_client_gets_the_same_replay(server) -> None:  # type: ignore[no-untyped-def]
    """Queued rather than written: one Engine.IO packet per event, same payloads.

    (More than python-engineio's default 16 packets per poll answer: the server
    raised that limit for this process, see tests/test_polling.py.)"""
    store = server.app[STORE]
    appended = [await store.append(unusual_event(i)) for i in range(40)]
    received: list[tuple[str, Any]] = []
    done = asyncio.Event()
    sio = socketio.AsyncClient(reconnection=False)

    @sio.on("*", namespace=LOCKERS)  # type: ignore[untyped-decorator]
    async def any_event(name: str, payload: Any) -> None:
        received.append((name, payload))
        if name == "replay_complete":
            done.set()

    token = server.token("panel", "panel-polling")
    await sio.connect(
        server.url,
        namespaces=[LOCKERS],
        auth={"token": token, "last_seq": 0},
        transports=["polling"],
        wait_timeout=10,
    )
    try:
        await asyncio.wait_for(done.wait(), 10)
        assert sio.transport() == "polling"
    finally:
        # without waiting for the open long poll (held up to the ping interval)
        await sio.eio.disconnect(abort=True)
    assert received[-1][1]["count"] == 40
    assert [p for n, p in received[:-1]] == [{**e, "replayed": True} for e in appended]
