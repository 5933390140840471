"""Event stores, chosen by URL: ``memory``, ``sqlite:///path.db``, ``redis://host:port/db``,
``postgresql://user:pass@host:port/db``.

Each backend's module (and its driver) is imported only when its URL is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..config import MEMORY_URL, POSTGRES_SCHEMES, SQLITE_PREFIX, validate_store_url
from .base import (
    Appended,
    DuplicateEvent,
    EventStore,
    NamespaceStats,
    ReplayResult,
    Retention,
    StoredEvent,
    StoredReplay,
    StoredRow,
    StoreOptions,
    StoreStats,
)

__all__ = [
    "Appended",
    "DuplicateEvent",
    "EventStore",
    "NamespaceStats",
    "ReplayResult",
    "Retention",
    "StoreOptions",
    "StoreStats",
    "StoredEvent",
    "StoredReplay",
    "StoredRow",
    "open_store",
    "validate_store_url",
]


def open_store(
    url: str,
    options: StoreOptions | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> EventStore:
    """A store for ``url``, not yet started (``await store.start()`` or ``async with``).

    ``clock`` (seconds, wall time) is injectable so tests drive TTL without sleeping.
    """
    options = options or StoreOptions()
    validate_store_url(url)
    if url == MEMORY_URL:
        from .memory import MemoryEventStore

        return MemoryEventStore(options, clock=clock)
    if url.startswith(SQLITE_PREFIX):
        from .sqlite import SqliteEventStore

        return SqliteEventStore(url[len(SQLITE_PREFIX) :], options, clock=clock)
    if url.startswith(POSTGRES_SCHEMES):
        # By name, as Redis below: the driver is the optional extra lockerbus[postgres].
        postgres_backend = importlib.import_module(".postgres", __name__)
        pg_store: EventStore = postgres_backend.PostgresEventStore(url, options, clock=clock)
        return pg_store
    # By name: the Redis backend (and its driver) is an optional extra that
    # type-checking must not require.
    redis_backend = importlib.import_module(".redis", __name__)
    store: EventStore = redis_backend.RedisEventStore(url, options, clock=clock)
    return store
