"""Benchmark the event stores (run through scripts/bench_store).

Prints appends/s and replay(1000) latency for the memory and SQLite stores (and
for Redis and PostgreSQL servers given with ``--redis URL`` / ``--postgres URL``:
each run there starts from empty tables or a fresh key prefix), and
the RSS growth of a memory store holding 10,000 events (measured in a fresh
child process so nothing else in this one skews it).  Timings are the best and
the median of several runs: on a shared machine the best shows what the code
costs, the median what a busy neighbour makes of it.  Process CPU time is
printed beside wall time because a neighbour steals wall time, not CPU time
(for SQLite it includes the writer and reader threads, not fsync waits).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from lockerbus.store import EventStore, StoreOptions, open_store

NAMESPACE = "/ws/lockers"
T0 = datetime(2026, 11, 26, 19, 0, tzinfo=UTC)
TARGETS = {
    "memory": {"appends": 100_000, "replay_ms": 2.0},
    "sqlite": {"appends": 10_000, "replay_ms": 10.0},
    "redis": {"appends": 10_000, "replay_ms": 10.0},
    "postgresql": {"appends": 5_000, "replay_ms": 10.0},
}


def event(i: int) -> dict[str, Any]:
    """A typical locker event (about 400 bytes as stored JSON)."""
    at = (T0 + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")
    return {
        "id": str(uuid.uuid4()),
        "type": "locker_state_changed",
        "version": "1.0",
        "namespace": NAMESPACE,
        "room": "locker_updates",
        "timestamp": at.replace("+00:00", "Z"),
        "data": {
            "lockerId": f"locker-{i % 200}",
            "oldState": "closed",
            "newState": "open",
            "kioskId": f"kiosk-{i % 20}",
            "userId": f"user-{i % 5000}",
            "reason": "User opened with RFID",
            "metadata": {"rfid_card": f"CARD{i:08d}"},
        },
    }


def summary(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


async def appends_per_second(store: EventStore, total: int, writers: int) -> tuple[float, float]:
    """Appends per wall-clock second, and per CPU second of this process."""
    events = [event(i) for i in range(total)]
    per_writer = total // writers

    async def write(chunk: list[dict[str, Any]]) -> None:
        for item in chunk:
            await store.append(item)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(
        *(write(events[w * per_writer : (w + 1) * per_writer]) for w in range(writers))
    )
    done = per_writer * writers
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def socket_replay(store: EventStore) -> Callable[[int], Awaitable[bytes]]:
    """What the server does for a connect replay up to its transport write: read the
    stored events and build their frames, joined (replay_stored + encode_replayed
    where the code has them, else replay + encode_event of each event, as before)."""
    from lockerbus import fanout

    if hasattr(store, "replay_stored") and hasattr(fanout, "encode_replayed"):

        async def stored(after: int) -> bytes:
            result = await store.replay_stored(NAMESPACE, after_seq=after, limit=1000)
            frames: bytes = fanout.encode_replayed(NAMESPACE, result.events).frames
            return frames

        return stored

    async def decoded(after: int) -> bytes:
        result = await store.replay(NAMESPACE, after_seq=after, limit=1000)
        return b"".join(
            fanout.encode_event(NAMESPACE, e["type"], {**e, "replayed": True}).frame
            for e in result.events
        )

    return decoded


async def socket_replay_ms(store: EventStore, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU milliseconds of each socket replay of the newest 1,000."""
    last = await store.last_seq(NAMESPACE)
    build = socket_replay(store)
    wall, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        frames = await build(last - 1000)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
        assert frames.count(b'"replayed":true}]') == 1000
    return wall, cpu


