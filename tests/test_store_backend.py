"""The skeleton every store shares (lockerbus/store/backend.py): the lifecycle, the
cleanup loop and the repair loop, run on the real backends."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockerbus.errors import StoreUnavailableError
from lockerbus.store import StoreOptions, open_store
from lockerbus.store.backend import BaseEventStore
from lockerbus.store.memory import MemoryEventStore
from lockerbus.store.sqlite import SqliteEventStore
from tests.storekit import BACKENDS, Backend, FakeClock, make_event, seqs

LOCKERS = "/ws/lockers"
HOUR = 3600.0


class Stores:
    """Makes (unstarted) stores of one backend on one fake clock; closes them after."""

    def __init__(self, backend: Backend, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self.clock = FakeClock()
        self.made: list[BaseEventStore[Any]] = []

    def __call__(self, **options: float) -> BaseEventStore[Any]:
        url = self.backend.url(self.directory, f"store{len(self.made)}")
        settings = StoreOptions(cleanup_interval_seconds=HOUR, **options)  # type: ignore[arg-type]
        store = open_store(url, settings, clock=self.clock)
        assert isinstance(store, BaseEventStore)
        self.made.append(store)
        return store


@pytest.fixture(params=sorted(BACKENDS))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "redis":
        request.getfixturevalue("redis_shared")
    made = Stores(BACKENDS[request.param], tmp_path)
    yield made
    for store in made.made:
        await store.close()


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lockerbus-sqlite-writer"]


# -- lifecycle ------------------------------------------------------------------


async def test_the_lifecycle_new_open_closed(stores: Stores) -> None:
    store = stores()
    assert store.state == "new"
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.append(make_event())
    await store.start()
    assert store.state == "open"
    epoch = store.epoch
    assert epoch
    await store.start()  # idempotent: nothing opened twice, same sequence space
    assert (store.state, store.epoch) == ("open", epoch)
    assert (await store.append(make_event()))["seq"] == 1
    await store.close()
    assert store.state == "closed"
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.append(make_event())
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.start()


async def test_concurrent_starts_open_once(stores: Stores) -> None:
    before = len(writer_threads())
    store = stores()
    await asyncio.gather(store.start(), store.start(), store.start())
    assert store.state == "open"
    if stores.backend.name == "sqlite":
        assert len(writer_threads()) == before + 1
    assert (await store.append(make_event()))["seq"] == 1
    await store.close()
    assert len(writer_threads()) == before


async def test_close_during_start_releases_what_start_opened(stores: Stores) -> None:
    before = len(writer_threads())
    store = stores()
    starting = asyncio.create_task(store.start())
    await asyncio.sleep(0)  # one loop turn: start() runs up to its first real wait
    if stores.backend.name == "memory":
        # nothing to wait for: a memory store is open as soon as start() runs
        assert store.state == "open"
        await starting
        await store.close()
    else:
        assert store.state == "starting"
        await store.close()
        with pytest.raises(StoreUnavailableError, match="closed while starting"):
            await starting
    assert store.state == "closed"
    assert store._cleaner is None
    assert len(writer_threads()) == before
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.check()


async def test_a_failed_start_leaves_the_store_new_to_start_again(tmp_path: Path) -> None:
    directory = tmp_path / "not-yet"
    store = SqliteEventStore(directory / "events.db", StoreOptions(cleanup_interval_seconds=HOUR))
    with pytest.raises(StoreUnavailableError, match="unable to open"):
        await store.start()
    assert store.state == "new"
    assert store._cleaner is None
    os.mkdir(directory)
    async with store:
        assert (await store.append(make_event()))["seq"] == 1
    assert store.state == "closed"


# -- the cleanup loop -------------------------------------------------------------


class FlakyCleanup(MemoryEventStore):
    """The real memory store, whose first cleanup passes fail as ``failures`` say."""

    def __init__(self, clock: FakeClock, failures: list[Exception]) -> None:
        super().__init__(StoreOptions(ttl_seconds=60, cleanup_interval_seconds=0.001), clock=clock)
        self.failures = failures
        self.passes = 0
        self.cleaned = asyncio.Event()

    async def cleanup(self) -> int:
        self.passes += 1
        if self.failures:
            raise self.failures.pop(0)
        removed = await super().cleanup()
        if removed:
            self.cleaned.set()
        return removed


async def test_the_cleanup_loop_goes_on_after_a_failed_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failures: list[Exception] = [RuntimeError("boom"), StoreUnavailableError("disk away")]
    store = FlakyCleanup(clock, failures)
    with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
        async with store:
            await store.append(make_event())
            clock.advance(61)
            await asyncio.wait_for(store.cleaned.wait(), timeout=5)
            cleaner = store._cleaner
            assert cleaner is not None and not cleaner.done()
        assert cleaner.done() and store._cleaner is None
    assert store.passes >= 3
    failed = [r for r in caplog.records if "cleanup failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.ERROR, logging.WARNING]
    assert "boom" in (failed[0].exc_text or "")
    assert "disk away" in failed[1].getMessage()


class FailedPasses(logging.Handler):
    """Sets ``seen`` once ``wanted`` cleanup passes were logged as failed (the loop
    logs on the event loop's thread, so an asyncio.Event is safe to set here)."""

    def __init__(self, wanted: int) -> None:
        super().__init__(logging.WARNING)
        self.wanted = wanted
        self.messages: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "cleanup failed" in message:
            self.messages.append(message)
            if len(self.messages) >= self.wanted:
                self.seen.set()


async def test_a_real_failure_is_logged_each_pass_and_the_loop_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, StoreOptions(cleanup_interval_seconds=0.001))
    watcher = FailedPasses(wanted=2)
    logger = logging.getLogger("lockerbus.store")
    logger.addHandler(watcher)
    try:
        async with store:
            await store.append(make_event())
            path.unlink()
            await asyncio.wait_for(watcher.seen.wait(), timeout=5)
            assert store._cleaner is not None and not store._cleaner.done()
    finally:
        logger.removeHandler(watcher)
    # a pass already under way when the file went finds no file to open; later ones say why
    gone = ("database file was removed", "unable to open database file")
    assert all(any(why in message for why in gone) for message in watcher.messages)
    assert "database file was removed" in watcher.messages[-1]


