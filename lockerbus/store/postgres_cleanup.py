"""The PostgreSQL store's cleanup: expired rows, rows over a namespace's cap, and rows
failing their checks are deleted and counted by reason.

Each step holds the counter rows of the namespaces it touches (locked in name
order, as the writer locks them), so a cleanup and an append wait for each
other rather than deadlock, and ``held`` stays exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StoreOptions
from .codec import log_corrupt
from .postgres_reads import Suspect, count_by_namespace
from .postgres_writer import bump, evict_capacity
from .sqlite_schema import fault

if TYPE_CHECKING:
    from .postgres_schema import Conn


async def expire(conn: Conn, now: float, options: StoreOptions) -> int:
    """Delete expired rows, then any over their namespace's cap; returns how many."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM lockerbus_namespaces ORDER BY namespace FOR UPDATE")
        gone = count_by_namespace(
            await conn.fetch(
                "DELETE FROM lockerbus_events WHERE expires <= $1 RETURNING namespace", now
            )
        )
        for namespace, count in sorted(gone.items()):
            await conn.execute(
                "UPDATE lockerbus_namespaces SET held = held - $2 WHERE namespace = $1",
                namespace,
                count,
            )
        await bump(conn, "ttl", gone.total())
        evicted = 0
        for row in await conn.fetch(
            "SELECT namespace, held FROM lockerbus_namespaces ORDER BY namespace"
        ):
            cap = options.retention(row["namespace"]).max_events
            evicted += await evict_capacity(conn, row["namespace"], int(row["held"]), cap)
        return gone.total() + evicted


async def remove_corrupt(conn: Conn, suspects: list[Suspect]) -> int:
    """Delete the suspects that still fail their checks (one evicted or expired
    meanwhile is simply gone), count and log them; returns how many."""
    gone: list[tuple[str, int, str]] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT 1 FROM lockerbus_namespaces WHERE namespace = ANY($1::text[]) "
            "ORDER BY namespace FOR UPDATE",
            sorted({ns for ns, _seq in suspects}),
        )
        for namespace, seq in suspects:
            row = await conn.fetchrow(
                "SELECT crc, body FROM lockerbus_events WHERE namespace = $1 AND seq = $2",
                namespace,
                seq,
            )
            why = None if row is None else fault(row["crc"], bytes(row["body"]), seq, namespace)
            if why is None:
                continue
            await conn.execute(
                "DELETE FROM lockerbus_events WHERE namespace = $1 AND seq = $2", namespace, seq
            )
            await conn.execute(
                "UPDATE lockerbus_namespaces SET held = held - 1 WHERE namespace = $1", namespace
            )
            gone.append((namespace, seq, why))
        await bump(conn, "corrupt", len(gone))
    for namespace, seq, why in gone:
        log_corrupt(namespace, seq, why)
    return len(gone)
