"""The SQLite store's file: its schema, and the small SQL steps writer and readers share.

Seq counters live in the ``namespaces`` table and are read and advanced inside
the same transaction as the rows they number, so a crash, a failed commit or a
second process writing the same file can never reuse or skip a seq.  The epoch
is written once, when the file is created.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import Final
from urllib.parse import quote

from ..errors import StoreUnavailableError
from .codec import checksum, decode_one, new_epoch

SCHEMA_VERSION: Final = "1"

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
-- contract §12: event id -> its row, checked and written in the append transaction
CREATE TABLE IF NOT EXISTS event_ids (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('events', 0), ('ttl', 0), ('capacity', 0), ('corrupt', 0);
-- per-namespace retention (contract §11): 'held:<namespace>' counts its rows, and a
-- file written before these counters existed gets them from its rows, once
INSERT OR IGNORE INTO counters (name, value)
    SELECT 'held:' || namespace, count(*) FROM events GROUP BY namespace;
"""

INSERT_EVENT: Final = (
    "INSERT INTO events (namespace, seq, ts, expires, crc, body) VALUES (?, ?, ?, ?, ?, ?)"
)
UPSERT_LAST: Final = (
    "INSERT INTO namespaces (namespace, last_seq) VALUES (?, ?) "
    "ON CONFLICT (namespace) DO UPDATE SET last_seq = excluded.last_seq"
)
LAST_SEQ: Final = "SELECT last_seq FROM namespaces WHERE namespace = ?"

# -- event ids (contract §12) -------------------------------------------------------
#: The row still held under an id (not expired): namespace, seq, crc, body.
HELD_ID: Final = (
    "SELECT e.namespace, e.seq, e.crc, e.body FROM event_ids i "
    "JOIN events e ON e.namespace = i.namespace AND e.seq = i.seq "
    "WHERE i.id = ? AND e.expires > ?"
)
INSERT_ID: Final = "INSERT OR REPLACE INTO event_ids (id, namespace, seq) VALUES (?, ?, ?)"
#: Ids whose event is gone (expired, evicted, corrupt): run by cleanup.
PRUNE_IDS: Final = (
    "DELETE FROM event_ids WHERE NOT EXISTS (SELECT 1 FROM events e "
    "WHERE e.namespace = event_ids.namespace AND e.seq = event_ids.seq)"
)


def connect(path: str, busy_timeout: float, *, create: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from one
    thread at a time though not necessarily the one that made it.

    ``create=False`` (the readers) never makes a file: a reader opening after the
    file was removed must fail, not leave an empty database in its place.
    """
    target = path if create else f"file:{quote(os.path.abspath(path))}?mode=rw"
    return sqlite3.connect(
        target,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        uri=not create,
    )


def unavailable(exc: BaseException, path: str) -> StoreUnavailableError:
    """The error callers see for ``exc``."""
    if isinstance(exc, StoreUnavailableError):
        return exc
    return StoreUnavailableError(f"sqlite store {path}: {exc}")


def rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if any; a failure to is not worth another error."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def bump(conn: sqlite3.Connection, name: str, delta: int) -> None:
    """Add ``delta`` to a counter (the event count, or evictions by reason)."""
    if delta:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, name))


def held(conn: sqlite3.Connection, namespace: str, delta: int) -> None:
    """Count ``delta`` rows more (or fewer) held, in all and in ``namespace``."""
    if delta:
        bump(conn, "events", delta)
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            ("held:" + namespace, delta),
        )


def last_seq(conn: sqlite3.Connection, namespace: str) -> int:
    """The latest seq assigned in ``namespace`` (0 when none)."""
    row = conn.execute(LAST_SEQ, (namespace,)).fetchone()
    return int(row[0]) if row else 0


def create_or_open(conn: sqlite3.Connection, path: str) -> str:
    """Put the file in WAL mode, create or check its schema; returns its epoch."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreUnavailableError(f"sqlite store {path}: WAL mode refused ({mode})")
    conn.execute("PRAGMA synchronous = FULL")
    with transaction(conn):
        for statement in (s.strip() for s in _SCHEMA.split(";")):
            if statement:
                conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreUnavailableError(
                f"sqlite store {path}: schema {row[0]} is not {SCHEMA_VERSION}"
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        epoch = str(row[0]) if row else new_epoch()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
    return epoch


def evict_capacity(conn: sqlite3.Connection, namespace: str, max_events: int) -> int:
    """Inside a transaction: delete ``namespace``'s oldest rows over ``max_events``
    (its own capacity, contract §11); returns how many."""
    row = conn.execute("SELECT value FROM counters WHERE name = ?", ("held:" + namespace,))
    found = row.fetchone()
    excess = (found[0] if found else 0) - max_events
    if excess <= 0:
        return 0
    removed = int(
        conn.execute(
            "DELETE FROM events WHERE namespace = ? AND seq IN "
            "(SELECT seq FROM events WHERE namespace = ? ORDER BY seq LIMIT ?)",
            (namespace, namespace, excess),
        ).rowcount
    )
    held(conn, namespace, -removed)
    bump(conn, "capacity", removed)
    return removed


def held_namespaces(conn: sqlite3.Connection) -> list[str]:
    """Every namespace that has held rows."""
    rows = conn.execute("SELECT substr(name, 6) FROM counters WHERE name LIKE 'held:%'")
    return [str(name) for (name,) in rows]


def fault(crc: int, body: bytes, seq: int, namespace: str) -> str | None:
    """Why a stored row is not the event it claims to be, or None when it is."""
    if not isinstance(body, bytes) or checksum(body) != crc:
        return "checksum mismatch"
    if decode_one(body, seq, namespace) is None:
        return "does not deserialize"
    return None
