"""The PostgreSQL store's writer: one task group-commits the appends of this instance.

Appends queue up while the previous transaction commits; the writer takes them
all (up to :data:`MAX_BATCH`) into one transaction, so concurrent appenders
share one commit, and settles their futures in queue order, which is seq
order.  Inside the transaction (:func:`write_batch`):

1. lock the counter row of every namespace the batch writes, in name order
   (``FOR UPDATE``): appends from other instances to those namespaces wait, so
   seqs are never reused or skipped, and the state checks below see every
   earlier commit;
2. per item, in order: a held id (§12) is a duplicate, a help event the state
   refuses is a conflict (neither takes a seq), else it takes the next seq;
3. insert the events, advance the counters, evict over the namespace's cap,
   write the state.

An id written by another instance at the same moment into another namespace
trips the unique index; the transaction is then run again and finds it held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from .base import DuplicateEvent, StoreOptions
from .codec import Append, checksum, decode_one, encode
from .postgres_schema import unavailable
from .postgres_state import BatchState
from .state import change_of

if TYPE_CHECKING:
    import asyncpg

    from .postgres_schema import Conn

MAX_BATCH: Final = 512
#: seconds an append batch waits for a pooled connection before it fails
ACQUIRE_TIMEOUT_SECONDS: Final = 5.0
#: a batch that met a racing id or a deadlock runs again, at most this often
_ATTEMPTS: Final = 4

#: one statement: advance the counters, insert the events (one round trip per batch)
_WRITE: Final = (
    "WITH advanced AS (UPDATE lockerbus_namespaces n "
    "SET last_seq = v.last, held = n.held + v.added "
    "FROM unnest($8::text[], $9::bigint[], $10::bigint[]) AS v(namespace, last, added) "
    "WHERE n.namespace = v.namespace) "
    "INSERT INTO lockerbus_events (namespace, seq, event_id, ts, expires, crc, body) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::float8[], $5::float8[], "
    "$6::bigint[], $7::bytea[])"
)
#: one statement: delete a namespace's oldest $2 rows, count them as held no more and as
#: evicted for capacity; answers how many
_EVICT: Final = (
    "WITH gone AS (DELETE FROM lockerbus_events WHERE namespace = $1 AND seq IN "
    "(SELECT seq FROM lockerbus_events WHERE namespace = $1 ORDER BY seq LIMIT $2) "
    "RETURNING 1), "
    "n AS (SELECT count(*) AS c FROM gone), "
    "held AS (UPDATE lockerbus_namespaces SET held = held - (SELECT c FROM n) "
    "WHERE namespace = $1), "
    "counted AS (UPDATE lockerbus_counters SET value = value + (SELECT c FROM n) "
    "WHERE name = 'capacity') "
    "SELECT c FROM n"
)


Outcome = tuple[Append, Event | None, BaseException | None]


class PostgresWriter:
    """The task that writes this instance's appends, in batches."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        options: StoreOptions,
        clock: Callable[[], float],
        epoch: str,
    ) -> None:
        self.pool = pool
        self.name = name
        self.options = options
        self.clock = clock
        self.epoch = epoch
        self.acquire_timeout = ACQUIRE_TIMEOUT_SECONDS
        self.queue: asyncio.Queue[list[Append] | None] = asyncio.Queue()
        self.last_commit = float("-inf")
        self.busy_since: float | None = None  # monotonic start of the batch being written
        self.append_failure: tuple[str, float] | None = None  # (reason, monotonic time)
        self._known: set[str] = set()  # namespaces whose counter row exists
        self._problem: str | None = None
        self.task = asyncio.create_task(self._run(), name="lockerbus-postgres-writer")

    def submit(self, jobs: list[Append]) -> None:
        """Queue appends; a list is written in one transaction with whatever queued too."""
        self.queue.put_nowait(jobs)

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self.queue.put_nowait(None)
        await self.task

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            if first is None:
                return
            jobs = list(first)
            stop = False
            while len(jobs) < MAX_BATCH and not self.queue.empty():
                more = self.queue.get_nowait()
                if more is None:
                    stop = True
                    break
                jobs += more
            self.busy_since = time.monotonic()
            try:
                outcomes = await self._write(jobs)
            finally:
                self.busy_since = None
            for job, event, error in outcomes:
                if job.future.done():  # the awaiting task was cancelled; the work stands
                    continue
                if error is not None or event is None:
                    job.future.set_exception(error or AssertionError("no outcome"))
                else:
                    job.future.set_result(event)
            if stop:
                return

    async def _write(self, jobs: list[Append]) -> list[Outcome]:
        import asyncpg

        for attempt in range(_ATTEMPTS):
            try:
                outcomes = await self._transaction(jobs)
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
                if attempt + 1 < _ATTEMPTS:
                    continue  # a racing id or lock order: run again, it sees the other commit
                error = StoreUnavailableError(f"{self.name}: appends kept colliding")
                return self._failed(jobs, error)
            except Exception as exc:
                return self._failed(jobs, exc)
            self.last_commit = time.monotonic()
            self._problem = self.append_failure = None
            self._known.update(job.event["namespace"] for job in jobs)  # their rows exist now
            return outcomes
        raise AssertionError("unreachable")

    async def _transaction(self, jobs: list[Append]) -> list[Outcome]:
        """One transaction writing ``jobs``.  A refusal by PostgreSQL (a racing id, a
        deadlock) is rolled back; on any other failure the connection is closed
        instead, since a rollback on a connection that timed out or broke would wait
        out the command timeout a second time before the appends are answered."""
        import asyncpg

        conn = await self.pool.acquire(timeout=self.acquire_timeout)
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                outcomes = await write_batch(conn, jobs, self)
            except asyncpg.PostgresError as exc:
                if conn.is_closed() or isinstance(exc, asyncpg.QueryCanceledError):
                    raise
                await transaction.rollback()
                raise
            await transaction.commit()
            return outcomes
        except BaseException as exc:
            if not isinstance(exc, asyncpg.PostgresError) or conn.is_in_transaction():
                conn.terminate()  # not a clean refusal: no reset, no rollback waited for
            raise
        finally:
            await self.pool.release(conn)

    def _failed(self, jobs: list[Append], exc: BaseException) -> list[Outcome]:
        import asyncpg

        if not isinstance(
            exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
        ):
            store_logger.exception("%s: unexpected error", self.name, exc_info=exc)
        error = unavailable(exc, self.name)
        if error.message != self._problem:
            store_logger.error("%s", error.message)
        self._problem = error.message
        self.append_failure = (error.message, time.monotonic())
        return [(job, None, error) for job in jobs]

    async def lock_namespaces(self, conn: Conn, names: list[str]) -> dict[str, Any]:
        """Inside the transaction: lock the counter rows of ``names`` (sorted), creating
        missing ones; returns namespace -> (last_seq, held)."""
        missing = [n for n in names if n not in self._known]
        if missing:
            await conn.execute(
                "INSERT INTO lockerbus_namespaces (namespace, last_seq) "
                "SELECT unnest($1::text[]), 0 ON CONFLICT (namespace) DO NOTHING",
                missing,
            )
        rows = await conn.fetch(
            "SELECT namespace, last_seq, held FROM lockerbus_namespaces "
            "WHERE namespace = ANY($1::text[]) ORDER BY namespace FOR UPDATE",
            names,
        )
        return {row["namespace"]: (row["last_seq"], row["held"]) for row in rows}


