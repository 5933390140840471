"""Current state from the event log: every locker's latest state, open help requests.

The seed's "event sourcing" enhancement.  The store is the truth; this is a
cache of it, rebuilt by paging the store oldest-first at start and kept
current two ways:

* :meth:`Projection.apply` is called by the bus right after an event is
  stored (synchronously, in seq order, with no await), so a snapshot taken
  in the same process sees every event it accepted;
* :meth:`Projection.catch_up` pages the store from the last applied seq
  before a snapshot is answered, so events stored by another instance (or
  any the hook missed) are folded in too.

``apply`` only takes the next seq; anything else waits for ``catch_up``.  So
the projection of a namespace always reflects exactly the events up to its
``last_seq`` -- which is what a client needs to resume live from that seq
with neither a gap nor a double (contract §8).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import StoreUnavailableError
from .events import HELP_NS, LOCKERS_NS, Event
from .log import app_logger
from .store import EventStore

PAGE: Final = 1000
#: help_requested fields carried into the open-requests view
HELP_FIELDS: Final = (
    "id",
    "kiosk_id",
    "locker_no",
    "category",
    "note",
    "photo_url",
    "status",
    "created_at",
    "priority",
    "user_contact",
)


@dataclass(slots=True)
class _Stream:
    """What has been folded in for one namespace."""

    last_seq: int = 0
    epoch: str | None = None


@dataclass(slots=True)
class Projection:
    """Latest locker states and open help requests, with the seq they reflect."""

    lockers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    help: dict[int, dict[str, Any]] = field(default_factory=dict)
    streams: dict[str, _Stream] = field(
        default_factory=lambda: {LOCKERS_NS: _Stream(), HELP_NS: _Stream()}
    )
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- folding events in ------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold in a just-stored event if it is the next one of its namespace."""
        stream = self.streams.get(event.get("namespace", ""))
        if stream is None:
            return
        if event.get("epoch") != stream.epoch or event.get("seq") != stream.last_seq + 1:
            return  # not next in line: catch_up reads it from the store
        self._fold(stream, event)

    def _fold(self, stream: _Stream, event: Event) -> None:
        stream.last_seq = event["seq"]
        data = event.get("data") or {}
        if event["type"] == "locker_state_changed":
            self._locker(event, data)
        elif event["type"] == "help_requested":
            self._help_requested(event, data)
        elif event["type"] == "help_status_updated":
            self._help_updated(event, data)

    def _locker(self, event: Event, data: dict[str, Any]) -> None:
        key = (data["kioskId"], data["lockerId"])
        self.lockers[key] = {
            "lockerId": data["lockerId"],
            "kioskId": data["kioskId"],
            "state": data["newState"],
            "seq": event["seq"],
            "timestamp": event["timestamp"],
        }

    def _help_requested(self, event: Event, data: dict[str, Any]) -> None:
        if data.get("status") == "resolved":
            self.help.pop(data["id"], None)
            return
        request: dict[str, Any] = {name: data[name] for name in HELP_FIELDS if name in data}
        request.update(seq=event["seq"], timestamp=event["timestamp"])
        self.help[data["id"]] = request

    def _help_updated(self, event: Event, data: dict[str, Any]) -> None:
        request = self.help.get(data["id"])
        if data.get("new_status") == "resolved":
            self.help.pop(data["id"], None)
            return
        if request is None:
            return  # its help_requested has expired or was never seen: nothing to show
        request["status"] = data["new_status"]
        if "agent_id" in data:
            request["agent_id"] = data["agent_id"]
        request["updated_at"] = data["updated_at"]
        request["seq"], request["timestamp"] = event["seq"], event["timestamp"]

    # -- reading the store --------------------------------------------------------

    async def catch_up(self, store: EventStore) -> None:
        """Fold in every stored event after the last applied seq, oldest first."""
        async with self._lock:
            for namespace, stream in self.streams.items():
                await self._catch_up(store, namespace, stream)

    async def _catch_up(self, store: EventStore, namespace: str, stream: _Stream) -> None:
        if stream.epoch != store.epoch:
            # a new sequence space (first start, or the store was replaced): start over
            self._reset(namespace)
            stream.last_seq, stream.epoch = 0, store.epoch
        while True:
            page = await store.page(namespace, after_seq=stream.last_seq, limit=PAGE)
            for event in page.events:
                # apply() may have run meanwhile; events the store evicted leave holes
                if event["seq"] > stream.last_seq:
                    self._fold(stream, event)
            if not page.events or not page.has_more:
                # last_seq stays the last event folded, never the namespace's head:
                # an event appended while this page was read must not be skipped
                return

    def _reset(self, namespace: str) -> None:
        if namespace == LOCKERS_NS:
            self.lockers.clear()
        else:
            self.help.clear()

    async def rebuild(self, store: EventStore) -> None:
        """Build from the store at start (the store must be started).

        A store that cannot answer now does not stop start-up: every snapshot
        catches up first, so the projection fills in once the store is back.
        """
        try:
            await self.catch_up(store)
        except StoreUnavailableError as exc:
            app_logger.warning("projection not rebuilt yet: %s", exc.message)
            return
        app_logger.info(
            "projection rebuilt lockers=%d open_help=%d", len(self.lockers), len(self.help)
        )

    async def help_kiosk(self, store: EventStore, help_id: int) -> str | None:
        """The kiosk of open help request ``help_id`` (None: unknown or resolved).

        Tags ``help_status_updated`` (contract §10); the store is read only
        when the request is not known here yet (published on another instance).
        """
        request = self.help.get(help_id)
        if request is None:
            async with self._lock:
                await self._catch_up(store, HELP_NS, self.streams[HELP_NS])
            request = self.help.get(help_id)
        return None if request is None else request.get("kiosk_id")

    # -- snapshots -------------------------------------------------------------------

    async def lockers_snapshot(self, store: EventStore) -> dict[str, Any]:
        """``{lockers, last_seq, epoch}`` of contract §8, current as of the store."""
        await self.catch_up(store)
        # no await from here: the list and last_seq describe the same moment
        stream = self.streams[LOCKERS_NS]
        lockers = [dict(self.lockers[key]) for key in sorted(self.lockers)]
        return {"lockers": lockers, "last_seq": stream.last_seq, "epoch": stream.epoch}

    async def help_snapshot(self, store: EventStore) -> dict[str, Any]:
        """``{help_requests, last_seq, epoch}``: requests not yet resolved, by id."""
        await self.catch_up(store)
        stream = self.streams[HELP_NS]
        requests = [dict(self.help[key]) for key in sorted(self.help)]
        return {"help_requests": requests, "last_seq": stream.last_seq, "epoch": stream.epoch}
