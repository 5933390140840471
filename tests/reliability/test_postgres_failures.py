"""The PostgreSQL store failing (issue 18): lockerbus killed mid-publish and restarted
loses nothing acknowledged; PostgreSQL stopped and started again answers
``store_unavailable`` meanwhile (never a false ack), ``/readyz`` 503, and lockerbus
resumes by itself.  Real PostgreSQL, real server processes, real clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster_support import wait_ready
from tests.postgres_support import PostgresServer
from tests.processes import stored_events
from tests.reliability.conftest import record
from tests.reliability.test_crash import crash_keeps_every_acknowledged_event
from tests.support import locker_event

pytestmark = [pytest.mark.needs_postgres, pytest.mark.slow]

LOCKERS = "/ws/lockers"


async def test_postgres_crash_keeps_every_acknowledged_event(
    server_process, postgres_shared: PostgresServer, tmp_path: Path
) -> None:
    store = postgres_shared.database(str(tmp_path))
    await crash_keeps_every_acknowledged_event(server_process, store, "crash_postgres")


async def test_postgres_restart_is_unavailable_then_resumes_losing_nothing(
    server_process, postgres_server: PostgresServer
) -> None:
    server = server_process(postgres_server.url())
    acked: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for n in range(5):
            status, event = await server.post_event(http, locker_event(n))
            assert status == 201, event
            acked.append(event)
        epoch = acked[0]["epoch"]

        await asyncio.to_thread(postgres_server.stop)
        began = time.monotonic()
        for n in range(5):
            status, body = await server.post_event(http, locker_event(100 + n))
            assert status == 503, body  # never a false ack
            refusals.append(body["error"])
        assert all(e["code"] == "store_unavailable" for e in refusals)
        await wait_ready(http, server, ready=False)
        not_ready_after = time.monotonic() - began
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200, "alive while its store is down"

        await asyncio.to_thread(postgres_server.start)
        await wait_ready(http, server)  # no restart of lockerbus
        for n in range(5, 10):
            status, event = await server.post_event(http, locker_event(n))
            assert status == 201, event
            acked.append(event)

        stored, stored_epoch = await stored_events(server, LOCKERS)
    assert stored_epoch == epoch
    assert [e["seq"] for e in acked] == list(range(1, 11)), "a refusal used up no seq"
    assert stored == acked, "exactly the acknowledged events are stored"
    record(
        "postgres_restart",
        refusals=len(refusals),
        not_ready_within_seconds=round(not_ready_after, 2),
        lost=0,
    )


async def test_a_frozen_postgres_refuses_in_bounded_time_and_acks_nothing_falsely(
    server_process, postgres_server: PostgresServer
) -> None:
    """PostgreSQL up but answering nothing (every process stopped): publishes are
    refused within the 5 s command timeout, /readyz says 503 within its 2 s bound,
    /healthz keeps answering; once it answers again, lockerbus resumes by itself."""
    server = server_process(postgres_server.url())
    async with aiohttp.ClientSession() as http:
        status, first = await server.post_event(http, locker_event(0))
        assert status == 201
        frozen = await asyncio.to_thread(postgres_server.freeze)
        try:
            began = time.monotonic()
            publish = asyncio.create_task(server.post_event(http, locker_event(1)))
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200
            await wait_ready(http, server, ready=False)
            ready_after = time.monotonic() - began
            status, body = await publish
            refused_after = time.monotonic() - began
        finally:
            postgres_server.thaw(frozen)
        assert (status, body["error"]["code"]) == (503, "store_unavailable"), body
        assert ready_after < 3.0, ready_after
        assert refused_after < 7.0, "refused within the command timeout"
        await wait_ready(http, server)
        status, after = await server.post_event(http, locker_event(2))
        assert status == 201, after
        stored, _epoch = await stored_events(server, LOCKERS)
    seqs = [e["seq"] for e in stored]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap"
    assert stored[0] == first and stored[-1] == after, "every ack is stored"
    assert len(stored) in (2, 3), "a refusal means not known to be stored"
    record(
        "postgres_frozen",
        readyz_503_s=round(ready_after, 2),
        publish_refused_after_s=round(refused_after, 2),
        refused_publish_stored_later=len(stored) == 3,
    )