async def write_batch(conn: Conn, jobs: list[Append], writer: PostgresWriter) -> list[Outcome]:
    """Inside one transaction: number and write ``jobs`` (see the module docstring)."""
    now = writer.clock()
    names = sorted({job.event["namespace"] for job in jobs})
    counters = await writer.lock_namespaces(conn, names)
    last = {ns: int(counters[ns][0]) for ns in names}
    held = {ns: int(counters[ns][1]) for ns in names}
    ids = [str(job.event["id"]) for job in jobs if job.event.get("id")]
    stored_ids = await _held_ids(conn, ids, now) if ids else {}
    freed = [i for i, event in stored_ids.items() if event is None]
    if freed:  # expired, or corrupt: the id is free again
        await conn.execute(
            "UPDATE lockerbus_events SET event_id = NULL WHERE event_id = ANY($1::text[])", freed
        )
    state = BatchState()
    changes = [change_of(job.event) for job in jobs]
    help_keys = [c.key for c in changes if c is not None and c.kind != "locker"]
    await state.load(conn, help_keys)
    outcomes: list[Outcome] = []
    rows: list[tuple[Any, ...]] = []
    written: dict[str, Event] = {}  # ids written earlier in this batch
    for job, change in zip(jobs, changes, strict=True):
        event_id = str(job.event.get("id") or "")
        earlier = (written.get(event_id) or stored_ids.get(event_id)) if event_id else None
        if earlier is not None:
            outcomes.append((job, None, DuplicateEvent(earlier)))
            continue
        namespace = job.event["namespace"]
        seq = last[namespace] + 1
        stored = {**job.event, "seq": seq, "epoch": writer.epoch}
        try:
            blob = encode(stored)
        except TypeError as exc:
            outcomes.append((job, None, exc))
            continue
        refused = None if change is None else state.apply(change, seq)
        if refused is not None:
            outcomes.append((job, None, refused))
            continue
        last[namespace] = seq
        ttl = writer.options.retention(namespace).ttl_seconds
        if job.ttl is not None:
            ttl = min(job.ttl, ttl)
        rows.append((namespace, seq, event_id or None, job.at, now + ttl, checksum(blob), blob))
        outcomes.append((job, stored, None))
        if event_id:
            written[event_id] = stored
    if rows:
        added = {ns: sum(1 for r in rows if r[0] == ns) for ns in names}
        await conn.execute(
            _WRITE,
            *(list(column) for column in zip(*rows, strict=True)),
            names,
            [last[ns] for ns in names],
            [added[ns] for ns in names],
        )
        for ns in names:
            await evict_capacity(
                conn, ns, held[ns] + added[ns], writer.options.retention(ns).max_events
            )
    await state.flush(conn)
    return outcomes


async def _held_ids(conn: Conn, ids: list[str], now: float) -> dict[str, Event | None]:
    """The ids among ``ids`` with a row: its event while held and sound, else None (free)."""
    found: dict[str, Event | None] = {}
    for row in await conn.fetch(
        "SELECT event_id, namespace, seq, expires, crc, body FROM lockerbus_events "
        "WHERE event_id = ANY($1::text[])",
        ids,
    ):
        body = bytes(row["body"])
        sound = row["expires"] > now and checksum(body) == row["crc"]
        event = decode_one(body, row["seq"], row["namespace"]) if sound else None
        found[row["event_id"]] = event
    return found


async def evict_capacity(conn: Conn, namespace: str, held: int, max_events: int) -> int:
    """Inside a transaction holding ``namespace``'s counter row: delete its oldest rows
    over ``max_events`` (its own cap, contract §11); returns how many."""
    excess = held - max_events
    if excess <= 0:
        return 0
    return int(await conn.fetchval(_EVICT, namespace, excess) or 0)


async def bump(conn: Conn, name: str, delta: int) -> None:
    """Add ``delta`` to an eviction counter."""
    if delta:
        await conn.execute(
            "UPDATE lockerbus_counters SET value = value + $2 WHERE name = $1", name, delta
        )
