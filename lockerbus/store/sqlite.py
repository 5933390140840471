"""The durable store: SQLite in WAL mode, one writer thread, a small reader pool.

Why a dedicated writer thread rather than aiosqlite: appends are group-committed.
The writer takes every append queued while the previous commit was syncing and
writes them in one transaction, so concurrent appenders share one fsync, and
still no append returns before the transaction holding it is durable
(``synchronous=FULL``).  One thread assigning seqs and settling futures in
queue order is also what makes appends resolve in seq order.

Seq counters live in the ``namespaces`` table and are read and advanced inside
the same transaction as the rows they number, so a crash, a failed commit or a
second process writing the same file can never reuse or skip a seq.  The epoch
is written once, when the file is created.

Failures (disk full, locked, the file removed or replaced) roll the whole
transaction back and raise :class:`StoreUnavailableError`; ``check()`` probes
the same path an append takes, so readiness reflects whether appends work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from ..recovery import decide
from . import StoreOptions
from .base import EVICTION_REASONS, EventStore, NamespaceStats, ReplayResult, StoreStats
from .codec import (
    check_append,
    check_limit,
    checksum,
    decode_many,
    decode_one,
    encode,
    event_time,
    log_corrupt,
    new_epoch,
    since_seconds,
)

T = TypeVar("T")

SCHEMA_VERSION: Final = "1"
_MAX_BATCH: Final = 512
_READERS: Final = 2
# A read that meets corrupt rows has them removed and reads again; more rounds
# than this mean rows that fail for the reader but pass for the writer.
_REPAIR_ATTEMPTS: Final = 5
# A successful commit this recent already proves the write path for check().
_PROBE_FRESH_SECONDS: Final = 1.0
# check() keeps reporting a failed append this long unless an append succeeds since:
# a probe's small write can pass where real appends fail (a disk nearly full).
_FAILURE_MEMORY_SECONDS: Final = 5.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (
    namespace TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,  -- append order across namespaces: capacity evicts lowest first
    namespace TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,        -- the event's timestamp, POSIX seconds, for since
    expires REAL NOT NULL,   -- store clock, POSIX seconds
    crc INTEGER NOT NULL,    -- CRC-32 of body
    body BLOB NOT NULL,      -- the stored event as compact JSON
    UNIQUE (namespace, seq)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (namespace, ts);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('events', 0), ('ttl', 0), ('capacity', 0), ('corrupt', 0);
"""

_INSERT_EVENT: Final = (
    "INSERT INTO events (namespace, seq, ts, expires, crc, body) VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_LAST: Final = (
    "INSERT INTO namespaces (namespace, last_seq) VALUES (?, ?) "
    "ON CONFLICT (namespace) DO UPDATE SET last_seq = excluded.last_seq"
)
_LAST_SEQ: Final = "SELECT last_seq FROM namespaces WHERE namespace = ?"


@dataclass(slots=True)
class _Append:
    event: Event
    at: float
    ttl: float | None
    future: asyncio.Future[Event]


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


