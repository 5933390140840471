"""The SQLite store's durable state (contract §11): its own table, beside the events.

The writer checks and writes a state change inside the transaction that
appends its event (:func:`check_and_apply`), so the refusal of a help event
and the state it leaves commit or roll back with the event.  Rows never
expire: cleanup and capacity touch only ``events``.  Each row carries a
CRC-32 of its body; a row failing it is left out of reads and logged (the
state is rebuilt from history by the admin, not guessed).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

from ..errors import ConflictError
from ..log import store_logger
from .base import StateSnapshot
from .codec import checksum, encode
from .sqlite_schema import fault, last_seq, transaction
from .state import STATE_NAMESPACES, StateChange, StateTable, merged, refusal, sort_entries

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS state (
    kind TEXT NOT NULL,      -- 'lockers' or 'help'
    key TEXT NOT NULL,       -- kioskId\\nlockerId, or the help id
    status TEXT NOT NULL,    -- a help request's status ('' for lockers)
    crc INTEGER NOT NULL,    -- CRC-32 of body
    body BLOB NOT NULL,      -- the entry as compact JSON, with its seq
    PRIMARY KEY (kind, key)
)
"""


def _current(conn: sqlite3.Connection, change: StateChange) -> tuple[str, dict[str, Any]] | None:
    row = conn.execute(
        "SELECT status, crc, body FROM state WHERE kind = ? AND key = ?",
        (change.state, change.key),
    ).fetchone()
    if row is None:
        return None
    status, crc, body = row
    entry = json.loads(body) if checksum(body) == crc else {}
    return str(status), entry


def create(conn: sqlite3.Connection) -> None:
    """Create the state table; a file written before it existed gets it rebuilt from the
    history it holds (what is held is all there is to know)."""
    existed = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state'"
    ).fetchone()
    if existed:
        return
    with transaction(conn):
        conn.execute(SCHEMA)
        table = StateTable()
        for namespace in STATE_NAMESPACES.values():
            rows = conn.execute(
                "SELECT seq, crc, body FROM events WHERE namespace = ? ORDER BY seq", (namespace,)
            )
            for seq, crc, body in rows:
                if fault(crc, body, seq, namespace) is None:
                    table.fold({**json.loads(body), "seq": seq})
        _insert(conn, table)
    store_logger.info("sqlite store: state built from the history held")


_UPSERT: Final = (
    "INSERT INTO state (kind, key, status, crc, body) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "status = excluded.status, crc = excluded.crc, body = excluded.body"
)

Row = tuple[str, str, str, int, bytes]


def locker_row(change: StateChange, seq: int) -> Row:
    """The row a locker change writes (never refused, independent of the row before):
    the writer collects a batch's and writes them with :func:`upsert` in one go."""
    body = encode(merged(None, change, seq))
    return change.state, change.key, change.status, checksum(body), body


def upsert(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Write state rows (in order: a later row for a key wins)."""
    conn.executemany(_UPSERT, rows)


def check_and_apply(
    conn: sqlite3.Connection, change: StateChange, seq: int
) -> ConflictError | None:
    """Inside the append's transaction: the refusal, or write ``change`` as of ``seq``."""
    current = None if change.kind == "locker" else _current(conn, change)
    if change.kind != "locker":
        error = refusal(change, None if current is None else current[0])
        if error is not None:
            return error
    if change.removes:
        conn.execute("DELETE FROM state WHERE kind = ? AND key = ?", (change.state, change.key))
        return None
    entry = merged(None if current is None else current[1], change, seq)
    body = encode(entry)
    conn.execute(_UPSERT, (change.state, change.key, change.status, checksum(body), body))
    return None


def read_state(conn: sqlite3.Connection, kind: str, epoch: str) -> StateSnapshot:
    """Inside one read snapshot: the entries of ``kind`` and the position they reflect."""
    entries = []
    for key, crc, body in conn.execute("SELECT key, crc, body FROM state WHERE kind = ?", (kind,)):
        if checksum(body) != crc:
            store_logger.error(
                "state entry failed its checksum: %s %r (rebuild the state)", kind, key
            )
            continue
        entries.append(json.loads(body))
    namespace = STATE_NAMESPACES[kind]
    return StateSnapshot(sort_entries(kind, entries), last_seq(conn, namespace), epoch)


def replace(conn: sqlite3.Connection, table: StateTable, positions: dict[str, int]) -> bool:
    """On the writer: make ``table`` the state, if the namespaces are still at ``positions``."""
    with transaction(conn):
        for kind, namespace in STATE_NAMESPACES.items():
            if last_seq(conn, namespace) != positions[kind]:
                return False
        conn.execute("DELETE FROM state")
        _insert(conn, table)
    return True


def _insert(conn: sqlite3.Connection, table: StateTable) -> None:
    for kind in STATE_NAMESPACES:
        for key, entry in table.entries[kind].items():
            blob = encode(entry)
            status = str(entry.get("status", "")) if kind == "help" else ""
            conn.execute(
                "INSERT INTO state (kind, key, status, crc, body) VALUES (?, ?, ?, ?, ?)",
                (kind, key, status, checksum(blob), blob),
            )
