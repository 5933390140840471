"""The PostgreSQL store's schema: versioned migrations applied on start, and the error
every failure becomes.

Every table is prefixed ``lockerbus_`` so the store can share a database.  The
schema version lives in ``lockerbus_meta``; :func:`migrate` applies the
migrations the database has not seen, each in its own transaction, under an
advisory lock so several instances starting together migrate once.  A database
newer than this code (a rollback of lockerbus after an upgrade) is refused with
one line rather than written to in a form the newer code would misread.  The
epoch is written once, by the first migration's transaction.

Seq counters live in ``lockerbus_namespaces``: the writer locks a namespace's
row (``FOR UPDATE``) in the transaction that numbers its events, so appends from
any number of instances never reuse or skip a seq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ..errors import StoreUnavailableError
from .codec import new_epoch

if TYPE_CHECKING:
    from typing import TypeAlias

    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    #: what the store works with: a connection lent by its pool
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

#: The schemes that pick this store (libpq accepts both).
SCHEMES: Final = ("postgresql://", "postgres://")

#: One entry per schema version, applied in order; never edit a released one, add one.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: events, seq counters, eviction counters, §12 ids, §11 state
    """
    CREATE TABLE lockerbus_namespaces (
        namespace text PRIMARY KEY,
        last_seq bigint NOT NULL,
        held bigint NOT NULL DEFAULT 0      -- rows held: the per-namespace cap (§11)
    );
    CREATE TABLE lockerbus_counters (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO lockerbus_counters (name, value)
        VALUES ('ttl', 0), ('capacity', 0), ('corrupt', 0);
    CREATE TABLE lockerbus_events (
        namespace text NOT NULL,
        seq bigint NOT NULL,
        event_id text,                      -- contract §12; NULL once freed
        ts double precision NOT NULL,       -- the event's timestamp, POSIX seconds
        expires double precision NOT NULL,  -- store clock, POSIX seconds
        crc bigint NOT NULL,                -- CRC-32 of body
        body bytea NOT NULL,                -- the stored event as compact JSON
        PRIMARY KEY (namespace, seq)
    );
    CREATE UNIQUE INDEX lockerbus_events_id ON lockerbus_events (event_id);
    CREATE INDEX lockerbus_events_expires ON lockerbus_events (expires);
    CREATE INDEX lockerbus_events_time ON lockerbus_events (namespace, ts);
    CREATE TABLE lockerbus_state (
        kind text NOT NULL,                 -- 'lockers' or 'help'
        key text NOT NULL,                  -- kioskId\\nlockerId, or the help id
        status text NOT NULL,               -- a help request's status ('' for lockers)
        crc bigint NOT NULL,
        body bytea NOT NULL,                -- the entry as compact JSON, with its seq
        PRIMARY KEY (kind, key)
    );
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

#: pg_advisory_xact_lock key held while migrating ("lockerbus" as 8 bytes)
_MIGRATION_LOCK: Final = int.from_bytes(b"lockrbus", "big") & 0x7FFF_FFFF_FFFF_FFFF


def where(url: str) -> str:
    """``host:port/db`` of ``url``, for messages; never credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def unavailable(exc: BaseException, name: str) -> StoreUnavailableError:
    """The error callers see for ``exc`` (one line, naming the store)."""
    if isinstance(exc, StoreUnavailableError):
        return exc
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreUnavailableError(f"{name}: {reason}")


async def migrate(conn: Conn, name: str) -> str:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the epoch.

    Raises StoreUnavailableError when the database is newer than this code.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS lockerbus_meta (key text PRIMARY KEY, value text NOT NULL)"
        )
        found = await conn.fetchval("SELECT value FROM lockerbus_meta WHERE key = 'schema'")
    version = int(found) if found is not None else 0
    if version > SCHEMA_VERSION:
        raise StoreUnavailableError(
            f"{name}: the database has schema {version}, newer than this lockerbus "
            f"knows ({SCHEMA_VERSION}): upgrade lockerbus"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            now = await conn.fetchval("SELECT value FROM lockerbus_meta WHERE key = 'schema'")
            if now is not None and int(now) >= number:
                continue  # another instance applied it meanwhile
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute(
                "INSERT INTO lockerbus_meta (key, value) VALUES ('schema', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(number),
            )
            await conn.execute(
                "INSERT INTO lockerbus_meta (key, value) VALUES ('epoch', $1) "
                "ON CONFLICT (key) DO NOTHING",
                new_epoch(),
            )
    epoch = await conn.fetchval("SELECT value FROM lockerbus_meta WHERE key = 'epoch'")
    return str(epoch)
