"""The PostgreSQL store's reads, each inside one REPEATABLE READ snapshot (so the
namespace's ``last_seq`` and the rows agree), on the pool's connections beside
the writer's.

A read that meets rows failing their checks answers
:class:`~lockerbus.store.backend.Damaged`; the store removes them and reads again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..recovery import decide, recoverable_gap
from .backend import Damaged
from .base import EVICTION_REASONS, NamespaceStats, ReplayResult, StoreStats
from .sqlite_reads import decode_rows
from .sqlite_schema import fault

if TYPE_CHECKING:
    import asyncpg

    from .postgres_schema import Conn

#: How a suspect row is named: (namespace, seq).
Suspect = tuple[str, int]
Read = Callable[["Conn"], Awaitable["ReplayResult | Damaged[Suspect]"]]


async def last_seq(conn: Conn, namespace: str) -> int:
    """The latest seq assigned in ``namespace`` (0 when none)."""
    found = await conn.fetchval(
        "SELECT last_seq FROM lockerbus_namespaces WHERE namespace = $1", namespace
    )
    return int(found or 0)


def _rows(records: list[asyncpg.Record]) -> list[tuple[int, int, bytes]]:
    return [(r["seq"], r["crc"], bytes(r["body"])) for r in records]


def replay_read(
    namespace: str,
    *,
    after_seq: int | None,
    requested_epoch: str | None,
    epoch: str,
    since_at: float | None,
    limit: int,
    clock: Callable[[], float],
) -> Read:
    """The read behind ``replay`` (see base.EventStore.replay)."""

    async def read(conn: Conn) -> ReplayResult | Damaged[Suspect]:
        now = clock()
        last = await last_seq(conn, namespace)
        held = 0
        if after_seq is not None:
            gap = recoverable_gap(
                after_seq=after_seq,
                requested_epoch=requested_epoch,
                epoch=epoch,
                last_seq=last,
                limit=limit,
            )
            if gap:  # decide() asks only then, and only for (after_seq, last]
                held = int(
                    await conn.fetchval(
                        "SELECT count(*) FROM lockerbus_events WHERE namespace = $1 "
                        "AND seq > $2 AND seq <= $3 AND expires > $4",
                        namespace,
                        after_seq,
                        last,
                        now,
                    )
                )
        plan, recovered = decide(
            after_seq=after_seq,
            requested_epoch=requested_epoch,
            epoch=epoch,
            last_seq=last,
            limit=limit,
            count_held=lambda _lo, _hi: held,
        )
        sql = (
            "SELECT seq, crc, body FROM lockerbus_events WHERE namespace = $1 AND seq > $2 "
            "AND seq <= $3 AND expires > $4"
        )
        args: list[Any] = [namespace, plan.after_seq, last, now]
        if since_at is not None:
            sql += " AND ts >= $5"
            args.append(since_at)
        sql += f" ORDER BY seq DESC LIMIT ${len(args) + 1}"
        rows = _rows(await conn.fetch(sql, *args, plan.limit + 1))
        has_more = len(rows) > plan.limit
        rows = rows[: plan.limit]
        rows.reverse()
        events = decode_rows(rows, namespace)
        if isinstance(events, Damaged):
            return events
        return ReplayResult(events, last, epoch, recovered, has_more)

    return read


def page_read(
    namespace: str,
    *,
    after_seq: int,
    epoch: str,
    since_at: float | None,
    limit: int,
    clock: Callable[[], float],
) -> Read:
    """The read behind ``page`` (see base.EventStore.page)."""

    async def read(conn: Conn) -> ReplayResult | Damaged[Suspect]:
        now = clock()
        last = await last_seq(conn, namespace)
        sql = (
            "SELECT seq, crc, body FROM lockerbus_events WHERE namespace = $1 AND seq > $2 "
            "AND expires > $3"
        )
        args: list[Any] = [namespace, after_seq, now]
        if since_at is not None:
            sql += " AND ts >= $4"
            args.append(since_at)
        sql += f" ORDER BY seq LIMIT ${len(args) + 1}"
        rows = _rows(await conn.fetch(sql, *args, limit + 1))
        has_more = len(rows) > limit
        rows = rows[:limit]
        events = decode_rows(rows, namespace)
        if isinstance(events, Damaged):
            return events
        if has_more:
            last = rows[-1][0] if rows else max(after_seq, 0)
        return ReplayResult(events, last, epoch, None, has_more)

    return read


async def read_stats(conn: Conn, *, now: float, epoch: str, max_events: int) -> StoreStats:
    """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
    namespaces = {
        row["namespace"]: NamespaceStats(0, None, None, int(row["last_seq"]))
        for row in await conn.fetch("SELECT namespace, last_seq FROM lockerbus_namespaces")
    }
    for row in await conn.fetch(
        "SELECT namespace, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM lockerbus_events "
        "WHERE expires > $1 GROUP BY namespace",
        now,
    ):
        name = row["namespace"]
        last = namespaces[name].last_seq if name in namespaces else 0
        namespaces[name] = NamespaceStats(int(row["n"]), row["lo"], row["hi"], last)
    evictions = dict.fromkeys(EVICTION_REASONS, 0)
    for row in await conn.fetch("SELECT name, value FROM lockerbus_counters"):
        if row["name"] in evictions:
            evictions[row["name"]] = int(row["value"])
    return StoreStats(
        backend="postgresql",
        epoch=epoch,
        events=sum(ns.count for ns in namespaces.values()),
        max_events=max_events,
        namespaces=namespaces,
        evictions=evictions,
    )


async def scan_corrupt(conn: Conn) -> list[Suspect]:
    """Every row, of every namespace, that fails its checks (read in a cursor)."""
    suspects: list[Suspect] = []
    async for row in conn.cursor(
        "SELECT namespace, seq, crc, body FROM lockerbus_events", prefetch=1000
    ):
        if fault(row["crc"], bytes(row["body"]), row["seq"], row["namespace"]) is not None:
            suspects.append((row["namespace"], row["seq"]))
    return suspects


def count_by_namespace(records: list[asyncpg.Record]) -> Counter[str]:
    """Rows returned by a DELETE ... RETURNING namespace, counted per namespace."""
    return Counter(r["namespace"] for r in records)
