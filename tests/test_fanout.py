"""The broadcast fast path: frames written straight to idle websocket transports."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import pytest
from engineio import packet as eio_packet

from lockerbus.app import GATEWAY, METRICS
from lockerbus.fanout import (
    FLUSH_ROUNDS,
    FLUSH_SECONDS,
    QUIET_ROUNDS,
    Outgoing,
    Sender,
    encode_event,
)
from lockerbus.metrics import totals
from tests.support import connect, locker_event

LOCKERS = "/ws/lockers"


@pytest.mark.parametrize(
    ("size", "header_len"), [(10, 2), (125, 2), (126, 4), (65535, 4), (70000, 10)]
)
def test_frame_header_follows_rfc6455(size: int, header_len: int) -> None:
    text = "x" * (size - 1)  # the Engine.IO packet adds its "4"
    frame = Outgoing(eio_packet.Packet(eio_packet.MESSAGE, data=text)).frame
    assert frame[0] == 0x81  # FIN, text, no RSV bits (never compressed)
    assert frame[1] & 0x80 == 0  # a server never masks
    if header_len == 2:
        assert frame[1] == size
    elif header_len == 4:
        assert frame[1] == 126
        assert struct.unpack("!H", frame[2:4])[0] == size
    else:
        assert frame[1] == 127
        assert struct.unpack("!Q", frame[2:10])[0] == size
    assert frame[header_len:] == ("4" + text).encode()


def test_encode_event_is_a_socket_io_event_packet() -> None:
    out = encode_event("/ws/lockers", "locker_state_changed", {"seq": 1})
    assert out.packet.encode() == '42/ws/lockers,["locker_state_changed",{"seq":1}]'


async def test_broadcasts_take_the_direct_path_and_stay_in_order(server) -> None:
    sender = server.app[GATEWAY].sender
    clients = []
    for n in range(3):
        client = await connect(server, LOCKERS, sub=f"panel-{n}", auth={"replay": False})
        await client.wait_events(LOCKERS, "replay_complete", 1)
        clients.append(client)
    publisher = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
    before = sender.direct
    # publish without waiting for each ack: broadcasts, acks and pings interleave
    acks = await asyncio.gather(
        *(publisher.call("publish", locker_event(n), LOCKERS) for n in range(200))
    )
    assert all(a["ok"] for a in acks)
    for client in clients:
        got = await client.wait_events(LOCKERS, "locker_state_changed", 200)
        assert [e["seq"] for e in got] == list(range(1, 201))
    assert sender.direct - before >= 3 * 100, "most deliveries should skip the writer task"


async def test_a_connection_already_closing_is_not_a_slow_consumer(server) -> None:
    """An event for a socket that is closing (its client is leaving) is skipped, not
    counted and dropped as a slow consumer."""
    sender, hub = server.app[GATEWAY].sender, server.app[GATEWAY].hub
    leaving = await connect(server, LOCKERS, sub="panel-leaving", auth={"replay": False})
    await leaving.wait_events(LOCKERS, "replay_complete", 1)
    staying = await connect(server, LOCKERS, sub="panel-staying", auth={"replay": False})
    await staying.wait_events(LOCKERS, "replay_complete", 1)
    socket = sender._eio.sockets[leaving.sio.eio.sid]  # the server side of its Engine.IO socket
    socket.closed = True  # what Engine.IO sets once the close packet is on its way
    try:
        publisher = await connect(server, LOCKERS, role="gateway", auth={"replay": False})
        ack = await publisher.call("publish", locker_event(1), LOCKERS)
        assert ack["ok"], ack
        await staying.wait_events(LOCKERS, "locker_state_changed", 1)
        # a second round trip: a drop would have been counted by the reaper by now
        assert (await publisher.call("publish", locker_event(2), LOCKERS))["ok"]
        await staying.wait_events(LOCKERS, "locker_state_changed", 2)
        assert hub.overflowed == []
        assert totals(server.app[METRICS].slow_consumers).get(LOCKERS, 0) == 0
    finally:
        socket.closed = False


class RecordingTransport:
    """Stands in for a TCP transport: records each write and the loop turn it came in."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []
        self.turn = 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes.append((self.turn, data))


async def count_turns(
    transport: RecordingTransport, turns: int, each: Callable[[int], None] | None = None
) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
        transport.turn += 1
        if each is not None:
            each(transport.turn)


async def test_a_burst_goes_in_one_write_in_order_soon_after_it_stops() -> None:
    sender = Sender(object(), max_queue=10)
    transport = RecordingTransport()
    for n in range(5):
        sender._write(transport, b"%d" % n)
    await count_turns(transport, 4 * QUIET_ROUNDS)
    assert [data for _, data in transport.writes] == [b"01234"]
    turn, _ = transport.writes[0]
    assert turn <= QUIET_ROUNDS + 2, "a burst that stopped waits only a few quiet turns"


async def test_a_steady_stream_is_written_at_the_latest_after_flush_rounds() -> None:
    sender = Sender(object(), max_queue=10)
    transport = RecordingTransport()
    await count_turns(
        transport, 3 * FLUSH_ROUNDS, lambda turn: sender._write(transport, b"%d," % turn)
    )
    assert len(transport.writes) >= 2, "frames that keep coming are not held forever"
    first_turn = transport.writes[0][0]
    assert first_turn <= FLUSH_ROUNDS + 2
    written = b"".join(data for _, data in transport.writes)
    numbers = [int(x) for x in written.decode().strip(",").split(",")]
    assert numbers == sorted(numbers) and numbers[0] == 1


async def test_a_busy_loop_writes_within_flush_seconds() -> None:
    sender = Sender(object(), max_queue=10)
    transport = RecordingTransport()
    sender._write(transport, b"x")

    def busy(turn: int) -> None:
        time.sleep(FLUSH_SECONDS / 4)  # long turns: the time cap ends the wait
        sender._write(transport, b"y")

    await count_turns(transport, 16, busy)
    assert transport.writes, "written within 16 long turns"
    assert transport.writes[0][0] < 16 < FLUSH_ROUNDS
