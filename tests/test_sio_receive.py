"""The receive fast path reads EVENT frames as python-socketio does, and keeps ack order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from socketio import packet as sio_packet

from lockerbus import sio_receive
from lockerbus.app import GATEWAY
from lockerbus.sio_receive import event_loads, read_event
from tests.support import locker_event

LOCKERS = "/ws/lockers"
#: python-socketio's default json module, as the server reads with it
LOADS = event_loads(sio_packet.Packet.json)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def socketio_reads(frame: str) -> tuple[str | None, int | None, Any]:
    """What python-socketio makes of an Engine.IO MESSAGE frame."""
    pkt = sio_packet.Packet(encoded_packet=frame[1:])
    assert pkt.packet_type == sio_packet.EVENT
    return pkt.namespace, pkt.id, pkt.data


@settings(max_examples=300, deadline=None)
@given(
    namespace=st.sampled_from(["/ws/lockers", "/ws/events", "/x", "/a-b", "/"]),
    ack_id=st.none() | st.integers(min_value=0, max_value=10**30),
    data=st.lists(json_values | st.integers(min_value=10**98, max_value=10**100 - 1), min_size=1),
)
def test_an_event_frame_reads_as_python_socketio_reads_it(namespace, ack_id, data) -> None:
    frame = f"42{namespace},{'' if ack_id is None else ack_id}{json.dumps(data)}"
    assert read_event(frame, LOADS) == (namespace, ack_id, data)
    assert socketio_reads(frame) == (namespace, ack_id, data)


@settings(max_examples=300, deadline=None)
@given(frame=st.text(alphabet='42/ws,lockr0123456789[]{}"?-x ²', max_size=40))
def test_whatever_it_reads_python_socketio_reads_the_same(frame: str) -> None:
    read = read_event("42" + frame, LOADS)
    if read is not None:
        assert socketio_reads("42" + frame) == read


@pytest.mark.parametrize(
    "frame",
    [
        '42["publish",{}]',  # no namespace: python-socketio's path
        '42/ws/lockers?x=1,1["publish"]',  # a query in the namespace
        '42/ws/lockers["publish"]',  # no comma
        "42/ws/lockers," + "1" * 101 + '["publish"]',  # an id python-socketio refuses
        '42/ws/lockers,1²["publish"]',  # a digit that is not ASCII
        '42/ws/lockers,1["publish"',  # JSON that does not parse
        "42/ws/lockers,1[]",  # no event name
        '42/ws/lockers,1{"a":1}',  # not an array
        '42/ws/lockers,1"publish"',
        "42/ws/lockers,1[" * 5000,  # nested too deep
        '43/ws/lockers,1["publish"]',  # an ACK, not an EVENT
        f'42/ws/lockers,1["publish",{"9" * 101}]',  # an integer python-socketio refuses
    ],
)
def test_anything_else_is_left_to_python_socketio(frame: str) -> None:
    assert read_event(frame, LOADS) is None


async def open_raw(server: Any, http: Any, role: str = "gateway") -> Any:
    """A websocket speaking Engine.IO/Socket.IO by hand, connected to /ws/lockers."""
    ws = await http.ws_connect(f"{server.url}/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str()).startswith("0{")
    auth = json.dumps({"token": server.token(role), "replay": False})
    await ws.send_str(f"40{LOCKERS},{auth}")
    assert (await ws.receive_str()).startswith(f"40{LOCKERS},")
    return ws


async def acks(ws: Any, count: int) -> list[tuple[int, Any]]:
    """The next ``count`` acks on /ws/lockers, in arrival order: (id, answer)."""
    got: list[tuple[int, Any]] = []
    prefix = f"43{LOCKERS},"
    while len(got) < count:
        text = await asyncio.wait_for(ws.receive_str(), 10)
        if text == "2":  # Engine.IO PING
            await ws.send_str("3")
        elif text.startswith(prefix):
            body = text[len(prefix) :]
            bracket = body.index("[")
            got.append((int(body[:bracket]), json.loads(body[bracket:])[0]))
    return got


@pytest.mark.parametrize("take_seconds", [sio_receive.TAKE_SECONDS, -1.0])
async def test_publishes_sent_together_are_acked_in_order(
    server, http, monkeypatch, take_seconds
) -> None:
    # -1: every frame goes through python-socketio's path; the same answers, in order
    monkeypatch.setattr(sio_receive, "TAKE_SECONDS", take_seconds)
    sio = server.app[GATEWAY].sio
    taken = sio.events_taken
    ws = await open_raw(server, http)
    frames = []
    for n in range(60):
        body = ["publish", locker_event(n)] if n % 3 else ["publish", {"type": "nope"}]
        frames.append(f"42{LOCKERS},{n + 1}{json.dumps(body)}")
    for frame in frames:
        await ws.send_str(frame)  # sent without waiting: they arrive in few reads
    got = await acks(ws, 60)
    assert [ack_id for ack_id, _ in got] == list(range(1, 61))
    assert [answer["ok"] for _, answer in got] == [bool(n % 3) for n in range(60)]
    assert got[0][1]["error"]["code"] == "unknown_type"
    seqs = [answer["event"]["seq"] for _, answer in got if answer["ok"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 40
    if take_seconds > 0:
        assert sio.events_taken - taken == 60
    else:
        assert sio.events_taken == taken
    await ws.close()


async def test_a_frame_it_declines_still_ends_the_connection_as_before(server, http) -> None:
    ws = await open_raw(server, http)
    await ws.send_str(f'42{LOCKERS},1["publish",{{}}]')
    assert (await acks(ws, 1))[0][0] == 1
    await ws.send_str(f'42{LOCKERS},{"1" * 101}["publish"]')  # python-socketio refuses the id
    msg = await asyncio.wait_for(ws.receive(), 10)
    while msg.type.name not in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
        msg = await asyncio.wait_for(ws.receive(), 10)
    assert ws.closed or msg.type.name in ("CLOSE", "CLOSING", "CLOSED")


async def test_an_event_for_a_namespace_not_joined_is_dropped(server, http) -> None:
    ws = await open_raw(server, http)
    await ws.send_str('42/ws/help,7["publish",{}]')  # connected to /ws/lockers only
    await ws.send_str(f'42{LOCKERS},8["publish",{{}}]')
    assert [ack_id for ack_id, _ in await acks(ws, 1)] == [8]
    await ws.close()


async def test_a_frame_while_attachments_are_due_goes_to_python_socketio(server, http) -> None:
    ws = await open_raw(server, http)
    placeholder = json.dumps(["publish", {"_placeholder": True, "num": 0}])
    await ws.send_str(f"451-{LOCKERS},9{placeholder}")  # one binary attachment to follow
    # python-socketio takes the next frame as that attachment, whatever it is
    await ws.send_str(f'42{LOCKERS},10["publish",{{}}]')
    await ws.send_str(f'42{LOCKERS},11["publish",{{}}]')
    assert [ack_id for ack_id, _ in await acks(ws, 2)] == [9, 11]
    await ws.close()
