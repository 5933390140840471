"""Who is connected where, and the synchronous broadcast to them.

A broadcast encodes the event once and queues it for every recipient with no
await, so events reach each connection in the order they were stored.  Who
may receive it is decided here from the event's tags (contract §3, §10):
rooms and namespaces keep an :class:`~lockerbus.views.Audience` each, so a
recipient check is a few dictionary look-ups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from ..events import NAMESPACES, Event
from ..log import server_logger
from ..metrics import Metrics
from ..store import StoredEvent
from ..tags import tags_of
from ..views import Audience
from .connection import Connection

Readers = Audience[str, Connection]


class Sender(Protocol):
    """The transport: encodes once, queues per socket, in call order (lockerbus.fanout).

    A sender may also offer ``encode_replayed(namespace, events)`` (stored events'
    messages, marked replayed, from their bytes: one item for ``send_many``) and
    ``send_many(eio_sid, outs)`` (several messages, in as few writes as it can);
    the Hub falls back to ``encode`` and ``send`` for one that does not.
    ``settle(eio_sid)``, a coroutine, lets the connection's transport become
    ready for one write (a few loop turns).
    """

    def encode(self, namespace: str, name: str, payload: Any) -> Any: ...

    def send(self, eio_sid: str, out: Any) -> bool | None:
        """True: sent or queued; False: over its limits (dropped as a slow consumer);
        None: the connection is already gone or closing."""

    def abort(self, eio_sid: str) -> bool: ...


class Broadcaster(Protocol):
    """Hands a stored event to its recipients: the Hub, or the cluster relay in front of it."""

    def broadcast(self, event: Event, accepted_at: float) -> None: ...


class Hub:
    """Connections and rooms per namespace; :meth:`broadcast` never awaits."""

    def __init__(self, sender: Sender, metrics: Metrics, max_pending: int) -> None:
        self._sender = sender
        self._metrics = metrics
        self._max_pending = max_pending
        self.connections: dict[str, dict[str, Connection]] = {ns: {} for ns in NAMESPACES}
        #: room members in join order (a kiosk's newest connection is the last)
        self.rooms: dict[str, dict[str, dict[str, Connection]]] = {ns: {} for ns in NAMESPACES}
        #: the same members, indexed by their scope: who may read a room's event
        self._room_readers: dict[str, dict[str, Readers]] = {ns: {} for ns in NAMESPACES}
        #: every connection, indexed by scope AND auth.filter: the fallback's recipients
        self._fallback: dict[str, Readers] = {ns: Audience() for ns in NAMESPACES}
        self.overflowed: list[Connection] = []
        self._wake: asyncio.Event | None = None
        self._per_principal: dict[str, int] = {}
        self._encode_replayed: Callable[[str, Sequence[StoredEvent]], Any] | None = getattr(
            sender, "encode_replayed", None
        )
        self._send_many: Callable[[str, list[Any]], bool | None] = getattr(
            sender, "send_many", self._send_one_by_one
        )
        self._settle: Callable[[str], Awaitable[None]] | None = getattr(sender, "settle", None)

    def add(self, conn: Connection) -> None:
        self.connections[conn.namespace][conn.sid] = conn
        self._fallback[conn.namespace].add(conn.sid, conn, conn.views.connect)
        sub = conn.principal.sub
        self._per_principal[sub] = self._per_principal.get(sub, 0) + 1
        self._metrics.connections.labels(conn.namespace).set(len(self.connections[conn.namespace]))

    def remove(self, conn: Connection) -> None:
        if self.connections[conn.namespace].pop(conn.sid, None) is None:
            return
        self._fallback[conn.namespace].discard(conn.sid)
        conn.mark_gone()
        sub = conn.principal.sub
        left = self._per_principal.get(sub, 1) - 1
        if left:
            self._per_principal[sub] = left
        else:
            self._per_principal.pop(sub, None)
        for room in list(conn.rooms):
            self.leave(conn, room)
        self._metrics.connections.labels(conn.namespace).set(len(self.connections[conn.namespace]))

    def join(self, conn: Connection, room: str) -> None:
        ns = conn.namespace
        self.rooms[ns].setdefault(room, {})[conn.sid] = conn
        self._room_readers[ns].setdefault(room, Audience()).add(conn.sid, conn, conn.views.reach)
        if room not in conn.rooms:
            conn.rooms = (*conn.rooms, room)

    def leave(self, conn: Connection, room: str) -> None:
        """Leave ``room`` and forget its subscribe filter."""
        ns = conn.namespace
        members = self.rooms[ns].get(room)
        if members is not None:
            members.pop(conn.sid, None)
            if not members:
                del self.rooms[ns][room]
        readers = self._room_readers[ns].get(room)
        if readers is not None:
            readers.discard(conn.sid)
            if not len(readers):
                del self._room_readers[ns][room]
        if room in conn.rooms:
            conn.rooms = tuple(r for r in conn.rooms if r != room)
        conn.views.unsubscribe(room)

    def get(self, namespace: str, sid: str) -> Connection | None:
        return self.connections.get(namespace, {}).get(sid)

    def principal_count(self, sub: str) -> int:
        """Connections ``sub`` holds on this instance, every namespace together."""
        return self._per_principal.get(sub, 0)

    def counts(self) -> dict[str, int]:
        """Open connections per namespace."""
        return {ns: len(conns) for ns, conns in self.connections.items()}

    def broadcast(self, event: Event, accepted_at: float) -> None:
        """Queue ``event`` for its room's members whose views match it, or, when no
        member's scope matches (contract §3), for every connection of the
        namespace whose scope and ``auth.filter`` match."""
        namespace, room = event["namespace"], event["room"]
        tags = tags_of(event)
        out: list[Any] = []  # the encoded packet, made once on first need
        in_room = False
        readers = self._room_readers[namespace].get(room)
        if readers is not None:
            for conn in readers.readers(tags):
                in_room = True  # a member may read it: no fallback, even if its filter says no
                view = conn.views.rooms.get(room)
                if view is None or view.matches(tags):
                    self._deliver(conn, event, out)
        if not in_room:
            fallback = False
            for conn in self._fallback[namespace].readers(tags):
                fallback = True
                self._deliver(conn, event, out)
            if fallback:
                self._metrics.fallbacks.labels(namespace).inc()
        self._metrics.observe_broadcast(time.perf_counter() - accepted_at)

    def _deliver(self, conn: Connection, event: Event, out: list[Any]) -> None:
        """Send (or hold, while it catches up) one event the checks let through."""
        if conn.replaying:
            if conn.hold(event) > self._max_pending:
                self._overflow(conn)
            return
        seq = event["seq"]
        if seq <= conn.last_seq:
            return  # already sent, or covered by its replay (an instance can lag its store)
        if not out:
            out.append(self._sender.encode(event["namespace"], event["type"], event))
        sent = self._sender.send(conn.eio_sid, out[0])
        if sent:
            conn.last_seq = seq
        elif sent is False:
            self._overflow(conn)

    def send(self, conn: Connection, name: str, payload: Any) -> None:
        """Queue one event for one connection."""
        out = self._sender.encode(conn.namespace, name, payload)
        if self._sender.send(conn.eio_sid, out) is False:
            self._overflow(conn)

    def encode(self, conn: Connection, name: str, payload: Any) -> Any:
        """One message for ``conn`` (to go in :meth:`send_all`)."""
        return self._sender.encode(conn.namespace, name, payload)

    def encode_replayed(self, conn: Connection, events: Sequence[StoredEvent]) -> list[Any]:
        """The messages replaying ``events`` to ``conn``, built from their stored bytes."""
        if not events:
            return []
        if self._encode_replayed is not None:
            return [self._encode_replayed(conn.namespace, events)]
        encode, ns = self._sender.encode, conn.namespace
        return [encode(ns, e.type, {**orjson.loads(e.json), "replayed": True}) for e in events]

    async def settle(self, conn: Connection) -> None:
        """Give the transport a moment (a few loop turns) to be ready for one write."""
        if self._settle is not None:
            await self._settle(conn.eio_sid)

    def send_all(self, conn: Connection, outs: list[Any]) -> None:
        """Queue several messages for one connection, in order, in as few writes as the
        transport can (a replay and what follows it)."""
        if self._send_many(conn.eio_sid, outs) is False:
            self._overflow(conn)

    def _send_one_by_one(self, eio_sid: str, outs: list[Any]) -> bool | None:
        answers = [self._sender.send(eio_sid, out) for out in outs]
        return False if False in answers else None if None in answers else True

    def _overflow(self, conn: Connection) -> None:
        """A connection that cannot keep up is dropped; it can reconnect and replay."""
        if conn not in self.overflowed:
            self.overflowed.append(conn)
            if self._wake is not None:
                self._wake.set()

    async def reap_overflowed(self, disconnect: Callable[[Connection], Awaitable[None]]) -> None:
        """Background task: disconnect slow consumers outside the broadcast path."""
        self._wake = asyncio.Event()
        while True:
            await self._wake.wait()
            self._wake.clear()
            dropped, self.overflowed = self.overflowed, []
            for conn in dropped:
                server_logger.warning(
                    "slow consumer dropped sid=%s namespace=%s sub=%s",
                    conn.sid,
                    conn.namespace,
                    conn.principal.sub,
                )
                self._metrics.slow_consumers.labels(conn.namespace).inc()
                await disconnect(conn)
                # its Engine.IO writer may be stuck on the socket: free it too
                self._sender.abort(conn.eio_sid)