# -- the repair loop --------------------------------------------------------------


async def test_a_read_repairs_a_bounded_number_of_rounds_then_says_so(stores: Stores) -> None:
    store = stores()
    await store.start()
    for _ in range(8):
        await store.append(make_event())
    for seq in range(1, 9):
        await stores.backend.corrupt(store, LOCKERS, seq)
    rounds = store.repair_attempts
    # limit=1: each round reads the newest held event, finds it corrupt, removes it
    with pytest.raises(StoreUnavailableError, match="reads keep failing their checks"):
        await store.replay(LOCKERS, limit=1)
    stats = await store.stats()
    assert stats.evictions["corrupt"] == rounds
    assert stats.namespaces[LOCKERS].count == 8 - rounds
    # the next read carries on where the last stopped, and finds the log empty
    result = await store.replay(LOCKERS, limit=1)
    assert (seqs(result.events), result.last_seq) == ([], 8)
    assert (await store.stats()).evictions["corrupt"] == 8


async def test_a_read_that_meets_a_corrupt_record_answers_after_removing_it(
    stores: Stores,
) -> None:
    store = stores()
    await store.start()
    for _ in range(5):
        await store.append(make_event())
    await stores.backend.corrupt(store, LOCKERS, 3)
    replayed = await store.replay(LOCKERS, after_seq=1, limit=10)
    # the hole shows: not recovered, so the newest events, without the removed one
    assert (seqs(replayed.events), replayed.recovered) == ([1, 2, 4, 5], False)
    paged = await store.page(LOCKERS, limit=10)
    assert seqs(paged.events) == [1, 2, 4, 5]
    assert (await store.stats()).evictions["corrupt"] == 1


def test_every_backend_is_the_shared_skeleton() -> None:
    """No backend keeps a loop of its own beside the shared ones."""
    import lockerbus.store.redis as redis_store

    backends: list[type] = [MemoryEventStore, SqliteEventStore, redis_store.RedisEventStore]
    for backend in backends:
        assert issubclass(backend, BaseEventStore)
        for shared in ("start", "close", "_cleanup_forever", "_read_repairing"):
            assert shared not in vars(backend), f"{backend.__name__} overrides {shared}"
