"""Test helpers for the event stores: a clock to drive TTL, event builders, and
per-backend knowledge (how to name one, how to corrupt a record in it).

Adding a backend to the contract suite is one more :class:`Backend` in
``BACKENDS``.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lockerbus.store import EventStore, Retention, StoreOptions, open_store
from lockerbus.store.memory import MemoryEventStore

T0 = datetime(2026, 11, 26, 19, 0, 0, tzinfo=UTC)

ROUTES = {
    "/ws/lockers": ("locker_state_changed", "locker_updates"),
    "/ws/help": ("help_requested", "help_requests"),
    "/ws/events": ("system_status", "system_events"),
}


# a fresh range per process: a child process restarted on the same file must not reuse ids
_HELP_IDS = itertools.count(uuid.uuid4().int % 10**12)


class FakeClock:
    """Seconds (wall or monotonic) that move only when a test says so."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(
    namespace: str = "/ws/lockers", *, at: datetime | None = None, note: str = ""
) -> dict[str, Any]:
    """A valid-looking envelope without seq/epoch, as EventService makes them."""
    event_type, room = ROUTES[namespace]
    data: dict[str, Any]
    if event_type == "locker_state_changed":
        data = {
            "lockerId": "locker-7",
            "oldState": "closed",
            "newState": "open",
            "kioskId": "kiosk-1",
            "reason": note or "rfid",
            "metadata": {"card": "C-123"},
        }
    elif event_type == "help_requested":
        data = {
            "id": next(_HELP_IDS),  # each its own request: reusing an open id is a conflict
            "kiosk_id": "kiosk-1",
            "category": "other",
            "status": "open",
            "created_at": iso(at or T0),
            "priority": "low",
            "note": note,
        }
    else:
        data = {"component": "gateway", "status": "online", "health_score": 99, "message": note}
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": "1.0",
        "namespace": namespace,
        "room": room,
        "timestamp": iso(at or T0),
        "data": data,
    }


def locker_event(
    kiosk: str, locker: str, state: str, *, at: datetime | None = None
) -> dict[str, Any]:
    """A locker_state_changed envelope moving ``locker`` of ``kiosk`` to ``state``."""
    event = make_event("/ws/lockers", at=at)
    event["data"].update(kioskId=kiosk, lockerId=locker, newState=state)
    return event


def help_event(help_id: int, status: str = "open", kiosk: str = "kiosk-1") -> dict[str, Any]:
    """A help_requested envelope opening request ``help_id``."""
    event = make_event("/ws/help")
    event["data"].update(id=help_id, status=status, kiosk_id=kiosk)
    return event


def help_update(help_id: int, old: str, new: str, agent: str = "agent-1") -> dict[str, Any]:
    """A help_status_updated envelope moving request ``help_id`` from ``old`` to ``new``."""
    event = make_event("/ws/help")
    event["type"] = "help_status_updated"
    event["data"] = {
        "id": help_id,
        "old_status": old,
        "new_status": new,
        "agent_id": agent,
        "updated_at": iso(T0),
    }
    return event


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def flip_byte(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x20]) + blob[index + 1 :]


async def corrupt_memory(store: EventStore, namespace: str, seq: int) -> None:
    """Mangle one held record in place: its bytes change, its checksum does not."""
    assert isinstance(store, MemoryEventStore)
    log = store._logs[namespace]
    record = log.records[seq - log.base]
    assert record is not None
    record.blob = flip_byte(record.blob, len(record.blob) // 2)


async def corrupt_sqlite(store: EventStore, namespace: str, seq: int) -> None:
    """Rewrite one row's body through a separate connection, leaving its checksum."""
    path = store._path  # type: ignore[attr-defined]

    def rewrite() -> None:
        conn = sqlite3.connect(path, timeout=5)
        try:
            (body,) = conn.execute(
                "SELECT body FROM events WHERE namespace = ? AND seq = ?", (namespace, seq)
            ).fetchone()
            conn.execute(
                "UPDATE events SET body = ? WHERE namespace = ? AND seq = ?",
                (flip_byte(body, len(body) // 2), namespace, seq),
            )
            conn.commit()
        finally:
            conn.close()

    await asyncio.to_thread(rewrite)


async def corrupt_redis(store: EventStore, namespace: str, seq: int) -> None:
    """Flip a byte inside one record's body in Redis, leaving its checksum."""
    import redis.asyncio

    prefix = store._prefix  # type: ignore[attr-defined]
    key = f"{prefix}:log:{namespace}"
    async with redis.asyncio.Redis.from_url(store._url) as client:  # type: ignore[attr-defined]
        (member,) = await client.zrangebyscore(key, seq, seq)
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem(key, member)
            pipe.zadd(key, {flip_byte(member, len(member) // 2): seq})
            await pipe.execute()


async def corrupt_postgres(store: EventStore, namespace: str, seq: int) -> None:
    """Flip a byte inside one row's body through a connection of its own, leaving its checksum."""
    import asyncpg

    conn = await asyncpg.connect(store._url)  # type: ignore[attr-defined]
    try:
        body = await conn.fetchval(
            "SELECT body FROM lockerbus_events WHERE namespace = $1 AND seq = $2", namespace, seq
        )
        await conn.execute(
            "UPDATE lockerbus_events SET body = $3 WHERE namespace = $1 AND seq = $2",
            namespace,
            seq,
            flip_byte(bytes(body), len(body) // 2),
        )
    finally:
        await conn.close()


def postgres_url(directory: Path, name: str) -> str:
    """A database of its own on the session's cluster (created the first time it is named)."""
    from tests.postgres_support import shared

    return shared().database(f"{directory}/{name}")


def redis_url(directory: Path, name: str) -> str:
    from tests.redis_support import shared_url

    return f"{shared_url()}?prefix={directory.name}-{name}"


@dataclass(frozen=True)
class Backend:
    """What the contract suite needs to know about one store backend."""

    name: str
    url: Callable[[Path, str], str]
    corrupt: Callable[[EventStore, str, int], Awaitable[None]]


BACKENDS = {
    "memory": Backend("memory", lambda _dir, _name: "memory", corrupt_memory),
    "sqlite": Backend("sqlite", lambda d, name: f"sqlite:///{d / name}.db", corrupt_sqlite),
    "redis": Backend("redis", redis_url, corrupt_redis),
    "postgresql": Backend("postgresql", postgres_url, corrupt_postgres),
}


def at_minute(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


HOUR = 3600.0


class Factory:
    """Makes started stores of one backend, all on one fake clock; closes them after."""

    def __init__(self, backend: Backend, directory: Path) -> None:
        self.backend = backend
        self.clock = FakeClock()
        self.directory = directory
        self.stores: list[EventStore] = []

    async def __call__(
        self,
        *,
        max_events: int = 1000,
        ttl_seconds: float = HOUR,
        namespaces: dict[str, Retention] | None = None,
    ) -> EventStore:
        options = StoreOptions(
            max_events=max_events,
            ttl_seconds=ttl_seconds,
            cleanup_interval_seconds=HOUR,
            namespaces=namespaces or {},
        )
        url = self.backend.url(self.directory, f"store{len(self.stores)}")
        return await self._open(url, options)

    async def again(self) -> EventStore:
        """Another handle on the first store's storage (as a second process would open it)."""
        options = StoreOptions(cleanup_interval_seconds=HOUR)
        return await self._open(self.backend.url(self.directory, "store0"), options)

    async def _open(self, url: str, options: StoreOptions) -> EventStore:
        store = open_store(url, options, clock=self.clock)
        await store.start()
        self.stores.append(store)
        return store
