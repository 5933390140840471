"""Time: expired events are never replayed; any `since` gets a clear answer."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.processes import ServerProcess, stored_events
from tests.reliability.clients import LOCKERS, Publisher
from tests.reliability.conftest import record
from tests.support import connect

TTL_HOURS = 0.0005  # 1.8 s


async def replay(server: ServerProcess, **auth: Any) -> tuple[dict[str, Any], list[int]]:
    """Connect with ``auth``; the replay_complete payload and the seqs replayed."""
    client = await connect(server, LOCKERS, auth=auth)
    done = (await client.wait_events(LOCKERS, "replay_complete", 1))[0]
    seqs = [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")]
    await client.close()
    return done, seqs


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_expired_events_are_never_replayed(server_process, tmp_path, store: str) -> None:
    url = "memory" if store == "memory" else f"sqlite:///{tmp_path / 'ttl.db'}"
    server = server_process(url, ttl_hours=TTL_HOURS)
    pub = Publisher(server, "http", "kiosk-1")
    await pub.run(limit=5)
    epoch = pub.acked[0]["epoch"]
    done, seqs = await replay(server, last_seq=0, epoch=epoch)
    assert (done["recovered"], seqs) == (True, [1, 2, 3, 4, 5])

    await asyncio.sleep(TTL_HOURS * 3600 + 0.3)  # the passing of time is what is tested
    for auth in ({"last_seq": 0, "epoch": epoch}, {"since": "2000-01-01T00:00:00Z"}, {}):
        done, seqs = await replay(server, **auth)
        assert seqs == [], auth
        assert done["last_seq"] == 5, auth  # the sequence outlives its events
    done, _ = await replay(server, last_seq=0, epoch=epoch)
    assert done["recovered"] is False  # expired is a gap, and said so
    assert (await stored_events(server, LOCKERS))[0] == []

    pub2 = Publisher(server, "http", "kiosk-1")
    await pub2.run(limit=1)
    assert pub2.acked[0]["seq"] == 6
    done, seqs = await replay(server, last_seq=5, epoch=epoch)
    assert (done["recovered"], seqs) == (True, [6])
    record(f"ttl_{store}", ttl_seconds=TTL_HOURS * 3600, expired=5, replayed_after_expiry=0)


async def test_since_in_the_future_far_past_or_malformed(server_process) -> None:
    server = server_process("memory")
    await Publisher(server, "http", "kiosk-1").run(limit=3)

    done, seqs = await replay(server, since="2999-01-01T00:00:00Z")
    assert (done["count"], done["recovered"], done["last_seq"], seqs) == (0, None, 3, [])
    done, seqs = await replay(server, since="0001-01-01T00:00:00+00:00")
    assert (done["count"], seqs) == (3, [1, 2, 3])

    for since in ["yesterday", "2026-01-01T00:00:00", 12345, None, "", "x" * 10_000]:
        client = await connect(server, LOCKERS, auth={"since": since}, expect_refusal=True)
        await client.wait_for(lambda c=client: LOCKERS in c.connect_errors)
        error = client.connect_errors[LOCKERS]
        assert error["message"] == "bad_request", since
        assert "auth.since" in error["data"]["message"], error
        await client.close()

    async with aiohttp.ClientSession(headers=server.headers()) as http:
        for since in ["yesterday", "2026-01-01T00:00:00", "9" * 100]:
            params = {"namespace": LOCKERS, "since": since}
            async with http.get(f"{server.url}/api/events", params=params) as resp:
                assert resp.status == 400, since
                body = await resp.json()
                assert body["error"]["code"] == "bad_request"
                assert "since" in body["error"]["message"]
        params = {"namespace": LOCKERS, "since": "2999-01-01T00:00:00Z"}
        async with http.get(f"{server.url}/api/events", params=params) as resp:
            assert (await resp.json())["events"] == []
