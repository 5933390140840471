"""Event stores, chosen by URL: ``memory``, ``sqlite:///path.db``, ``redis://host:port/db``.

Each backend's module (and its driver) is imported only when its URL is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .base import EventStore, NamespaceStats, ReplayResult, StoreStats

__all__ = [
    "EventStore",
    "NamespaceStats",
    "ReplayResult",
    "StoreOptions",
    "StoreStats",
    "open_store",
    "validate_store_url",
]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What every backend is configured with (contract §1 settings)."""

    max_events: int = 10_000
    ttl_seconds: float = 24 * 3600
    cleanup_interval_seconds: float = 30 * 60


def validate_store_url(url: str) -> str:
    """Check a store URL's form; raises :class:`ConfigError` naming ``store``."""
    if url == "memory":
        return url
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return url
    raise ConfigError("store", f"{url!r} is not memory, sqlite:///path.db or redis://host:port/db")


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
    if url == "memory":
        from .memory import MemoryEventStore

        return MemoryEventStore(options, clock=clock)
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteEventStore

        return SqliteEventStore(url[len("sqlite:///") :], options, clock=clock)
    # By name: the Redis backend (and its driver) is an optional extra that
    # type-checking must not require.
    redis_backend = importlib.import_module(".redis", __name__)
    store: EventStore = redis_backend.RedisEventStore(url, options, clock=clock)
    return store
