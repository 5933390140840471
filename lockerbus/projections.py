"""Current state for the routes: every locker's latest state, open help requests.

The seed's "event sourcing" enhancement, kept by the store itself (contract
§11): each store changes its state in the same atomic step as the append of
the event that changes it (:mod:`lockerbus.store.state`), so the state never
shrinks when history expires or is evicted, survives a restart with a
durable store, and is the same from every instance.  A snapshot's
``last_seq``/``epoch`` are the namespace position it reflects, read with it:
a client resuming from that seq misses nothing and gets nothing twice.

This module only shapes the store's answers for ``/api/lockers``,
``/api/help`` and the tags of ``help_status_updated``.
"""

from __future__ import annotations

from typing import Any

from .store import EventStore
from .store.state import HELP_FIELDS

__all__ = ["HELP_FIELDS", "Projection"]


class Projection:
    """The board's reads of the store's durable state."""

    async def lockers_snapshot(self, store: EventStore) -> dict[str, Any]:
        """``{lockers, last_seq, epoch}`` of contract §8 and §11."""
        snapshot = await store.read_state("lockers")
        return {"lockers": snapshot.entries, "last_seq": snapshot.last_seq, "epoch": snapshot.epoch}

    async def help_snapshot(self, store: EventStore) -> dict[str, Any]:
        """``{help_requests, last_seq, epoch}``: the requests not resolved, by id."""
        snapshot = await store.read_state("help")
        return {
            "help_requests": snapshot.entries,
            "last_seq": snapshot.last_seq,
            "epoch": snapshot.epoch,
        }

    async def help_kiosk(self, store: EventStore, help_id: int) -> str | None:
        """The kiosk of open help request ``help_id`` (None: unknown or resolved).

        Tags ``help_status_updated`` (contract §10).
        """
        for request in (await store.read_state("help")).entries:
            if request.get("id") == help_id:
                kiosk = request.get("kiosk_id")
                return kiosk if isinstance(kiosk, str) else None
        return None
