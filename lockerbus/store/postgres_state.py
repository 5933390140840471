"""The PostgreSQL store's durable state (contract §11): ``lockerbus_state``, beside the
events, changed in the transaction that appends the events changing it.

The writer holds the lock on ``/ws/help``'s (or ``/ws/lockers``') counter row
while it checks and writes, so two instances cannot both pass a help check:
the second reads the state only after the first committed.  A batch reads the
help requests it names once (:meth:`BatchState.load`), checks and changes them
in memory item by item, and writes what changed at the end (:meth:`flush`).
Rows never expire; each carries a CRC-32 of its body, and a row failing it is
left out of reads and logged (the admin rebuilds the state from history).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from ..errors import ConflictError
from ..log import store_logger
from .base import StateSnapshot
from .codec import checksum, encode
from .state import STATE_NAMESPACES, StateChange, StateTable, merged, refusal, sort_entries

if TYPE_CHECKING:
    from .postgres_schema import Conn

_UPSERT: Final = (
    "INSERT INTO lockerbus_state (kind, key, status, crc, body) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[]) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "status = excluded.status, crc = excluded.crc, body = excluded.body"
)
_DELETE: Final = (
    "DELETE FROM lockerbus_state s USING unnest($1::text[], $2::text[]) AS d(kind, key) "
    "WHERE s.kind = d.kind AND s.key = d.key"
)


class BatchState:
    """The state one append transaction reads, checks and changes."""

    def __init__(self) -> None:
        #: help requests held: key -> (status, entry)
        self.help: dict[str, tuple[str, dict[str, Any]]] = {}
        #: (kind, key) -> the entry to write, or None to delete
        self.writes: dict[tuple[str, str], dict[str, Any] | None] = {}

    async def load(self, conn: Conn, keys: list[str]) -> None:
        """Read the help requests named by ``keys`` (call under the /ws/help lock)."""
        if not keys:
            return
        rows = await conn.fetch(
            "SELECT key, status, crc, body FROM lockerbus_state "
            "WHERE kind = 'help' AND key = ANY($1::text[])",
            keys,
        )
        for row in rows:
            body = bytes(row["body"])
            entry = orjson.loads(body) if checksum(body) == row["crc"] else {}
            self.help[row["key"]] = (row["status"], entry)

    def apply(self, change: StateChange, seq: int) -> ConflictError | None:
        """The refusal, or make ``change`` as of ``seq``."""
        if change.kind == "locker":
            self.writes[(change.state, change.key)] = merged(None, change, seq)
            return None
        current = self.help.get(change.key)
        error = refusal(change, None if current is None else current[0])
        if error is not None:
            return error
        if change.removes:
            self.help.pop(change.key, None)
            self.writes[(change.state, change.key)] = None
            return None
        entry = merged(None if current is None else current[1], change, seq)
        self.help[change.key] = (change.status, entry)
        self.writes[(change.state, change.key)] = entry
        return None

    async def flush(self, conn: Conn) -> None:
        """Write what the batch changed, in the same transaction."""
        upserts = [(k, e) for k, e in self.writes.items() if e is not None]
        deletes = [k for k, e in self.writes.items() if e is None]
        if upserts:
            bodies = [encode(entry) for _key, entry in upserts]
            await conn.execute(
                _UPSERT,
                [kind for (kind, _), _e in upserts],
                [key for (_, key), _e in upserts],
                [str(e.get("status", "")) if kind == "help" else "" for (kind, _), e in upserts],
                [checksum(body) for body in bodies],
                bodies,
            )
        if deletes:
            await conn.execute(_DELETE, [k for k, _ in deletes], [key for _, key in deletes])


async def read_state(conn: Conn, kind: str, epoch: str, name: str) -> StateSnapshot:
    """Inside one snapshot: the entries of ``kind`` and the position they reflect."""
    entries = []
    for row in await conn.fetch("SELECT key, crc, body FROM lockerbus_state WHERE kind = $1", kind):
        body = bytes(row["body"])
        if checksum(body) != row["crc"]:
            store_logger.error(
                "%s: state entry failed its checksum: %s %r (rebuild the state)",
                name,
                kind,
                row["key"],
            )
            continue
        entries.append(orjson.loads(body))
    last = await conn.fetchval(
        "SELECT last_seq FROM lockerbus_namespaces WHERE namespace = $1", STATE_NAMESPACES[kind]
    )
    return StateSnapshot(sort_entries(kind, entries), int(last or 0), epoch)


async def replace(conn: Conn, table: StateTable, positions: dict[str, int]) -> bool:
    """Make ``table`` the state if the namespaces are still at ``positions`` (their
    counter rows locked meanwhile, so no append slips in between)."""
    async with conn.transaction():
        for kind, namespace in sorted(STATE_NAMESPACES.items(), key=lambda kv: kv[1]):
            last = await conn.fetchval(
                "SELECT last_seq FROM lockerbus_namespaces WHERE namespace = $1 FOR UPDATE",
                namespace,
            )
            if int(last or 0) != positions[kind]:
                return False
        await conn.execute("DELETE FROM lockerbus_state")
        batch = BatchState()
        for kind in STATE_NAMESPACES:
            for key, entry in table.entries[kind].items():
                batch.writes[(kind, key)] = entry
        await batch.flush(conn)
    return True
