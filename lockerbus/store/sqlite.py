"""The durable store: SQLite in WAL mode, one writer thread, a small reader pool.

The pieces: :mod:`.sqlite_schema` (the file and its SQL), :mod:`.sqlite_writer`
(the group-committing writer thread), :mod:`.sqlite_reads` (the reader pool and
its queries).  This module ties them to the store contract.

Failures (disk full, locked, the file removed or replaced) roll the whole
transaction back and raise :class:`StoreUnavailableError`; ``check()`` probes
the same path an append takes, so readiness reflects whether appends work.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable

from ..errors import StoreUnavailableError
from ..events import Event
from .backend import BaseEventStore, Damaged
from .base import Appended, ReplayResult, StateSnapshot, StoredReplay, StoreOptions, StoreStats
from .codec import Append, append_together, check_append, event_time
from .sqlite_reads import (
    Read,
    Readers,
    Suspect,
    page_read,
    read_stats,
    replay_read,
    scan_corrupt,
)
from .sqlite_schema import SCHEMA_VERSION, last_seq
from .sqlite_state import read_state
from .sqlite_state import replace as replace_state
from .sqlite_writer import SqliteWriter
from .state import StateKind, StateTable

__all__ = ["SCHEMA_VERSION", "SqliteEventStore"]


class SqliteEventStore(BaseEventStore[Suspect]):
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
        super().__init__(f"sqlite store {self._path}", options, clock)
        self._busy_timeout = busy_timeout_seconds
        self._writer: SqliteWriter | None = None
        self._readers: Readers | None = None

    # -- lifecycle (the rest is BaseEventStore's) -------------------------------

    async def _open(self) -> None:
        """Open (or create) the file and learn its epoch."""
        writer = SqliteWriter(
            self._path, self._options, self._clock, self._busy_timeout, asyncio.get_running_loop()
        )
        writer.thread.start()
        try:
            self.epoch = await writer.call(writer.open)
        except BaseException:
            await writer.stop()
            raise
        self._writer = writer
        self._readers = Readers(self._path, self._busy_timeout)

    async def _release(self) -> None:
        """Finish queued appends, stop the threads, close the file."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
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
        writer.submit(Append(event, at, ttl_seconds, future))
        return await future

    async def append_many(
        self, events: list[Event], *, ttl_seconds: float | None = None
    ) -> list[Appended]:
        """Append ``events`` in one transaction (see base.EventStore.append_many)."""
        writer = self._open_writer()
        return await append_together(events, ttl_seconds, writer.loop, writer.submit_group)

    # -- reading ------------------------------------------------------------

    async def _replay(
        self,
        namespace: str,
        after_seq: int | None,
        epoch: str | None,
        since_at: float | None,
        limit: int,
        *,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        read = replay_read(
            namespace,
            after_seq=after_seq,
            requested_epoch=epoch,
            epoch=self.epoch,
            since_at=since_at,
            limit=limit,
            clock=self._clock,
            stored=stored,
        )
        return await self._read_checked(read)

    async def _page(
        self,
        namespace: str,
        after_seq: int,
        since_at: float | None,
        limit: int,
        *,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        read = page_read(
            namespace,
            after_seq=after_seq,
            epoch=self.epoch,
            since_at=since_at,
            limit=limit,
            clock=self._clock,
            stored=stored,
        )
        return await self._read_checked(read)

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        return await self._open_readers().run(lambda conn: last_seq(conn, namespace))

    async def read_state(self, kind: StateKind) -> StateSnapshot:
        """The lockers or open help requests, with the position they reflect."""
        epoch = self.epoch
        return await self._open_readers().run(lambda conn: read_state(conn, kind, epoch))

    async def _replace_state(self, table: StateTable, positions: dict[str, int]) -> bool:
        writer = self._open_writer()
        return await writer.call(functools.partial(replace_state, table=table, positions=positions))

    async def stats(self) -> StoreStats:
        """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
        read = functools.partial(
            read_stats, now=self._clock(), epoch=self.epoch, max_events=self._options.max_events
        )
        return await self._open_readers().run(read)

    async def cleanup(self) -> int:
        """Delete expired and over-capacity rows, then verify every checksum.

        Returns how many rows were removed.  The scan runs on a reader thread and
        only the deletions queue behind appends.
        """
        writer = self._open_writer()
        removed = await writer.call(writer.expire)
        suspects = await self._open_readers().run(scan_corrupt)
        if suspects:
            removed += await writer.call(
                functools.partial(writer.remove_corrupt, suspects=suspects)
            )
        return removed

    # -- internals ----------------------------------------------------------

    def _open_writer(self) -> SqliteWriter:
        self._require_open()
        if self._writer is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        return self._writer

    def _open_readers(self) -> Readers:
        self._require_open()
        if self._readers is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        return self._readers

    async def _read_checked(self, read: Read) -> ReplayResult | StoredReplay:
        """Run ``read`` on a reader, on a file that is still ours, repairing as needed."""
        writer = self._open_writer()
        readers = self._open_readers()

        def checked(conn: sqlite3.Connection) -> ReplayResult | StoredReplay | Damaged[Suspect]:
            writer.check_file()
            return read(conn)

        return await self._read_repairing(lambda: readers.run(checked))

    async def _repair(self, suspects: list[Suspect]) -> None:
        # The writer checks each suspect again before deleting: one evicted or
        # expired meanwhile is simply gone, and the next read will not meet it.
        writer = self._open_writer()
        await writer.call(functools.partial(writer.remove_corrupt, suspects=suspects))
