"""An instance partitioned from Redis (issue 20): it must keep answering while cut,
refuse honestly (``store_unavailable``, ``/readyz`` 503), and resume by itself
once the link is back, with every subscriber gap-free.

Redis, instance A and instance B run in network namespaces of their own
(tests/netns.py); a gateway publishes over HTTP to both while panels on both
follow /ws/lockers, resuming with ``last_seq``/``epoch`` whenever they drop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.netns import Partition, partition
from tests.processes import ServerProcess, stored_events
from tests.redis_support import RedisServer
from tests.reliability.clients import LOCKERS, Publisher, Tracker
from tests.reliability.conftest import HEAVY, record

pytestmark = [pytest.mark.needs_redis, pytest.mark.slow]

CUT_SECONDS = float(os.environ.get("LOCKERBUS_CUT_SECONDS", 30.0 if HEAVY else 8.0))
PACE = 0.02  # seconds between a publisher's publishes
HEAVY_ONLY = pytest.mark.skipif(not HEAVY, reason="heavy variant: scripts/reliability")
RESUME_WITHIN = 20.0  # seconds after healing by which A must be ready again


class Cluster:
    """Redis in R, lockerbus A and B, each in its own namespace."""

    def __init__(self, net: Partition, redis: RedisServer, a: ServerProcess, b: ServerProcess):
        self.net, self.redis, self.a, self.b = net, redis, a, b


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with partition() as net:
        redis = net.redis(tmp_path / "redis")
        await asyncio.to_thread(redis.start)
        a = net.instance("a", redis, tmp_path / "a.log")
        b = net.instance("b", redis, tmp_path / "b.log")
        try:
            await asyncio.gather(a.started(), b.started())
            yield Cluster(net, redis, a, b)
        finally:
            for server in (a, b):
                if server.proc is not None:
                    await asyncio.to_thread(server.kill)
            await asyncio.to_thread(redis.stop)
        for server in (a, b):
            assert not server.crashes(), server.log()


async def probe(http: aiohttp.ClientSession, server: ServerProcess, path: str) -> int | None:
    """The status of GET ``path`` within 3 s, or None when it did not answer."""
    try:
        async with http.get(f"{server.url}{path}", timeout=aiohttp.ClientTimeout(total=3)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time the process used so far."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (100 Hz)


async def run_partition(
    c: Cluster, cut: Callable[[], None], heal: Callable[[], None], case: str
) -> None:
    panels = [await Tracker(s, f"panel-{s.host}-{i}").connect() for s in (c.a, c.b) for i in (0, 1)]
    pubs = [Publisher(s, "http", f"kiosk-{n}", interval=PACE) for n, s in enumerate((c.a, c.b))]
    running = [asyncio.create_task(p.run()) for p in pubs]
    try:
        await pubs[0].wait_acked(20)
        await pubs[1].wait_acked(20)
        acked_before = len(pubs[0].acked)
        failed_before = pubs[0].failed

        await asyncio.to_thread(cut)
        started = time.monotonic()
        health: list[int | None] = []
        ready: list[int | None] = []
        async with aiohttp.ClientSession() as http:
            while time.monotonic() - started < CUT_SECONDS:
                health.append(await probe(http, c.a, "/healthz"))
                ready.append(await probe(http, c.a, "/readyz"))
                await asyncio.sleep(0.5)
            acked_during = len(pubs[0].acked) - acked_before
            refused_during = pubs[0].failed - failed_before
            b_acked_at_heal = len(pubs[1].acked)
            await asyncio.to_thread(heal)
            healed = time.monotonic()
            while await probe(http, c.a, "/readyz") != 200:
                assert time.monotonic() - healed < RESUME_WITHIN, f"A never ready: {c.a.log()}"
                await asyncio.sleep(0.2)
            ready_after = time.monotonic() - healed
            await pubs[0].wait_acked(len(pubs[0].acked) + 20, timeout=RESUME_WITHIN)
            acked_after = time.monotonic() - healed
        for pub in pubs:
            pub.stop.set()
        await asyncio.gather(*running)

        stored, _epoch = await stored_events(c.b, LOCKERS)
        by_id = {e["id"]: e for e in stored}
        seqs = [e["seq"] for e in stored]
        assert seqs == list(range(1, len(seqs) + 1)), "the store itself is gap-free"
        for pub in pubs:
            for event in pub.acked:  # no false acks: every acknowledged event is stored
                assert by_id.get(event["id"]) == event
        for panel in panels:
            await panel.wait_until(seqs[-1], timeout=RESUME_WITHIN)
        for panel in panels:
            assert panel.violations == [], (panel.sub, panel.violations[:5])
            assert panel.generations == [], "no epoch change, so nothing is unrecoverable"
            assert panel.seqs == seqs, (panel.sub, sorted(set(seqs) - set(panel.seqs))[:10])
            assert all(panel.ids[e["seq"]] == e["id"] for e in stored)
        assert len(pubs[1].acked) > 20, "B kept accepting"

        assert all(status == 200 for status in health), f"/healthz while cut: {health}"
        assert all(status == 503 for status in ready), f"/readyz while cut: {ready}"
        async with aiohttp.ClientSession() as http:
            _, stats = await c.a.get(http, "/api/stats")
        relay = stats["cluster"]["relay"]
        before = cpu_seconds(c.a)
        await asyncio.sleep(2)  # idle: nothing to await; the process must not spin
        idle_cpu = (cpu_seconds(c.a) - before) / 2
        assert idle_cpu < 0.3, f"A uses {idle_cpu:.0%} of a core while idle"
        record(
            case,
            cut_seconds=CUT_SECONDS,
            a_acked_during_cut=acked_during,
            a_refused_or_unanswered_during_cut=refused_during,
            b_acked_during_cut=b_acked_at_heal,
            healthz_answers=f"{health.count(200)}/{len(health)}",
            readyz_503=f"{ready.count(503)}/{len(ready)}",
            ready_after_heal_s=round(ready_after, 2),
            acked_after_heal_s=round(acked_after, 2),
            events=len(seqs),
            lost=0,
            duplicated=0,
            idle_cpu_after=round(idle_cpu, 3),
            a_filled_from_store=relay["filled_from_store"],
            a_resyncs=relay["resyncs"],
            a_panel_reconnects=sum(len(p.completes) - 1 for p in panels[:2]),
        )
    finally:
        for pub in pubs:
            pub.stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for panel in panels:
            await panel.close()


async def test_silent_cut_then_heal(cluster: Cluster) -> None:
    """The link goes down without a word: A's packets to Redis vanish for CUT_SECONDS."""
    await run_partition(cluster, cluster.net.cut, cluster.net.heal, "partition_silent")


@pytest.mark.parametrize(
    "kind",
    ["unreachable", pytest.param("blackhole", marks=HEAVY_ONLY)],
)
async def test_fast_failing_cut_then_heal(cluster: Cluster, kind: str) -> None:
    """A route that fails at once (unreachable) or drops in A's own stack (blackhole)."""
    net = cluster.net
    await run_partition(
        cluster, lambda: net.route(kind), lambda: net.unroute(kind), f"partition_{kind}"
    )


@HEAVY_ONLY
async def test_own_end_down_then_heal(cluster: Cluster) -> None:
    """A's own end of the link goes down: the kernel fails A's sends at once."""
    net = cluster.net
    await run_partition(cluster, net.down, net.up, "partition_own_end_down")
