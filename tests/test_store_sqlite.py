"""What only the durable store has: restarts, crashes, bytes on disk, failing storage."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from lockerbus.errors import StoreUnavailableError
from lockerbus.store import StoreOptions
from lockerbus.store.sqlite import SqliteEventStore
from tests.storekit import help_event, help_update, locker_event, make_event, seqs

LOCKERS = "/ws/lockers"
HELP = "/ws/help"


def sqlite_store(path: Path, **kwargs: float) -> SqliteEventStore:
    timeout = kwargs.pop("busy_timeout_seconds", 5.0)
    return SqliteEventStore(path, StoreOptions(**kwargs), busy_timeout_seconds=timeout)  # type: ignore[arg-type]


async def test_epoch_and_seqs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as store:
        epoch = store.epoch
        await store.append(make_event())
        await store.append(make_event())
        await store.append(make_event(HELP))
    async with sqlite_store(path) as store:
        assert store.epoch == epoch
        assert (await store.append(make_event()))["seq"] == 3
        assert (await store.append(make_event(HELP)))["seq"] == 2
        result = await store.replay(LOCKERS, after_seq=1, epoch=epoch, limit=10)
        assert (result.recovered, seqs(result.events)) == (True, [2, 3])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_a_new_file_is_a_new_epoch(tmp_path: Path) -> None:
    async with (
        sqlite_store(tmp_path / "a.db") as first,
        sqlite_store(tmp_path / "b.db") as second,
    ):
        assert first.epoch != second.epoch


async def test_a_byte_flipped_in_the_file_is_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as store:
        for i in range(1, 6):
            await store.append(make_event(note=f"MARKER-{i}"))
    raw = bytearray(path.read_bytes())
    assert not (tmp_path / "events.db-wal").exists(), "closing checkpointed the WAL"
    at = raw.index(b"MARKER-3")
    assert raw.count(b"MARKER-3") == 1
    raw[at] ^= 0x20  # "M" -> "m": still valid JSON, no longer the bytes checksummed
    path.write_bytes(bytes(raw))

    async with sqlite_store(path) as store:
        with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
            result = await store.replay(LOCKERS, after_seq=1, limit=10)
            again = await store.replay(LOCKERS, after_seq=1, limit=10)
        assert (result.recovered, seqs(result.events)) == (False, [1, 2, 4, 5])
        assert seqs(again.events) == [1, 2, 4, 5]
        assert [r.getMessage() for r in caplog.records] == [
            "corrupt event removed: namespace=/ws/lockers seq=3 (checksum mismatch)"
        ]
        stats = await store.stats()
        assert stats.evictions["corrupt"] == 1
        assert stats.namespaces[LOCKERS].count == 4
    async with sqlite_store(path) as store:
        assert (await store.stats()).evictions["corrupt"] == 1, "counted durably"


CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from tests.storekit import make_event
from lockerbus.store import StoreOptions
from lockerbus.store.sqlite import SqliteEventStore

async def main():
    store = SqliteEventStore(sys.argv[1], StoreOptions(max_events=1_000_000))
    await store.start()
    print("epoch", store.epoch, flush=True)

    async def publish(namespace):
        while True:
            stored = await store.append(make_event(namespace))
            print("ok", stored["namespace"], stored["seq"], stored["id"], flush=True)

    await asyncio.gather(*(publish("/ws/lockers" if i % 2 else "/ws/help") for i in range(16)))

asyncio.run(main())
"""


async def test_appends_that_returned_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        str(Path(__file__).parent),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    epoch_line = (await asyncio.wait_for(child.stdout.readline(), timeout=30)).split()
    assert epoch_line[0] == b"epoch"
    acknowledged: dict[tuple[str, int], str] = {}
    while len(acknowledged) < 400:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line, "the child died on its own"
        _ok, namespace, seq, event_id = line.decode().split()
        acknowledged[(namespace, int(seq))] = event_id
    child.send_signal(signal.SIGKILL)
    # Lines already in the pipe were printed after their append returned: they count too.
    for line in (await child.stdout.read()).decode().splitlines():
        parts = line.split()
        if len(parts) == 4:
            acknowledged[(parts[1], int(parts[2]))] = parts[3]
    assert await child.wait() == -signal.SIGKILL

    async with sqlite_store(path, max_events=1_000_000) as store:
        assert store.epoch == epoch_line[1].decode()
        for namespace in (LOCKERS, HELP):
            held = (await store.page(namespace, limit=1_000_000)).events
            by_seq = {event["seq"]: event["id"] for event in held}
            assert seqs(held) == list(range(1, len(held) + 1)), "no holes, no repeats"
            mine = {seq: i for (ns, seq), i in acknowledged.items() if ns == namespace}
            assert mine, "the child acknowledged appends in both namespaces"
            for seq, event_id in mine.items():
                assert by_seq.get(seq) == event_id, f"{namespace} seq {seq} was acknowledged"
            last = await store.last_seq(namespace)
            assert last == len(held) >= max(mine)
            assert (await store.append(make_event(namespace)))["seq"] == last + 1


