"""What only the memory store has: its own expiry (no cache that reads reorder),
in-memory corruption, its cleanup task, a new epoch per instance."""

from __future__ import annotations

import asyncio
import logging
import zlib

import pytest

from lockerbus.store import StoreOptions, open_store
from lockerbus.store.memory import MemoryEventStore
from tests.storekit import FakeClock, make_event, seqs

LOCKERS = "/ws/lockers"
HELP = "/ws/help"


def memory_store(clock: FakeClock | None = None, **options: float) -> MemoryEventStore:
    store = open_store("memory", StoreOptions(**options), clock=clock)  # type: ignore[arg-type]
    assert isinstance(store, MemoryEventStore)
    return store


async def test_replaying_old_events_does_not_make_newer_ones_evict_first() -> None:
    async with memory_store(max_events=5) as store:
        for _ in range(5):
            await store.append(make_event())
        # Read every way there is, oldest events most of all.
        for _ in range(3):
            await store.replay(LOCKERS, after_seq=0, limit=5)
            await store.replay(LOCKERS, after_seq=0, limit=1)
            await store.page(LOCKERS, limit=2)
            await store.replay(LOCKERS, limit=5)
            await store.stats()
            await store.cleanup()
        await store.append(make_event())
        assert seqs((await store.page(LOCKERS, limit=10)).events) == [2, 3, 4, 5, 6]
        await store.replay(LOCKERS, after_seq=1, limit=5)
        await store.append(make_event())
        assert seqs((await store.page(LOCKERS, limit=10)).events) == [3, 4, 5, 6, 7]


async def test_each_event_is_held_once() -> None:
    async with memory_store() as store:
        await store.append(make_event())
        log = store._logs[LOCKERS]
        record = log.records[0]
        assert record is not None
        assert store._ids[record.id] is record
        assert isinstance(record.blob, bytes)
        assert record.json is record.blob  # a replay hands out the very bytes


async def test_a_mangled_entry_is_removed_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with memory_store() as store:
        for _ in range(4):
            await store.append(make_event())
        record = store._logs[LOCKERS].records[1]
        assert record is not None
        record.blob = record.blob.replace(b'"open"', b'"shut"')  # same length, new bytes
        with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
            result = await store.replay(LOCKERS, after_seq=0, limit=10)
            await store.replay(LOCKERS, after_seq=0, limit=10)
            await store.cleanup()
        assert (result.recovered, seqs(result.events)) == (False, [1, 3, 4])
        assert [r.getMessage() for r in caplog.records] == [
            "corrupt event removed: namespace=/ws/lockers seq=2 (checksum mismatch)"
        ]
        assert (await store.stats()).evictions["corrupt"] == 1
        assert store._logs[LOCKERS].held == 3


async def test_an_entry_that_no_longer_deserializes_is_corrupt_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with memory_store() as store:
        for _ in range(3):
            await store.append(make_event())
        record = store._logs[LOCKERS].records[2]
        assert record is not None
        record.blob = b'{"seq": 3, "truncated'
        record.crc = zlib.crc32(record.blob)  # checksum agrees: only the JSON fails
        with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
            result = await store.page(LOCKERS, limit=10)
        assert seqs(result.events) == [1, 2]
        assert "does not deserialize" in caplog.text
        assert (await store.stats()).evictions["corrupt"] == 1


class ObservedStore(MemoryEventStore):
    """The real store, telling the test when a cleanup pass removed something."""

    def __init__(self, options: StoreOptions, clock: FakeClock) -> None:
        super().__init__(options, clock=clock)
        self.cleaned = asyncio.Event()

    async def cleanup(self) -> int:
        removed = await super().cleanup()
        if removed:
            self.cleaned.set()
        return removed


async def test_background_cleanup_runs_and_stops_on_close() -> None:
    clock = FakeClock()
    store = ObservedStore(StoreOptions(ttl_seconds=60, cleanup_interval_seconds=0.001), clock)
    await store.start()
    await store.append(make_event())
    clock.advance(61)
    cleaner = store._cleaner
    assert cleaner is not None
    await asyncio.wait_for(store.cleaned.wait(), timeout=5)
    assert store._evictions["ttl"] == 1
    await store.close()
    assert cleaner.done()
    assert store._cleaner is None


async def test_every_memory_store_is_a_new_epoch() -> None:
    async with memory_store() as first, memory_store() as second:
        assert first.epoch != second.epoch
        await first.append(make_event())
        result = await second.replay(LOCKERS, after_seq=1, epoch=first.epoch, limit=10)
        assert result.recovered is False


async def test_start_after_close_is_refused() -> None:
    store = memory_store()
    await store.start()
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.start()


async def test_index_compacts_and_stays_consistent_under_churn() -> None:
    clock = FakeClock()
    async with memory_store(clock, max_events=50, ttl_seconds=100) as store:
        for i in range(5000):
            namespace = HELP if i % 7 == 0 else LOCKERS
            await store.append(make_event(namespace), ttl_seconds=5 if i % 11 == 0 else None)
            clock.advance(0.01)
        stats = await store.stats()
        assert stats.events == sum(log.held for log in store._logs.values()) == 100
        assert len(store._ids) == 100, "ids are freed with their events"
        for namespace, log in store._logs.items():
            held = log.held_records()
            assert len(held) == log.held == stats.namespaces[namespace].count
            assert [r.seq for r in held] == sorted(r.seq for r in held)
            assert len(log.records) < 5000, "the front of the index was compacted"
        assert sum(stats.evictions.values()) == 5000 - 100


async def test_zero_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="max_events"):
        memory_store(max_events=0)
