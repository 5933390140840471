"""The SQLite store's reads: a small thread pool of read-only connections, and the
queries it runs (each inside one snapshot, so ``last_seq`` and the rows agree).

WAL lets the readers run beside the writer thread.  A read that meets rows
failing their checks answers :class:`~lockerbus.store.backend.Damaged`; the
store has the writer remove them and reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from ..events import Event
from ..recovery import decide
from .backend import Damaged
from .base import EVICTION_REASONS, NamespaceStats, ReplayResult, StoredReplay, StoreStats
from .codec import as_stored_replay, decode_many, decode_one
from .sqlite_schema import connect, fault, last_seq, rollback, unavailable

T = TypeVar("T")

_READERS: Final = 2

#: How a suspect row is named: (namespace, seq).
Suspect = tuple[str, int]
Read = Callable[[sqlite3.Connection], "ReplayResult | StoredReplay | Damaged[Suspect]"]


class Readers:
    """A small thread pool, one read-only connection per thread."""

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
            conn = connect(self.path, self.busy_timeout, create=False)
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
            rollback(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a reader thread inside one read snapshot."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, self._snapshot, fn)
        except (sqlite3.Error, OSError) as exc:
            raise unavailable(exc, self.path) from exc

    def close(self) -> None:
        """Wait for running reads, then close every connection (blocking: run off the loop)."""
        self.pool.shutdown(wait=True)
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self.conns.clear()


def replay_read(
    namespace: str,
    *,
    after_seq: int | None,
    requested_epoch: str | None,
    epoch: str,
    since_at: float | None,
    limit: int,
    clock: Callable[[], float],
    stored: bool = False,
) -> Read:
    """The read behind ``replay`` (see base.EventStore.replay); ``stored``: the rows'
    bytes as read, with the fields a decode (which also checks them) gave."""

    def read(conn: sqlite3.Connection) -> ReplayResult | StoredReplay | Damaged[Suspect]:
        now = clock()
        last = last_seq(conn, namespace)

        def count_held(lo: int, hi: int) -> int:
            row = conn.execute(
                "SELECT count(*) FROM events WHERE namespace = ? AND seq > ? "
                "AND seq <= ? AND expires > ?",
                (namespace, lo, hi, now),
            ).fetchone()
            return int(row[0])

        plan, recovered = decide(
            after_seq=after_seq,
            requested_epoch=requested_epoch,
            epoch=epoch,
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
        rows = conn.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, plan.limit + 1)).fetchall()
        has_more = len(rows) > plan.limit
        rows = rows[: plan.limit]
        rows.reverse()
        events = decode_rows(rows, namespace)
        if isinstance(events, Damaged):
            return events
        result = ReplayResult(events, last, epoch, recovered, has_more)
        return as_stored_replay(result, [r[2] for r in rows]) if stored else result

    return read


def page_read(
    namespace: str,
    *,
    after_seq: int,
    epoch: str,
    since_at: float | None,
    limit: int,
    clock: Callable[[], float],
    stored: bool = False,
) -> Read:
    """The read behind ``page`` (see base.EventStore.page); ``stored`` as for replay."""

    def read(conn: sqlite3.Connection) -> ReplayResult | StoredReplay | Damaged[Suspect]:
        now = clock()
        last = last_seq(conn, namespace)
        sql = "SELECT seq, crc, body FROM events WHERE namespace = ? AND seq > ? AND expires > ?"
        args: list[Any] = [namespace, after_seq, now]
        if since_at is not None:
            sql += " AND ts >= ?"
            args.append(since_at)
        rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit + 1)).fetchall()
        has_more = len(rows) > limit
        rows = rows[:limit]
        events = decode_rows(rows, namespace)
        if isinstance(events, Damaged):
            return events
        if has_more:
            last = rows[-1][0] if rows else max(after_seq, 0)
        result = ReplayResult(events, last, epoch, None, has_more)
        return as_stored_replay(result, [r[2] for r in rows]) if stored else result

    return read


def read_stats(conn: sqlite3.Connection, *, now: float, epoch: str, max_events: int) -> StoreStats:
    """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
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
        epoch=epoch,
        events=sum(ns.count for ns in namespaces.values()),
        max_events=max_events,
        namespaces=namespaces,
        evictions=evictions,
    )


def scan_corrupt(conn: sqlite3.Connection) -> list[Suspect]:
    """Every row, of every namespace, that fails its checks."""
    return [
        (namespace, seq)
        for namespace, seq, crc, body in conn.execute(
            "SELECT namespace, seq, crc, body FROM events"
        )
        if fault(crc, body, seq, namespace) is not None
    ]


def decode_rows(
    rows: list[tuple[int, int, bytes]], namespace: str
) -> list[Event] | Damaged[Suspect]:
    """The rows as events, or which of them fail their checks."""
    crc32 = zlib.crc32  # the same function as codec.checksum, without a call layer
    bad = [(namespace, seq) for seq, crc, body in rows if crc32(body) != crc]
    if bad:
        return Damaged(bad)
    events = decode_many([r[2] for r in rows], [r[0] for r in rows], namespace)
    if events is not None:
        return events
    one_by_one = [(seq, decode_one(body, seq, namespace)) for seq, _crc, body in rows]
    bad = [(namespace, seq) for seq, event in one_by_one if event is None]
    if bad:
        return Damaged(bad)
    return [event for _seq, event in one_by_one if event is not None]