async def test_a_locked_database_is_unavailable_and_nothing_is_half_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path, busy_timeout_seconds=0.1) as store:
        await store.append(make_event())
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            results = await asyncio.gather(
                *(store.append(make_event()) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, StoreUnavailableError) for r in results), results
            assert "locked" in str(results[0])
            assert results[0].code == "store_unavailable"  # type: ignore[union-attr]
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.check()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await store.append(make_event()))["seq"] == 2, "the failed appends took no seq"
        await store.check()
        assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2]


async def test_a_removed_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as store:
        await store.append(make_event())
        for suffix in ("", "-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        with pytest.raises(StoreUnavailableError, match="removed"):
            await store.append(make_event())
        with pytest.raises(StoreUnavailableError, match="removed"):
            await store.check()
        with pytest.raises(StoreUnavailableError, match="removed"):
            await store.replay(LOCKERS, after_seq=0, limit=10)
        with pytest.raises(StoreUnavailableError, match="unable to open"):
            await store.stats()  # a reader opening now finds no file...
        with pytest.raises(StoreUnavailableError, match="removed"):
            await store.cleanup()
    assert not path.exists(), "...and leaves no empty database in its place"


async def test_a_replaced_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as store:
        await store.append(make_event())
        path.rename(tmp_path / "moved.db")
        path.write_bytes(b"")
        with pytest.raises(StoreUnavailableError, match="replaced"):
            await store.append(make_event())


async def test_a_full_disk_is_unavailable_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as store:
        await store.append(make_event())
        writer = store._writer
        assert writer is not None
        pages = await writer.call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        # SQLite's own cap stands in for the disk: same error code, same code path.
        await writer.call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        big = make_event()
        big["data"]["metadata"] = {"blob": "x" * 20_000}
        with pytest.raises(StoreUnavailableError, match="full"):
            await store.append(big)
        with pytest.raises(StoreUnavailableError, match="full"):
            await store.check()
        await writer.call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        assert (await store.append(make_event()))["seq"] == 2, "the failed append took no seq"
        await store.check()
        stats = await store.stats()
        assert stats.namespaces[LOCKERS].count == 2


async def test_an_unopenable_path_fails_start(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path / "missing-dir" / "events.db")
    with pytest.raises(StoreUnavailableError, match="unable to open"):
        await store.start()
    await store.close()


async def test_a_file_that_is_not_a_database_fails_start(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(StoreUnavailableError, match="not a database"):
        await sqlite_store(path).start()


async def test_two_stores_on_one_file_never_share_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with sqlite_store(path) as first, sqlite_store(path) as second:
        assert first.epoch == second.epoch
        results = await asyncio.gather(
            *(s.append(make_event()) for _ in range(100) for s in (first, second))
        )
        assert sorted(seqs(results)) == list(range(1, 201))


async def test_a_cancelled_append_is_still_stored_in_order(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path / "events.db") as store:
        task = asyncio.create_task(store.append(make_event()))
        await asyncio.sleep(0)  # let it enqueue
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.append(make_event()))["seq"] == 2
        assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2]


async def test_no_method_runs_sqlite_on_the_event_loop_thread(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: set[int] = set()
    async with sqlite_store(tmp_path / "events.db") as store:
        await store.append(make_event())
        await asyncio.gather(*(store.replay(LOCKERS, after_seq=0, limit=10) for _ in range(4)))
        assert store._writer is not None
        assert store._readers is not None
        for conn in [store._writer.conn, *store._readers.conns]:
            assert conn is not None
            conn.set_trace_callback(lambda _sql: seen.add(threading.get_ident()))
        await store.append(make_event())
        await store.replay(LOCKERS, after_seq=0, limit=10)
        await store.page(LOCKERS, limit=10)
        await store.stats()
        await store.cleanup()
        await store.check()
    assert seen
    assert loop_thread not in seen


async def test_a_file_from_before_the_state_gets_it_built_from_its_history(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    async with sqlite_store(path) as store:
        await store.append(locker_event("k1", "L1", "open"))
        await store.append(locker_event("k1", "L1", "closed"))
        await store.append(help_event(5))
        await store.append(help_event(6))
        await store.append(help_update(5, "open", "assigned"))
        await store.append(help_update(6, "open", "resolved"))
        before = (await store.read_state("lockers"), await store.read_state("help"))
    with sqlite3.connect(path) as conn:  # what a file written by an older lockerbus lacks
        conn.execute("DROP TABLE state")
    async with sqlite_store(path) as store:
        after = (await store.read_state("lockers"), await store.read_state("help"))
        assert after == before
        assert [(e["id"], e["status"]) for e in after[1].entries] == [(5, "assigned")]