@dataclass(frozen=True, slots=True)
class _Corrupt:
    """A read met rows that fail their checks: (namespace, seq) of each."""

    suspects: list[tuple[str, int]]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: resolve futures in queue order (hence seq order)."""
    for future, result, error in outcomes:
        if future.done():  # the awaiting task was cancelled; the work stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _unavailable(exc: BaseException, path: str) -> StoreUnavailableError:
    if isinstance(exc, StoreUnavailableError):
        return exc
    return StoreUnavailableError(f"sqlite store {path}: {exc}")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _bump(conn: sqlite3.Connection, name: str, delta: int) -> None:
    if delta:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))


class _Writer:
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
        self.queue: queue.SimpleQueue[_Append | _Call | None] = queue.SimpleQueue()
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.last_commit = float("-inf")
        self.problem: str | None = None  # the last error logged, to log each once
        self.append_failure: tuple[str, float] | None = None  # (reason, monotonic time)
        self.thread = threading.Thread(
            target=self._run, name="lockerbus-sqlite-writer", daemon=True
        )

    # -- on the writer thread ------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = [self.queue.get()]
            while len(jobs) < _MAX_BATCH:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            outcomes: list[_Outcome] = []
            appends: list[_Append] = []
            stop = False
            for job in jobs:
                if isinstance(job, _Append):
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
            self._send(outcomes)
            if stop:
                break
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def _send(self, outcomes: list[_Outcome]) -> None:
        if outcomes:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(_settle, outcomes)

    def _call(self, job: _Call) -> _Outcome:
        try:
            return job.future, job.fn(self._connection()), None
        except Exception as exc:
            if self.conn is not None:
                _rollback(self.conn)
            return job.future, None, self._failed(exc)

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        return self.conn

    def _failed(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, (sqlite3.Error, OSError, StoreUnavailableError)):
            store_logger.exception("sqlite store: unexpected error", exc_info=exc)
            return StoreUnavailableError(f"sqlite store {self.path}: {exc!r}")
        error = _unavailable(exc, self.path)
        if error.message != self.problem:
            store_logger.error("%s", error.message)
        self.problem = error.message
        return error

    def _check_file(self) -> None:
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
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailableError(f"sqlite store {self.path}: WAL mode refused ({mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements():
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
                )
            elif row[0] != SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"sqlite store {self.path}: schema {row[0]} is not {SCHEMA_VERSION}"
                )
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            epoch = row[0] if row else new_epoch()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)
        self.epoch = epoch
        return epoch

    def _append_batch(self, jobs: list[_Append]) -> list[_Outcome]:
        """Number and write ``jobs`` in one transaction: all of them, or none."""
        conn = self.conn
        results: list[_Outcome | None] = [None] * len(jobs)
        try:
            if conn is None:
                raise StoreUnavailableError(f"sqlite store {self.path} is not open")
            self._check_file()
            now = self.clock()
            default_ttl = self.options.ttl_seconds
            conn.execute("BEGIN IMMEDIATE")
            try:
                last: dict[str, int] = {}
                rows = []
                for i, job in enumerate(jobs):
                    namespace = job.event["namespace"]
                    seq = last.get(namespace)
                    if seq is None:
                        row = conn.execute(_LAST_SEQ, (namespace,)).fetchone()
                        seq = row[0] if row else 0
                    stored = {**job.event, "seq": seq + 1, "epoch": self.epoch}
                    try:
                        blob = encode(stored)
                    except TypeError as exc:
                        results[i] = (job.future, None, exc)
                        last[namespace] = seq
                        continue
                    last[namespace] = seq + 1
                    ttl = default_ttl if job.ttl is None else min(job.ttl, default_ttl)
                    rows.append((namespace, seq + 1, job.at, now + ttl, checksum(blob), blob))
                    results[i] = (job.future, stored, None)
                conn.executemany(_INSERT_EVENT, rows)
                conn.executemany(_UPSERT_LAST, last.items())
                _bump(conn, "events", len(rows))
                self._evict_capacity(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            # A commit into a file unlinked meanwhile reached nobody: report it as failed.
            self._check_file()
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

    def _evict_capacity(self, conn: sqlite3.Connection) -> int:
        total = conn.execute("SELECT value FROM counters WHERE name = 'events'").fetchone()[0]
        excess = total - self.options.max_events
        if excess <= 0:
            return 0
        removed = conn.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
            (excess,),
        ).rowcount
        _bump(conn, "events", -removed)
        _bump(conn, "capacity", removed)
        return int(removed)

    def expire(self, conn: sqlite3.Connection) -> int:
        """Delete expired rows and any over capacity; returns how many."""
        self._check_file()
        conn.execute("BEGIN IMMEDIATE")
        try:
            expired = conn.execute(
                "DELETE FROM events WHERE expires <= ?", (self.clock(),)
            ).rowcount
            _bump(conn, "events", -expired)
            _bump(conn, "ttl", expired)
            removed = int(expired) + self._evict_capacity(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return removed

    def remove_corrupt(self, conn: sqlite3.Connection, suspects: list[tuple[str, int]]) -> int:
        """Delete the suspects that still fail their checks; returns how many."""
        self._check_file()
        conn.execute("BEGIN IMMEDIATE")
        try:
            gone: list[tuple[str, int, str]] = []
            for namespace, seq in suspects:
                row = conn.execute(
                    "SELECT crc, body FROM events WHERE namespace = ? AND seq = ?", (namespace, seq)
                ).fetchone()
                if row is None:
                    continue
                why = _fault(row[0], row[1], seq, namespace)
                if why is None:
                    continue
                conn.execute("DELETE FROM events WHERE namespace = ? AND seq = ?", (namespace, seq))
                gone.append((namespace, seq, why))
            _bump(conn, "events", -len(gone))
            _bump(conn, "corrupt", len(gone))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        for namespace, seq, why in gone:
            log_corrupt(namespace, seq, why)
        return len(gone)

    def probe(self, conn: sqlite3.Connection) -> None:
        """Prove the write path: the file is ours and a transaction commits."""
        self._check_file()
        now = time.monotonic()
        if self.append_failure is not None:
            reason, at = self.append_failure
            if now - at < _FAILURE_MEMORY_SECONDS:
                raise StoreUnavailableError(f"{reason} (an append failed {now - at:.1f}s ago)")
        if now - self.last_commit < _PROBE_FRESH_SECONDS:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('probed_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(self.clock()),),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.last_commit = time.monotonic()
        self.problem = None

    # -- on the loop ---------------------------------------------------------

    def submit(self, job: _Append | _Call | None) -> None:
        self.queue.put(job)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self.submit(_Call(fn, future))
        return await future


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def _fault(crc: int, body: bytes, seq: int, namespace: str) -> str | None:
    """Why a stored row is not the event it claims to be, or None when it is."""
    if not isinstance(body, bytes) or checksum(body) != crc:
        return "checksum mismatch"
    if decode_one(body, seq, namespace) is None:
        return "does not deserialize"
    return None


class _Readers:
    """A small thread pool, one read-only connection per thread (WAL lets them run
    beside the writer)."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.pool = ThreadPoolExecutor(
            max_workers=_READERS, thread_name_prefix="lockerbus-sqlite-read"
        )
        self.local = threading.local()
        self.conns: list[sqlite3.Connection] = []
        self.lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = ON")
            self.local.conn = conn
            with self.lock:
                self.conns.append(conn)
        return conn

    def _snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot: last_seq and rows agree
        try:
            return fn(conn)
        finally:
            _rollback(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, self._snapshot, fn)
        except (sqlite3.Error, OSError) as exc:
            raise _unavailable(exc, self.path) from exc

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self.conns.clear()


