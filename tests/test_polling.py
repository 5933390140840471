"""Long-polling carries more than python-engineio's default 16 packets per payload.

The server runs in its own process, so the limit each side applies is its own:
the client library must read a long replay in one poll answer, and the server
must take a polling client's burst of publishes in one POST.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import engineio
import pytest
import socketio

from lockerbus.client import ClientOptions, LockerbusClient
from tests.processes import ServerProcess
from tests.support import locker_event, post_event

LOCKERS = "/ws/lockers"
POLLING = ClientOptions(transports=("polling",), reconnect_first_delay=0.3, connect_timeout=5)


@pytest.fixture
async def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = ServerProcess(store="memory", log_path=tmp_path / "server.log")
    await process.started()
    yield process
    await process.stopped()


async def test_the_client_library_reads_a_long_replay_over_polling(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 16)  # the default
    async with aiohttp.ClientSession() as http:
        status, body = await post_event(
            server,
            http,
            {"events": [locker_event(i) for i in range(200)]},
            path="/api/events/batch",
        )
    assert status == 200 and all(r["ok"] for r in body["results"]), body
    received: list[Any] = []
    client = LockerbusClient(
        server.url, server.token("panel", "p-poll"), namespaces=[LOCKERS], options=POLLING
    )
    client.on("locker_state_changed", received.append)
    async with client:
        await asyncio.wait_for(client.wait_live(), 15)
        assert client.links[LOCKERS].sio is not None
        assert client.links[LOCKERS].sio.transport() == "polling"
    assert [e["seq"] for e in received] == list(range(1, 201))
    assert all(e["replayed"] for e in received)


async def test_the_server_takes_a_burst_of_publishes_over_polling(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this (raw python-socketio) client reads the 60 acks in one poll answer
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 1000)
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        server.url,
        namespaces=[LOCKERS],
        auth={"token": server.token("gateway", "gw-poll"), "replay": False},
        transports=["polling"],
        wait_timeout=5,
    )
    try:
        # sent while the first POST is out: python-engineio sends the rest in one payload
        acks = await asyncio.gather(
            *(
                sio.call("publish", locker_event(i), namespace=LOCKERS, timeout=10)
                for i in range(60)
            )
        )
    finally:
        await sio.eio.disconnect(abort=True)
    assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]][:3]
    assert sorted(ack["event"]["seq"] for ack in acks) == list(range(1, 61))
