"""The SQLite store's one writer thread: appends are group-committed.

Why a dedicated thread rather than aiosqlite: the writer takes every append
queued while the previous commit was syncing and writes them in one
transaction, so concurrent appenders share one fsync, and still no append
returns before the transaction holding it is durable (``synchronous=FULL``).
One thread assigning seqs and settling futures in queue order is also what
makes appends resolve in seq order.

Failures (disk full, locked, the file removed or replaced) roll the whole
transaction back and raise :class:`StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from .base import DuplicateEvent, StoreOptions
from .codec import Append, checksum, decode_one, encode, log_corrupt
from .sqlite_schema import (
    HELD_ID,
    INSERT_EVENT,
    INSERT_ID,
    LAST_SEQ,
    PRUNE_IDS,
    UPSERT_LAST,
    bump,
    connect,
    create_or_open,
    evict_capacity,
    fault,
    held,
    held_namespaces,
    rollback,
    transaction,
    unavailable,
)
from .sqlite_state import Row, check_and_apply, locker_row, upsert
from .sqlite_state import create as create_state
from .state import change_of

T = TypeVar("T")

_MAX_BATCH: Final = 512
# A successful commit this recent already proves the write path for check().
_PROBE_FRESH_SECONDS: Final = 1.0
# check() keeps reporting a failed append this long unless an append succeeds since:
# a probe's small write can pass where real appends fail (a disk nearly full).
_FAILURE_MEMORY_SECONDS: Final = 5.0


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: resolve futures in queue order (hence seq order)."""
    for future, result, error in outcomes:
        if future.done():  # the awaiting task was cancelled; the work stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _flat(jobs: list[Append | list[Append] | _Call | None]) -> list[Append | _Call | None]:
    """A group of appends counts as its members (kept together: one transaction)."""
    out: list[Append | _Call | None] = []
    for job in jobs:
        if isinstance(job, list):
            out += job
        else:
            out.append(job)
    return out