class SqliteEventStore(EventStore):
    """Events in a SQLite file; the epoch and seqs survive restarts and crashes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: StoreOptions | None = None,
        *,
        clock: Callable[[], float] | None = None,
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        self._path = os.fspath(path)
        self._options = options = options or StoreOptions()
        if options.max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._clock = clock or time.time
        self._busy_timeout = busy_timeout_seconds
        self._writer: _Writer | None = None
        self._readers: _Readers | None = None
        self._state = "new"
        self._cleaner: asyncio.Task[None] | None = None
        self.epoch = ""

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Open (or create) the file, learn its epoch, start the periodic cleanup."""
        if self._state == "closed":
            raise StoreUnavailableError(f"sqlite store {self._path} is closed")
        if self._state == "open":
            return
        writer = _Writer(
            self._path, self._options, self._clock, self._busy_timeout, asyncio.get_running_loop()
        )
        writer.thread.start()
        try:
            self.epoch = await writer.call(writer.open)
        except BaseException:
            writer.submit(None)
            await asyncio.to_thread(writer.thread.join)
            raise
        self._writer = writer
        self._readers = _Readers(self._path, self._busy_timeout)
        self._state = "open"
        self._cleaner = asyncio.create_task(self._cleanup_forever(), name="lockerbus-cleanup")

    async def close(self) -> None:
        """Finish queued appends, stop the threads, close the file. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        cleaner, self._cleaner = self._cleaner, None
        if cleaner is not None:
            cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleaner
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.submit(None)
            await asyncio.to_thread(writer.thread.join)
        readers, self._readers = self._readers, None
        if readers is not None:
            await asyncio.to_thread(readers.close)

    async def check(self) -> None:
        """Return when an append would work now; raise StoreUnavailableError saying why not."""
        writer = self._open_writer()
        await writer.call(writer.probe)

    # -- writing ------------------------------------------------------------

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store ``event`` durably with the next seq of its namespace (see base.EventStore).

        A per-event TTL can shorten the store's TTL, never extend it.  ``event``
        must not be mutated until this returns: the writer thread reads it.
        """
        check_append(event, ttl_seconds)
        at = event_time(event)
        writer = self._open_writer()
        future: asyncio.Future[Event] = writer.loop.create_future()
        writer.submit(_Append(event, at, ttl_seconds, future))
        return await future

    # -- reading ------------------------------------------------------------

    async def replay(
        self,
        namespace: str,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """Events for a reconnecting client (see base.EventStore.replay)."""
        check_limit(limit)
        since_at = since_seconds(since) if since is not None and after_seq is None else None
        store_epoch = self.epoch

        def read(conn: sqlite3.Connection) -> ReplayResult | _Corrupt:
            now = self._clock()
            last = _last_seq(conn, namespace)

            def count_held(lo: int, hi: int) -> int:
                row = conn.execute(
                    "SELECT count(*) FROM events WHERE namespace = ? AND seq > ? "
                    "AND seq <= ? AND expires > ?",
                    (namespace, lo, hi, now),
                ).fetchone()
                return int(row[0])

            plan, recovered = decide(
                after_seq=after_seq,
                requested_epoch=epoch,
                epoch=store_epoch,
                last_seq=last,
                limit=limit,
                count_held=count_held,
            )
            sql = (
                "SELECT seq, crc, body FROM events WHERE namespace = ? AND seq > ? AND seq <= ? "
                "AND expires > ?"
            )
            args: list[Any] = [namespace, plan.after_seq, last, now]
            if since_at is not None:
                sql += " AND ts >= ?"
                args.append(since_at)
            rows = conn.execute(
                sql + " ORDER BY seq DESC LIMIT ?", (*args, plan.limit + 1)
            ).fetchall()
            has_more = len(rows) > plan.limit
            rows = rows[: plan.limit]
            rows.reverse()
            events = _decode_rows(rows, namespace)
            if isinstance(events, _Corrupt):
                return events
            return ReplayResult(events, last, store_epoch, recovered, has_more)

        return await self._read_repairing(read)

    async def page(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """The oldest ``limit`` events after ``after_seq`` (see base.EventStore.page)."""
        check_limit(limit)
        since_at = since_seconds(since) if since is not None else None
        store_epoch = self.epoch

        def read(conn: sqlite3.Connection) -> ReplayResult | _Corrupt:
            now = self._clock()
            last = _last_seq(conn, namespace)
            sql = (
                "SELECT seq, crc, body FROM events WHERE namespace = ? AND seq > ? AND expires > ?"
            )
            args: list[Any] = [namespace, after_seq, now]
            if since_at is not None:
                sql += " AND ts >= ?"
                args.append(since_at)
            rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit + 1)).fetchall()
            has_more = len(rows) > limit
            rows = rows[:limit]
            events = _decode_rows(rows, namespace)
            if isinstance(events, _Corrupt):
                return events
            if has_more:
                last = rows[-1][0] if rows else max(after_seq, 0)
            return ReplayResult(events, last, store_epoch, None, has_more)

        return await self._read_repairing(read)

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        return await self._open_readers().run(lambda conn: _last_seq(conn, namespace))

    async def stats(self) -> StoreStats:
        """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
        now = self._clock()

        def read(conn: sqlite3.Connection) -> StoreStats:
            namespaces = {
                name: NamespaceStats(0, None, None, last)
                for name, last in conn.execute("SELECT namespace, last_seq FROM namespaces")
            }
            for name, count, oldest, newest in conn.execute(
                "SELECT namespace, count(*), min(seq), max(seq) FROM events "
                "WHERE expires > ? GROUP BY namespace",
                (now,),
            ):
                last = namespaces[name].last_seq if name in namespaces else 0
                namespaces[name] = NamespaceStats(count, oldest, newest, last)
            evictions = dict.fromkeys(EVICTION_REASONS, 0)
            for name, value in conn.execute("SELECT name, value FROM counters"):
                if name in evictions:
                    evictions[name] = int(value)
            return StoreStats(
                backend="sqlite",
                epoch=self.epoch,
                events=sum(ns.count for ns in namespaces.values()),
                max_events=self._options.max_events,
                namespaces=namespaces,
                evictions=evictions,
            )

        return await self._open_readers().run(read)

    async def cleanup(self) -> int:
        """Delete expired and over-capacity rows, then verify every checksum.

        Returns how many rows were removed.  The scan runs on a reader thread and
        only the deletions queue behind appends.
        """
        writer = self._open_writer()
        removed = await writer.call(writer.expire)

        def scan(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return [
                (namespace, seq)
                for namespace, seq, crc, body in conn.execute(
                    "SELECT namespace, seq, crc, body FROM events"
                )
                if _fault(crc, body, seq, namespace) is not None
            ]

        suspects = await self._open_readers().run(scan)
        if suspects:
            removed += await writer.call(
                functools.partial(writer.remove_corrupt, suspects=suspects)
            )
        return removed

    # -- internals ----------------------------------------------------------

    def _open_writer(self) -> _Writer:
        if self._state != "open" or self._writer is None:
            state = "not started" if self._state == "new" else "closed"
            raise StoreUnavailableError(f"sqlite store {self._path} is {state}")
        return self._writer

    def _open_readers(self) -> _Readers:
        self._open_writer()
        assert self._readers is not None
        return self._readers

    async def _read_repairing(
        self, read: Callable[[sqlite3.Connection], ReplayResult | _Corrupt]
    ) -> ReplayResult:
        """Run ``read``; when it meets corrupt rows, have them removed and read again,
        so the answer reflects the hole they leave."""
        writer = self._open_writer()
        readers = self._open_readers()
        for _attempt in range(_REPAIR_ATTEMPTS):
            outcome = await readers.run(self._checked(read, writer))
            if isinstance(outcome, ReplayResult):
                return outcome
            # The writer checks each suspect again before deleting: one evicted or
            # expired meanwhile is simply gone, and the next read will not meet it.
            suspects = outcome.suspects
            await writer.call(functools.partial(writer.remove_corrupt, suspects=suspects))
        raise StoreUnavailableError(
            f"sqlite store {self._path}: reads keep failing their checks (last: {suspects})"
        )

    @staticmethod
    def _checked(
        read: Callable[[sqlite3.Connection], T], writer: _Writer
    ) -> Callable[[sqlite3.Connection], T]:
        def run(conn: sqlite3.Connection) -> T:
            writer._check_file()
            return read(conn)

        return run

    async def _cleanup_forever(self) -> None:
        interval = self._options.cleanup_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleanup()
            except StoreUnavailableError as exc:
                if self._state != "open":
                    return
                store_logger.warning("sqlite store cleanup failed: %s", exc.message)
            except Exception:
                store_logger.exception("sqlite store cleanup failed")


def _last_seq(conn: sqlite3.Connection, namespace: str) -> int:
    row = conn.execute(_LAST_SEQ, (namespace,)).fetchone()
    return int(row[0]) if row else 0


def _decode_rows(rows: list[tuple[int, int, bytes]], namespace: str) -> list[Event] | _Corrupt:
    """The rows as events, or which of them fail their checks."""
    crc32 = zlib.crc32  # the same function as codec.checksum, without a call layer
    bad = [(namespace, seq) for seq, crc, body in rows if crc32(body) != crc]
    if bad:
        return _Corrupt(bad)
    events = decode_many([r[2] for r in rows], [r[0] for r in rows], namespace)
    if events is not None:
        return events
    one_by_one = [(seq, decode_one(body, seq, namespace)) for seq, _crc, body in rows]
    bad = [(namespace, seq) for seq, event in one_by_one if event is None]
    if bad:
        return _Corrupt(bad)
    return [event for _seq, event in one_by_one if event is not None]
