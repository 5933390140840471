"""Slow consumer: a client that stops reading is dropped, costs bounded memory, slows no one.

The raw websocket client below completes the handshake and then never reads
again; aiohttp's flow control stops reading its socket, so the kernel
buffers fill and the server's writer for that connection blocks.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from lockerbus.config import load_settings
from lockerbus.errors import ConfigError
from tests.metrics_support import samples, scrape
from tests.processes import stored_events
from tests.reliability.clients import LOCKERS, Tracker
from tests.reliability.conftest import HEAVY, record
from tests.reliability.rawsio import RawSocket
from tests.support import locker_event

EVENTS = 3000 if HEAVY else 1200
PAD = 32 * 1024  # bytes of metadata per event: the kernel buffers fill fast
MAX_SEND_QUEUE = 200
REPLAY = 150  # a replay is queued at once, so it must fit in the send queue


def big_event(n: int) -> dict[str, object]:
    body = locker_event(n)
    body["data"]["metadata"] = {"pad": "x" * PAD}  # type: ignore[index]
    return body


async def lockers_connections(http: aiohttp.ClientSession, server) -> int:
    async with http.get(f"{server.url}/api/stats", headers=server.headers()) as resp:
        return int((await resp.json())["connections"][LOCKERS])


async def test_a_client_that_stops_reading_is_dropped_and_others_keep_up(
    server_process, tmp_path
) -> None:
    # SQLite keeps the events out of the process, so RSS shows what connections cost
    server = server_process(
        f"sqlite:///{tmp_path / 'slow.db'}",
        max_send_queue=MAX_SEND_QUEUE,
        replay_buffer_size=REPLAY,
        max_events=EVENTS * 2,
    )
    fast = await Tracker(server, "panel-fast").connect()
    slow = await RawSocket.open(server.url)
    joined = await slow.join(LOCKERS, {"token": server.token("panel", "panel-slow")})
    assert joined.startswith(f"40{LOCKERS},"), joined
    complete = orjson.loads((await slow.recv()).split(",", 1)[1])
    assert complete[0] == "replay_complete"
    epoch = complete[1]["epoch"]
    # from here on the slow client reads nothing

    rss_before = server.status("VmRSS")
    acked_at: dict[int, float] = {}
    async with aiohttp.ClientSession(headers=server.headers()) as http:
        assert await lockers_connections(http, server) == 2
        for n in range(EVENTS):
            async with http.post(f"{server.url}/api/events", json=big_event(n)) as resp:
                assert resp.status == 201
                acked_at[(await resp.json())["seq"]] = time.perf_counter()
        await fast.wait_until(EVENTS, timeout=30)
        assert await lockers_connections(http, server) == 1  # the slow one was dropped
        found = samples(await scrape(http, server.url))
        dropped = found[("lockerbus_slow_consumer_disconnects_total", (("namespace", LOCKERS),))]
        assert dropped == 1
    rss_growth = (server.status("VmRSS") - rss_before) * 1024
    # what one stuck connection may hold: the writer's batch and the queue, each at
    # most max_send_queue packets; the rest is the process's own working set
    assert rss_growth < 2 * MAX_SEND_QUEUE * PAD + 32 * 2**20, rss_growth

    # the fast client got everything, in order, promptly
    assert fast.seqs == list(range(1, EVENTS + 1))
    assert fast.violations == []
    delays = sorted(fast.arrivals[s] - acked_at[s] for s in acked_at)
    p99 = delays[int(len(delays) * 0.99)]
    assert p99 < 0.5, f"p99 delay {p99:.3f}s for the fast client"

    # the slow client's whole transport was closed, not only its namespace
    async with asyncio.timeout(10):
        while True:
            try:
                await slow.recv(timeout=10)
            except ConnectionError:
                break
    await slow.close()

    # it comes back: the newest events by replay, told to page the rest over HTTP
    back = Tracker(server, "panel-slow", reconnection=False)
    back.last_seq, back.epoch = 0, epoch
    await back.connect()
    await back.wait_until(EVENTS, timeout=30)
    assert back.completes[0]["recovered"] is False  # it missed more than the replay buffer
    assert back.seqs == list(range(EVENTS - REPLAY + 1, EVENTS + 1))
    history, _ = await stored_events(server, LOCKERS)
    assert [e["seq"] for e in history] == list(range(1, EVENTS + 1))
    await back.close()
    await fast.close()
    record(
        "slow_consumer",
        events=EVENTS,
        event_bytes=PAD,
        max_send_queue=MAX_SEND_QUEUE,
        fast_client_p99_delay_ms=round(p99 * 1000, 1),
        server_rss_growth_mib=round(rss_growth / 2**20, 1),
    )


def test_a_replay_larger_than_the_send_queue_is_refused_at_start_up() -> None:
    """Otherwise every client with a large gap is dropped mid-replay, reconnects, and loops."""
    env = {"LOCKERBUS_REPLAY_BUFFER_SIZE": "300", "LOCKERBUS_MAX_SEND_QUEUE": "200"}
    with pytest.raises(ConfigError, match=r"(?i)replay_buffer_size.*max_send_queue"):
        load_settings(env=env)
    assert load_settings(env={**env, "LOCKERBUS_MAX_SEND_QUEUE": "301"}).max_send_queue == 301