class SqliteWriter:
    """The one thread that writes the file; jobs are queued, results settled on the loop."""

    def __init__(
        self,
        path: str,
        options: StoreOptions,
        clock: Callable[[], float],
        busy_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = path
        self.options = options
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.loop = loop
        self.epoch = ""
        self.queue: queue.SimpleQueue[Append | list[Append] | _Call | None] = queue.SimpleQueue()
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.last_commit = float("-inf")
        self.problem: str | None = None  # the last error logged, to log each once
        self.append_failure: tuple[str, float] | None = None  # (reason, monotonic time)
        self.thread = threading.Thread(
            target=self._run, name="lockerbus-sqlite-writer", daemon=True
        )

    # -- on the loop -------------------------------------------------------------

    def submit(self, job: Append | _Call | None) -> None:
        """Queue a job; None stops the thread once the jobs before it are done."""
        self.queue.put(job)

    def submit_group(self, jobs: list[Append]) -> None:
        """Queue appends that go into one transaction together (a batch publish)."""
        self.queue.put(jobs)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer's connection, in queue order with the appends."""
        future: asyncio.Future[T] = self.loop.create_future()
        self.submit(_Call(fn, future))
        return await future

    async def stop(self) -> None:
        """Finish what is queued, then stop the thread and close the file."""
        self.submit(None)
        await asyncio.to_thread(self.thread.join)

    # -- on the writer thread ----------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = _flat([self.queue.get()])
            while len(jobs) < _MAX_BATCH:
                try:
                    jobs += _flat([self.queue.get_nowait()])
                except queue.Empty:
                    break
            outcomes: list[_Outcome] = []
            appends: list[Append] = []
            stop = False
            for job in jobs:
                if isinstance(job, Append):
                    appends.append(job)
                    continue
                if appends:
                    outcomes += self._append_batch(appends)
                    appends = []
                if job is None:
                    stop = True
                    break
                outcomes.append(self._call(job))
            if appends:
                outcomes += self._append_batch(appends)
            if outcomes:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    self.loop.call_soon_threadsafe(_settle, outcomes)
            if stop:
                break
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def _call(self, job: _Call) -> _Outcome:
        try:
            if self.conn is None:
                self.conn = connect(self.path, self.busy_timeout)
            return job.future, job.fn(self.conn), None
        except Exception as exc:
            if self.conn is not None:
                rollback(self.conn)
            return job.future, None, self._failed(exc)

    def _failed(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, (sqlite3.Error, OSError, StoreUnavailableError)):
            store_logger.exception("sqlite store: unexpected error", exc_info=exc)
            return StoreUnavailableError(f"sqlite store {self.path}: {exc!r}")
        error = unavailable(exc, self.path)
        if error.message != self.problem:
            store_logger.error("%s", error.message)
        self.problem = error.message
        return error

    def check_file(self) -> None:
        """SQLite keeps writing to a file that was unlinked; refuse to, visibly."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StoreUnavailableError(
                f"sqlite store {self.path}: database file was removed"
            ) from None
        if (st.st_dev, st.st_ino) != self.identity:
            raise StoreUnavailableError(f"sqlite store {self.path}: database file was replaced")

    def open(self, conn: sqlite3.Connection) -> str:
        """Create or open the file; returns its epoch."""
        epoch = create_or_open(conn, self.path)
        create_state(conn)
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)
        self.epoch = epoch
        return epoch

    def _append_batch(self, jobs: list[Append]) -> list[_Outcome]:
        """Number and write ``jobs`` in one transaction: all of them, or none."""
        conn = self.conn
        results: list[_Outcome | None] = [None] * len(jobs)
        try:
            if conn is None:
                raise StoreUnavailableError(f"sqlite store {self.path} is not open")
            self.check_file()
            with transaction(conn):
                for namespace in _number(conn, jobs, results, self):
                    evict_capacity(conn, namespace, self.options.retention(namespace).max_events)
            # A commit into a file unlinked meanwhile reached nobody: report it as failed.
            self.check_file()
        except Exception as exc:
            error = self._failed(exc)
            self.append_failure = (str(error), time.monotonic())
            return [
                r if r is not None and r[2] is not None else (job.future, None, error)
                for job, r in zip(jobs, results, strict=True)
            ]
        self.last_commit = time.monotonic()
        self.problem = self.append_failure = None
        return [r for r in results if r is not None]

    def expire(self, conn: sqlite3.Connection) -> int:
        """Delete expired rows and any over capacity; returns how many."""
        self.check_file()
        with transaction(conn):
            expired = Counter(
                namespace
                for (namespace,) in conn.execute(
                    "DELETE FROM events WHERE expires <= ? RETURNING namespace", (self.clock(),)
                ).fetchall()
            )
            for namespace, count in expired.items():
                held(conn, namespace, -count)
            bump(conn, "ttl", expired.total())
            evicted = sum(
                evict_capacity(conn, namespace, self.options.retention(namespace).max_events)
                for namespace in held_namespaces(conn)
            )
            conn.execute(PRUNE_IDS)  # ids whose event is gone, expired or evicted
            return expired.total() + evicted

    def remove_corrupt(self, conn: sqlite3.Connection, suspects: list[tuple[str, int]]) -> int:
        """Delete the suspects that still fail their checks; returns how many."""
        self.check_file()
        gone: list[tuple[str, int, str]] = []
        with transaction(conn):
            for namespace, seq in suspects:
                row = conn.execute(
                    "SELECT crc, body FROM events WHERE namespace = ? AND seq = ?", (namespace, seq)
                ).fetchone()
                why = None if row is None else fault(row[0], row[1], seq, namespace)
                if why is None:
                    continue
                conn.execute("DELETE FROM events WHERE namespace = ? AND seq = ?", (namespace, seq))
                held(conn, namespace, -1)
                gone.append((namespace, seq, why))
            bump(conn, "corrupt", len(gone))
        for namespace, seq, why in gone:
            log_corrupt(namespace, seq, why)
        return len(gone)

    def probe(self, conn: sqlite3.Connection) -> None:
        """Prove the write path: the file is ours and a transaction commits."""
        self.check_file()
        now = time.monotonic()
        if self.append_failure is not None:
            reason, at = self.append_failure
            if now - at < _FAILURE_MEMORY_SECONDS:
                raise StoreUnavailableError(f"{reason} (an append failed {now - at:.1f}s ago)")
        if now - self.last_commit < _PROBE_FRESH_SECONDS:
            return
        with transaction(conn):
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('probed_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(self.clock()),),
            )
        self.last_commit = time.monotonic()
        self.problem = None


def _number(
    conn: sqlite3.Connection,
    jobs: list[Append],
    results: list[_Outcome | None],
    writer: SqliteWriter,
) -> list[str]:
    """Inside the transaction: give each job its seq and insert it; fills ``results``
    (an event JSON cannot carry fails alone, without taking a seq); returns the
    namespaces written."""
    now = writer.clock()
    last: dict[str, int] = {}
    state_rows: list[Row] = []  # locker state rows of this batch, written together
    rows = []
    ids: dict[str, Event] = {}  # ids written earlier in this transaction
    id_rows = []
    for i, job in enumerate(jobs):
        event_id = str(job.event.get("id", ""))
        # a repeated id (§12) is decided before the state
        earlier = ids.get(event_id) or _held(conn, event_id, now)
        if earlier is not None:
            results[i] = (job.future, None, DuplicateEvent(earlier))
            continue
        namespace = job.event["namespace"]
        seq = last.get(namespace)
        if seq is None:
            row = conn.execute(LAST_SEQ, (namespace,)).fetchone()
            seq = row[0] if row else 0
        stored = {**job.event, "seq": seq + 1, "epoch": writer.epoch}
        try:
            blob = encode(stored)
        except TypeError as exc:
            results[i] = (job.future, None, exc)
            last[namespace] = seq
            continue
        # the state (contract §11), in this same transaction; a refusal takes no seq
        change = change_of(job.event)
        refused = None
        if change is not None and change.kind == "locker":
            state_rows.append(locker_row(change, seq + 1))
        elif change is not None:
            refused = check_and_apply(conn, change, seq + 1)
        if refused is not None:
            results[i] = (job.future, None, refused)
            last[namespace] = seq
            continue
        last[namespace] = seq + 1
        default_ttl = writer.options.retention(namespace).ttl_seconds
        ttl = default_ttl if job.ttl is None else min(job.ttl, default_ttl)
        rows.append((namespace, seq + 1, job.at, now + ttl, checksum(blob), blob))
        results[i] = (job.future, stored, None)
        if event_id:
            ids[event_id] = stored
            id_rows.append((event_id, namespace, seq + 1))
    conn.executemany(INSERT_EVENT, rows)
    conn.executemany(INSERT_ID, id_rows)
    conn.executemany(UPSERT_LAST, last.items())
    upsert(conn, state_rows)
    for namespace, count in Counter(row[0] for row in rows).items():
        held(conn, namespace, count)
    return list(last)


def _held(conn: sqlite3.Connection, event_id: str, now: float) -> Event | None:
    """The stored event under ``event_id``, if one is held and sound (contract §12)."""
    if not event_id:
        return None
    row = conn.execute(HELD_ID, (event_id, now)).fetchone()
    if row is None:
        return None
    namespace, seq, crc, blob = row
    if checksum(blob) != crc:
        return None  # corrupt: a read removes it; the id is free meanwhile
    return decode_one(blob, seq, namespace)
