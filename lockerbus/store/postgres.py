"""The PostgreSQL store: ``postgresql://user:pass@host:port/db``, durable and shared by
any number of instances (contract §9, with Redis as their message queue).

The pieces: :mod:`.postgres_schema` (versioned migrations, applied on start),
:mod:`.postgres_writer` (the task group-committing this instance's appends,
numbering them under the namespace's counter-row lock), :mod:`.postgres_reads`
(snapshot reads), :mod:`.postgres_state` (the §11 state in the append's
transaction).  This module ties them to the store contract.

asyncpg's pool reconnects on its own: while PostgreSQL is down or restarting
every operation raises :class:`StoreUnavailableError` (an append is never
acknowledged unless its transaction committed), ``check()`` fails, so
``/readyz`` answers 503, and the first operation after PostgreSQL is back
works again, with no restart of lockerbus.  Only the ``asyncpg`` driver (the
``lockerbus[postgres]`` extra) is imported, and only when this store is used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

from ..errors import StoreUnavailableError
from ..events import Event
from .backend import BaseEventStore
from .base import (
    Appended,
    ReplayResult,
    StateSnapshot,
    StoredReplay,
    StoreOptions,
    StoreStats,
)
from .codec import Append, append_together, as_stored_replay, check_append, event_time
from .postgres_cleanup import expire, remove_corrupt
from .postgres_reads import (
    Read,
    Suspect,
    last_seq,
    page_read,
    read_stats,
    replay_read,
    scan_corrupt,
)
from .postgres_schema import SCHEMA_VERSION, migrate, unavailable, where
from .postgres_state import read_state, replace
from .postgres_writer import PostgresWriter
from .state import StateKind, StateTable

if TYPE_CHECKING:
    import asyncpg

    from .postgres_schema import Conn

__all__ = ["SCHEMA_VERSION", "PostgresEventStore"]

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS: Final = 2.0
COMMAND_TIMEOUT_SECONDS: Final = 5.0
MAX_CONNECTIONS: Final = 8
# A commit this recent already proves the write path for check().
_PROBE_FRESH_SECONDS: Final = 1.0
# check() keeps reporting a failed append this long unless an append succeeds since.
_FAILURE_MEMORY_SECONDS: Final = 5.0


def _driver_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresEventStore(BaseEventStore[Suspect]):
    """Events in PostgreSQL; epoch, seqs, ids and state survive restarts of either side."""

    def __init__(
        self,
        url: str,
        options: StoreOptions | None = None,
        *,
        clock: Callable[[], float] | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(f"postgresql store {where(url)}", options, clock)
        self._url = url
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._writer: PostgresWriter | None = None

    # -- lifecycle (the rest is BaseEventStore's) -------------------------------

    async def _open(self) -> None:
        """Connect, migrate the schema, learn the epoch, start the writer."""
        try:
            import asyncpg
        except ImportError as exc:
            raise StoreUnavailableError(
                f"{self._name}: the asyncpg driver is missing: pip install 'lockerbus[postgres]'"
            ) from exc
        pools: list[asyncpg.Pool] = []
        try:
            # The writer has a connection of its own, so a storm of replays
            # queueing for the read pool never delays an append.
            for size in (self._max_connections, 1):
                pools.append(
                    await asyncpg.create_pool(
                        self._url,
                        # no floor: asyncpg's task keeping one logs a traceback per
                        # retry while PostgreSQL is down; connections come as needed
                        min_size=0,
                        max_size=size,
                        timeout=CONNECT_TIMEOUT_SECONDS,
                        command_timeout=COMMAND_TIMEOUT_SECONDS,
                    )
                )
            async with pools[0].acquire(timeout=COMMAND_TIMEOUT_SECONDS) as conn:
                self.epoch = await migrate(conn, self._name)
        except BaseException as exc:
            for pool in pools:
                pool.terminate()
            if isinstance(exc, (*_driver_errors(), ValueError)):
                raise unavailable(exc, self._name) from exc
            raise
        self._pool, write_pool = pools
        self._writer = PostgresWriter(
            write_pool, self._name, self._options, self._clock, self.epoch
        )

    async def _release(self) -> None:
        """Finish queued appends, then close the pools."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        pools = [self._pool, writer.pool if writer is not None else None]
        self._pool = None
        for pool in pools:
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT_SECONDS)
            except _driver_errors():  # TimeoutError among them
                pool.terminate()

    async def check(self) -> None:
        """Return when an append would work now; raise StoreUnavailableError saying why not."""
        writer = self._open_writer()
        now = time.monotonic()
        if writer.append_failure is not None:
            reason, at = writer.append_failure
            if now - at < _FAILURE_MEMORY_SECONDS:
                raise StoreUnavailableError(f"{reason} (an append failed {now - at:.1f}s ago)")
        busy = writer.busy_since
        if busy is not None and now - busy > _PROBE_FRESH_SECONDS:
            raise StoreUnavailableError(
                f"{self._name}: appends have waited {now - busy:.1f}s for PostgreSQL"
            )
        if now - writer.last_commit < _PROBE_FRESH_SECONDS:
            return

        async def probe(conn: Conn) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO lockerbus_meta (key, value) VALUES ('probed_at', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    repr(self._clock()),
                )

        await self._run(probe)

    # -- writing ------------------------------------------------------------

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store ``event`` with the next seq of its namespace (see base.EventStore)."""
        check_append(event, ttl_seconds)
        at = event_time(event)
        writer = self._open_writer()
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        writer.submit([Append(event, at, ttl_seconds, future)])
        return await future

    async def append_many(
        self, events: list[Event], *, ttl_seconds: float | None = None
    ) -> list[Appended]:
        """Append ``events`` in one transaction (see base.EventStore.append_many)."""
        writer = self._open_writer()
        return await append_together(events, ttl_seconds, asyncio.get_running_loop(), writer.submit)

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
        )
        result = await self._read_checked(read)
        return as_stored_replay(result) if stored else result

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
        )
        result = await self._read_checked(read)
        return as_stored_replay(result) if stored else result

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        return await self._run(lambda conn: last_seq(conn, namespace))

    async def read_state(self, kind: StateKind) -> StateSnapshot:
        """The lockers or open help requests, with the position they reflect."""
        epoch, name = self.epoch, self._name
        return await self._snapshot(lambda conn: read_state(conn, kind, epoch, name))

    async def _replace_state(self, table: StateTable, positions: dict[str, int]) -> bool:
        return await self._run(lambda conn: replace(conn, table, positions))

    async def stats(self) -> StoreStats:
        """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
        now, epoch, cap = self._clock(), self.epoch, self._options.max_events
        return await self._snapshot(
            lambda conn: read_stats(conn, now=now, epoch=epoch, max_events=cap)
        )

    async def cleanup(self) -> int:
        """Delete expired and over-capacity rows, then verify every checksum; returns how
        many rows were removed (see :mod:`.postgres_cleanup`)."""
        now, options = self._clock(), self._options
        removed = await self._run(lambda conn: expire(conn, now, options))
        suspects = await self._snapshot(scan_corrupt)
        if suspects:
            removed += await self._repair_count(suspects)
        return removed

    # -- internals ----------------------------------------------------------

    def _open_writer(self) -> PostgresWriter:
        self._require_open()
        if self._writer is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        return self._writer

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; driver failures become StoreUnavailableError."""
        self._open_writer()
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        import asyncpg

        try:
            conn = await pool.acquire(timeout=COMMAND_TIMEOUT_SECONDS)
            try:
                return await fn(conn)
            except BaseException as exc:
                if not isinstance(exc, asyncpg.PostgresError):
                    conn.terminate()  # timed out or broken: releasing would reset it first
                raise
            finally:
                await pool.release(conn)
        except _driver_errors() as exc:
            raise unavailable(exc, self._name) from exc

    async def _snapshot(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` inside one read-only REPEATABLE READ snapshot."""

        async def snapshot(conn: Conn) -> T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(conn)

        return await self._run(snapshot)

    async def _read_checked(self, read: Read) -> ReplayResult:
        return await self._read_repairing(lambda: self._snapshot(read))

    async def _repair(self, suspects: list[Suspect]) -> None:
        await self._repair_count(suspects)

    async def _repair_count(self, suspects: list[Suspect]) -> int:
        return await self._run(lambda conn: remove_corrupt(conn, suspects))
