"""replay -> replay_complete -> live, for a connecting client and a joined room.

The ordering guarantee lives here, and ``tests/test_delivery.py`` checks it:
a connection is marked ``replaying`` before the connect handler's first
await, so broadcasts meanwhile are held in its ``pending`` list; once the
store has answered, the replayed events, ``replay_complete`` and the held
events above the replay's last seq are queued with no await in between.  So a
client sees live events strictly after its replay, and never one seq twice.

Scopes and filters (contract §10): the replay keeps the events the
connection's connect view matches (``count`` is the number sent, ``last_seq``
the namespace position it covered, ``recovered`` decided by the store before
any filtering), and a gap-fill keeps those its room view matches; events held
meanwhile passed the hub's checks when they were held.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from ..errors import StoreUnavailableError
from ..log import server_logger
from ..metrics import Metrics
from ..store import EventStore, StoredEvent, StoredReplay
from ..store.codec import as_stored_replay
from .connection import REPLAYED, Connection
from .hub import Hub
from .tasks import Background

#: closes one client's connection to a namespace (sid, namespace)
Disconnect = Callable[[str, str], Coroutine[Any, Any, None]]


class CatchUp:
    """Brings a connection up to date from the store, then lets it go live."""

    def __init__(
        self,
        hub: Hub,
        store: EventStore,
        metrics: Metrics,
        *,
        disconnect: Disconnect,
        tasks: Background,
        replay_limit: int,
    ) -> None:
        self._hub = hub
        self._store = store
        self._metrics = metrics
        self._disconnect = disconnect
        self._tasks = tasks
        self._limit = replay_limit

    async def replay(self, conn: Connection) -> None:
        """Send the connect replay and ``replay_complete``, then go live."""
        async with conn.catching_up:
            await self._replay_locked(conn)

    async def _replay_locked(self, conn: Connection) -> None:
        request, ns = conn.replay, conn.namespace
        conn.replay = REPLAYED  # not needed again: an idle connection need not keep it
        try:
            if request.mode == "none":
                events: Sequence[StoredEvent] = []
                last_seq = await self._store.last_seq(ns)
                epoch, recovered = self._store.epoch, None
            else:
                result = await self._replay_stored(
                    ns,
                    after_seq=request.after_seq,
                    epoch=request.epoch,
                    since=request.since,
                    limit=self._limit,
                )
                events, last_seq = result.events, result.last_seq
                epoch, recovered = result.epoch, result.recovered
        except StoreUnavailableError as exc:
            server_logger.warning("replay failed sid=%s: %s", conn.sid, exc.message)
            self._hub.remove(conn)
            await self._disconnect(conn.sid, ns)
            return
        await self._hub.settle(conn)  # live events meanwhile are held: still replaying
        if self._hub.get(ns, conn.sid) is not conn:
            return  # gone while the store answered
        # From here to the end: no await, so no live event can slip in between.
        # The replay, replay_complete and what was held meanwhile go in one send_all:
        # one transport write where the connection's writer is idle.
        sent = conn.views.replay_stored(events)
        outs = self._hub.encode_replayed(conn, sent)
        if request.mode != "none":
            self._metrics.replay("connect", len(sent))
        complete = {
            "namespace": ns,
            "count": len(sent),
            "last_seq": last_seq,
            "epoch": epoch,
            "recovered": recovered,
        }
        outs.append(self._hub.encode(conn, "replay_complete", complete))
        self._hub.send_all(conn, self._release(conn, last_seq, outs))

    def go_live(self, conn: Connection, covered_seq: int) -> None:
        """Release the events held during a catch-up that it did not cover; no await."""
        self._hub.send_all(conn, self._release(conn, covered_seq, []))

    def _release(self, conn: Connection, covered_seq: int, outs: list[Any]) -> list[Any]:
        """Append the held events above ``covered_seq`` to ``outs``; the connection is live."""
        conn.last_seq = max(conn.last_seq, covered_seq)
        pending, conn.pending = conn.pending, None
        conn.replaying = False
        for event in pending or ():
            if event["seq"] > conn.last_seq:
                outs.append(self._hub.encode(conn, event["type"], event))
                conn.last_seq = event["seq"]
        return outs

    async def _replay_stored(
        self,
        namespace: str,
        *,
        after_seq: int | None,
        epoch: str | None,
        since: datetime | None,
        limit: int,
    ) -> StoredReplay:
        """The store's replay as stored bytes (a store without ``replay_stored``: encoded)."""
        reads = getattr(self._store, "replay_stored", None)
        if reads is not None:
            stored: StoredReplay = await reads(
                namespace, after_seq=after_seq, epoch=epoch, since=since, limit=limit
            )
            return stored
        result = await self._store.replay(
            namespace, after_seq=after_seq, epoch=epoch, since=since, limit=limit
        )
        return as_stored_replay(result)

    async def _page_stored(self, namespace: str, after_seq: int) -> StoredReplay:
        """The store's page after ``after_seq`` as stored bytes."""
        reads = getattr(self._store, "page_stored", None)
        if reads is not None:
            stored: StoredReplay = await reads(namespace, after_seq=after_seq, limit=self._limit)
            return stored
        page = await self._store.page(namespace, after_seq=after_seq, limit=self._limit)
        return as_stored_replay(page)

    async def join(self, conn: Connection, room: str, raw_filter: Any = None) -> None:
        """Join ``room`` and send what it was sent since this connection's last event.

        Between connecting and subscribing, events to a room with members skip
        the connection; the gap is filled from the store before the ack, so a
        subscriber's stream has no hole.  ``raw_filter`` is the subscribe
        filter (bad_request if malformed): it narrows the gap-fill and the
        room's live deliveries; subscribing again only replaces it.
        """
        if room in conn.rooms:
            conn.views.subscribe(room, raw_filter)
            return
        async with conn.catching_up:
            if room in conn.rooms:  # joined while this waited for the lock
                conn.views.subscribe(room, raw_filter)
                return
            conn.views.subscribe(room, raw_filter)
            self._hub.join(conn, room)
            conn.replaying = True
            try:
                page = await self._page_stored(conn.namespace, conn.last_seq)
            except StoreUnavailableError as exc:
                server_logger.warning("gap fill failed sid=%s: %s", conn.sid, exc.message)
                self.go_live(conn, conn.last_seq)
                return
            if self._hub.get(conn.namespace, conn.sid) is not conn:
                return
            views, after = conn.views, conn.last_seq
            missed = [
                e
                for e in page.events
                if e.seq > after and e.room == room and views.room(room, e.tags)
            ]
            self._metrics.replay("subscribe", len(missed))
            covered = page.last_seq if not page.has_more else page.events[-1].seq
            outs = self._hub.encode_replayed(conn, missed)
            self._hub.send_all(conn, self._release(conn, covered, outs))

    def resync(self, namespace: str) -> None:
        """Close every local connection of ``namespace``: its clients reconnect and replay.

        The cluster relay asks for it when live delivery could not stay gap-free.
        """
        for conn in list(self._hub.connections[namespace].values()):
            self._hub.remove(conn)
            self._tasks.spawn(self._disconnect(conn.sid, namespace))