async def replay_ms(store: EventStore, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU milliseconds of each replay of the newest 1,000."""
    last = await store.last_seq(NAMESPACE)
    wall, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = await store.replay(NAMESPACE, after_seq=last - 1000, limit=1000)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
        assert result.recovered is True
        assert len(result.events) == 1000
    return wall, cpu


async def bench(
    name: str, make: Callable[[], Awaitable[EventStore]], total: int, writers: int, runs: int
) -> None:
    rates, cpu_rates = [], []
    for _ in range(runs):
        store = await make()
        try:
            rate, cpu_rate = await appends_per_second(store, total, writers)
        finally:
            await store.close()
        rates.append(rate)
        cpu_rates.append(cpu_rate)
    store = await make()
    try:
        await appends_per_second(store, 10_000, writers)
        runs = 200 if name == "memory" else 50
        wall, cpu = await replay_ms(store, runs)
        socket_wall, socket_cpu = await socket_replay_ms(store, runs)
    finally:
        await store.close()
    best_ms, median_ms = summary(wall)
    target = TARGETS[name]
    print(
        f"{name:10} appends/s    best {max(rates):9,.0f}  median {statistics.median(rates):9,.0f}"
        f"  per CPU-second {max(cpu_rates):9,.0f}"
        f"   ({total:,} events, {writers} appender(s); target >= {target['appends']:,})"
    )
    print(
        f"{name:10} replay(1000) best {best_ms:9.2f}  median {median_ms:9.2f}"
        f"  CPU ms (median) {statistics.median(cpu):5.2f}"
        f"   (ms; target <= {target['replay_ms']} ms)"
    )
    best_ms, median_ms = summary(socket_wall)
    print(
        f"{name:7} socket replay(1000) best {best_ms:6.2f}  median {median_ms:9.2f}"
        f"  CPU ms (median) {statistics.median(socket_cpu):5.2f}"
        "   (ms: read + the frames a connect replay writes)"
    )


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def rss_child(count: int) -> None:
    """In a fresh process: RSS before and after a memory store takes ``count`` events."""
    store = open_store("memory", StoreOptions(max_events=count))
    await store.start()
    await store.append(event(-1))  # warm up imports and caches before measuring
    gc.collect()
    before = rss_kib()
    for i in range(count):
        await store.append(event(i))
    gc.collect()
    after = rss_kib()
    stats = await store.stats()
    assert stats.events == count
    print(f"{(after - before) / 1024:.2f}")
    await store.close()


def rss_growth(count: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events and runs")
    parser.add_argument("--redis", metavar="URL", help="also a Redis store at URL")
    parser.add_argument(
        "--postgres", metavar="URL", help="also a PostgreSQL store at URL (its tables are dropped)"
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        await rss_child(args.rss_child)
        return
    runs = 1 if args.quick else 3
    load = os.getloadavg()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )

    async def memory() -> EventStore:
        store = open_store("memory", StoreOptions(max_events=10_000))
        await store.start()
        return store

    with tempfile.TemporaryDirectory() as directory:
        counter = iter(range(1_000_000))

        async def sqlite() -> EventStore:
            url = f"sqlite:///{directory}/bench-{next(counter)}.db"
            store = open_store(url, StoreOptions(max_events=10_000))
            await store.start()
            return store

        await bench("memory", memory, 20_000 if args.quick else 200_000, 1, runs)
        await bench("sqlite", sqlite, 5_000 if args.quick else 30_000, 100, runs)

    if args.redis:
        redis_url = args.redis

        async def redis() -> EventStore:
            url = f"{redis_url}?prefix=bench-{uuid.uuid4().hex[:8]}"
            store = open_store(url, StoreOptions(max_events=10_000))
            await store.start()
            return store

        await bench("redis", redis, 5_000 if args.quick else 30_000, 100, runs)
    if args.postgres:
        postgres_url = args.postgres

        async def postgres() -> EventStore:
            import asyncpg

            conn = await asyncpg.connect(postgres_url)
            try:
                for table in ("meta", "namespaces", "counters", "events", "state"):
                    await conn.execute(f"DROP TABLE IF EXISTS lockerbus_{table}")
            finally:
                await conn.close()
            store = open_store(postgres_url, StoreOptions(max_events=10_000))
            await store.start()
            return store

        await bench("postgresql", postgres, 5_000 if args.quick else 30_000, 100, runs)

    growth = rss_growth(10_000)
    print(f"memory  RSS growth for 10,000 events: {growth:.2f} MB   (target < 15 MB)")


if __name__ == "__main__":
    asyncio.run(main())
