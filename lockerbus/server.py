"""The Socket.IO side: namespaces, auth on connect, rooms, publish, replay.

Ordering is the point of this module.  A broadcast is synchronous: it encodes
the event once and queues it for every recipient with no await, so events
reach each connection in the order they were stored.  A connection that is
still being replayed to is marked before the connect handler's first await;
its live events are held in a per-connection buffer and released, above the
replay's last seq, right after ``replay_complete`` with no await in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Final

import socketio

from .auth import Principal, check_subscribe_room, verify_token
from .bus import EventBus
from .cluster import EVENT_PREFIX, ClusterRelay
from .commands import CommandService, KioskDisconnected, KioskOffline
from .config import Settings
from .errors import (
    BadRequestError,
    ForbiddenError,
    LockerbusError,
    StoreUnavailableError,
)
from .events import EVENTS_NS, KIOSK_ROOM_PREFIX, NAMESPACES, Event
from .fanout import Sender, encode_event
from .limits import TokenBucket
from .log import server_logger
from .metrics import Metrics
from .service import parse_since
from .store import EventStore

if TYPE_CHECKING:  # presence needs redis, an optional extra: imported only in cluster mode
    from .presence import Presence

ADMIN_UI_ORIGIN: Final = "https://admin.socket.io"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What a connecting client asked to be replayed (contract §6)."""

    mode: str  # "seq" | "since" | "none"
    after_seq: int | None = None
    epoch: str | None = None
    since: datetime | None = None


def parse_replay_request(auth: Mapping[str, Any], window_minutes: float) -> ReplayRequest:
    """Read ``last_seq``/``epoch``, ``since`` or ``replay: false`` from the auth object."""
    replay = auth.get("replay", True)
    if not isinstance(replay, bool):
        raise BadRequestError("auth.replay must be true or false")
    has_seq, has_since = "last_seq" in auth, "since" in auth
    if not replay:
        return ReplayRequest("none")
    if has_seq and has_since:
        raise BadRequestError("give auth.last_seq or auth.since, not both")
    if has_seq:
        last_seq = auth["last_seq"]
        if type(last_seq) is not int or last_seq < 0:
            raise BadRequestError("auth.last_seq must be an integer >= 0")
        epoch = auth.get("epoch")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > 128):
            raise BadRequestError("auth.epoch must be a string")
        return ReplayRequest("seq", after_seq=last_seq, epoch=epoch)
    if has_since:
        return ReplayRequest("since", since=parse_since(auth["since"], "auth.since"))
    since = datetime.now(UTC) - timedelta(minutes=window_minutes)
    return ReplayRequest("since", since=since)


@dataclass(eq=False, slots=True)
class Connection:
    """One client's connection to one namespace."""

    sid: str
    eio_sid: str
    namespace: str
    principal: Principal
    replay: ReplayRequest
    rooms: set[str] = field(default_factory=set)
    replaying: bool = True
    pending: list[Event] = field(default_factory=list)
    bucket: TokenBucket | None = None
    #: every event of the namespace up to here that was meant for this connection was sent
    last_seq: int = 0
    gone: bool = False
    # made on first use: a thousand idle connections should not carry them
    _closed: asyncio.Event | None = None
    _catching_up: asyncio.Lock | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is gone (a command waiting on its kiosk stops)."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.gone:
                self._closed.set()
        return self._closed

    @property
    def catching_up(self) -> asyncio.Lock:
        """Held while the connection is caught up (connect replay, subscribe gap-fill)."""
        if self._catching_up is None:
            self._catching_up = asyncio.Lock()
        return self._catching_up


class Hub:
    """Who is connected where, and the synchronous broadcast to them."""

    def __init__(self, sender: Sender, metrics: Metrics, max_pending: int) -> None:
        self._sender = sender
        self._metrics = metrics
        self._max_pending = max_pending
        self.connections: dict[str, dict[str, Connection]] = {ns: {} for ns in NAMESPACES}
        self.rooms: dict[str, dict[str, dict[str, Connection]]] = {ns: {} for ns in NAMESPACES}
        self.fallbacks: dict[str, int] = dict.fromkeys(NAMESPACES, 0)
        self.overflowed: list[Connection] = []
        self._wake: asyncio.Event | None = None
        self._per_principal: dict[str, int] = {}

    def add(self, conn: Connection) -> None:
        self.connections[conn.namespace][conn.sid] = conn
        sub = conn.principal.sub
        self._per_principal[sub] = self._per_principal.get(sub, 0) + 1
        self._metrics.connections.labels(conn.namespace).set(len(self.connections[conn.namespace]))

    def remove(self, conn: Connection) -> None:
        if self.connections[conn.namespace].pop(conn.sid, None) is None:
            return
        conn.gone = True
        if conn._closed is not None:
            conn._closed.set()
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
        self.rooms[conn.namespace].setdefault(room, {})[conn.sid] = conn
        conn.rooms.add(room)

    def leave(self, conn: Connection, room: str) -> None:
        members = self.rooms[conn.namespace].get(room)
        if members is not None:
            members.pop(conn.sid, None)
            if not members:
                del self.rooms[conn.namespace][room]
        conn.rooms.discard(room)

    def get(self, namespace: str, sid: str) -> Connection | None:
        return self.connections.get(namespace, {}).get(sid)

    def principal_count(self, sub: str) -> int:
        return sum(
            1
            for conns in self.connections.values()
            for c in conns.values()
            if c.principal.sub == sub
        )

    def broadcast(self, event: Event, accepted_at: float) -> None:
        """Queue ``event`` for its room, or the whole namespace when the room is empty."""
        namespace, room = event["namespace"], event["room"]
        members = self.rooms[namespace].get(room)
        if members:
            recipients = members.values()
        else:
            recipients = self.connections[namespace].values()
            if recipients:
                self.fallbacks[namespace] += 1
                self._metrics.fallbacks.labels(namespace).inc()
        pkt = encode_event(namespace, event["type"], event)
        seq = event["seq"]
        for conn in recipients:
            if conn.replaying:
                conn.pending.append(event)
                if len(conn.pending) > self._max_pending:
                    self._overflow(conn)
            elif seq <= conn.last_seq:
                continue  # already sent, or covered by its replay (an instance can lag its store)
            elif self._sender.send(conn.eio_sid, pkt):
                conn.last_seq = seq
            else:
                self._overflow(conn)
        self._metrics.observe_broadcast(time.perf_counter() - accepted_at)

    def send(self, conn: Connection, name: str, payload: Any) -> None:
        """Queue one event for one connection."""
        if not self._sender.send(conn.eio_sid, encode_event(conn.namespace, name, payload)):
            self._overflow(conn)

    def _overflow(self, conn: Connection) -> None:
        """A connection that cannot keep up is dropped; it can reconnect and replay."""
        if conn not in self.overflowed:
            self.overflowed.append(conn)
            if self._wake is not None:
                self._wake.set()

    async def reap_overflowed(self, sio: socketio.AsyncServer) -> None:
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
                await sio.disconnect(conn.sid, namespace=conn.namespace)
                # its Engine.IO writer may be stuck on the socket: free it too
                self._sender.abort(conn.eio_sid)


class LockerbusNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """One of /ws/lockers, /ws/help, /ws/events."""

    def __init__(self, namespace: str, gateway: SocketGateway) -> None:
        super().__init__(namespace)
        self.gw = gateway

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        if not isinstance(event, str):
            # python-socketio would fail on it with a traceback and never ack
            server_logger.info("event with a non-string name refused namespace=%s", self.namespace)
            error = BadRequestError("an event name must be a string")
            return {"ok": False, "error": error.to_wire()}
        return await super().trigger_event(event, *args)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        # No await before the decision and the "replaying" mark: see module docstring.
        gw, ns = self.gw, self.namespace
        try:
            if auth is not None and not isinstance(auth, Mapping):
                raise BadRequestError("auth must be an object: {token, ...}")
            auth = auth or {}
            principal = verify_token(gw.secret, auth.get("token"))
            replay = parse_replay_request(auth, gw.settings.replay_window_minutes)
            if gw.hub.principal_count(principal.sub) >= gw.settings.max_connections_per_principal:
                raise ForbiddenError(
                    f"too many connections for {principal.sub}: "
                    f"at most {gw.settings.max_connections_per_principal}"
                )
        except LockerbusError as exc:
            gw.metrics.refused.labels(exc.code).inc()
            server_logger.info("connection refused namespace=%s code=%s", ns, exc.code)
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_wire()) from None
        eio_sid = gw.sio.manager.eio_sid_from_sid(sid, ns)
        conn = Connection(sid, eio_sid, ns, principal, replay)
        gw.hub.add(conn)
        if principal.role == "kiosk" and ns == EVENTS_NS:
            gw.hub.join(conn, KIOSK_ROOM_PREFIX + principal.sub)
            if gw.presence is not None:  # before the connection is confirmed: commands find it
                await gw.presence.add(principal.sub, sid)
        server_logger.info(
            "connected sid=%s namespace=%s sub=%s role=%s", sid, ns, principal.sub, principal.role
        )
        gw.spawn(gw.connection_event("connection", conn, environ))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self.gw.hub.get(self.namespace, sid)
        if conn is None:
            return
        held_kiosk = KIOSK_ROOM_PREFIX + conn.principal.sub in conn.rooms
        self.gw.hub.remove(conn)
        if self.gw.presence is not None and held_kiosk:
            self.gw.spawn(self.gw.presence.remove(conn.principal.sub, sid))
        server_logger.info(
            "disconnected sid=%s namespace=%s reason=%s", sid, conn.namespace, reason
        )
        self.gw.spawn(self.gw.connection_event("disconnection", conn, None))

    async def on_subscribe(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await self.gw.answer(self._room_change, sid, payload, join=True)

    async def on_unsubscribe(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await self.gw.answer(self._room_change, sid, payload, join=False)

    async def _room_change(self, sid: str, payload: Any, *, join: bool) -> dict[str, Any]:
        conn = self.gw.connection(self.namespace, sid)
        if not isinstance(payload, Mapping):
            raise BadRequestError("expected {room}")
        room = check_subscribe_room(self.namespace, payload.get("room"))
        if join:
            await self.gw.join(conn, room)
        else:
            self.gw.hub.leave(conn, room)
        return {"ok": True}

    async def on_publish(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await self.gw.answer(self._publish, sid, payload)

    async def _publish(self, sid: str, payload: Any) -> dict[str, Any]:
        conn = self.gw.connection(self.namespace, sid)
        event = await self.gw.bus.publish_request(
            payload, principal=conn.principal, bucket=self.gw.bucket(conn)
        )
        return {"ok": True, "event": event}

    async def on_command(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await self.gw.answer(self._command, sid, payload)

    async def _command(self, sid: str, payload: Any) -> dict[str, Any]:
        conn = self.gw.connection(self.namespace, sid)
        if self.namespace != EVENTS_NS:
            raise BadRequestError(f"commands are issued on {EVENTS_NS}")
        event = await self.gw.commands.execute(conn.principal, payload)
        return {"ok": True, "event": event}


class LockerbusServer(socketio.AsyncServer):  # type: ignore[misc]
    """An AsyncServer that tells the gateway when a connection is established.

    python-socketio queues the CONNECT packet after the connect handler
    returns; the replay must follow it, so it starts from here.
    """

    gateway: SocketGateway

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # python-socketio logs a traceback for a frame it cannot decode (an
        # integer over 100 digits, JSON nested too deep, a bad packet type)
        # and drops it: an ack-waiting client would hang.  Close it instead.
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            server_logger.warning("closing eio_sid=%s: malformed packet: %.200s", eio_sid, exc)
            self.gateway.cut(eio_sid)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            self.gateway.established(namespace, sid)


class SocketGateway:
    """Builds the AsyncServer and its namespaces; owns replay and broadcast."""

    def __init__(
        self,
        settings: Settings,
        bus: EventBus,
        store: EventStore,
        metrics: Metrics,
        *,
        client_manager: Any = None,
    ) -> None:
        assert settings.secret is not None
        self.settings = settings
        self.secret: str = settings.secret
        self.bus = bus
        self.store = store
        self.metrics = metrics
        cors: Any = None
        if settings.cors_origins is not None:
            cors = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
        if settings.admin_ui and cors != "*":
            cors = [*(cors or []), ADMIN_UI_ORIGIN]
        kwargs: dict[str, Any] = {}
        if client_manager is not None:
            kwargs["client_manager"] = client_manager
        self.sio = LockerbusServer(
            async_mode="aiohttp",
            cors_allowed_origins=cors,
            http_compression=False,
            max_http_buffer_size=settings.max_event_bytes * 2 + 65536,
            **kwargs,
        )
        self.sio.gateway = self
        self.sender = Sender(self.sio.eio, settings.max_send_queue, settings.max_send_buffer_bytes)
        self.hub = Hub(
            self.sender,
            metrics,
            max_pending=settings.max_send_queue,
        )
        bus.broadcaster = self.hub
        self.relay: ClusterRelay | None = None  # set by app.py with a message queue
        self.presence: Presence | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.commands = CommandService(bus, self, timeout_seconds=settings.command_timeout_seconds)
        for ns in NAMESPACES:
            self.sio.register_namespace(LockerbusNamespace(ns, self))
        if settings.admin_ui:
            # the hosted Admin UI (admin.socket.io); production mode keeps its cost low
            self.sio.instrument(
                auth={"username": settings.admin_username, "password": settings.admin_password},
                mode="production",
                read_only=True,
            )

    # -- helpers used by the namespaces ------------------------------------

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cut(self, eio_sid: str) -> None:
        """Close one client's whole connection (every namespace on it), now."""
        if not self.sender.abort(eio_sid):
            self.spawn(self.sio.eio.disconnect(eio_sid))

    def bucket(self, conn: Connection) -> TokenBucket:
        """The connection's publish rate bucket, made on its first publish."""
        if conn.bucket is None:
            conn.bucket = TokenBucket(
                self.settings.rate_limit_per_second, self.settings.rate_limit_burst
            )
        return conn.bucket

    def connection(self, namespace: str, sid: str) -> Connection:
        conn = self.hub.get(namespace, sid)
        if conn is None:
            raise BadRequestError("not connected")
        return conn

    async def answer(self, handler: Any, sid: str, payload: Any, **kwargs: Any) -> dict[str, Any]:
        """Run a handler and turn any error into the contract's ``{ok: false, error}``."""
        try:
            result: dict[str, Any] = await handler(sid, payload, **kwargs)
        except LockerbusError as exc:
            return {"ok": False, "error": exc.to_wire()}
        except Exception:
            server_logger.exception("handler failed sid=%s", sid)
            return {"ok": False, "error": {"code": "internal_error", "message": "internal error"}}
        return result

    async def connection_event(
        self, event_type: str, conn: Connection, environ: Mapping[str, Any] | None
    ) -> None:
        """Publish a connection/disconnection event on /ws/events."""
        environ = environ or {}
        try:
            event = self.bus.service.create_connection_event(
                event_type,
                conn.sid,
                conn.namespace,
                len(self.hub.connections[conn.namespace]),
                user_id=conn.principal.sub,
                user_agent=_short(environ.get("HTTP_USER_AGENT")),
                ip_address=_short(environ.get("REMOTE_ADDR")),
            )
            await self.bus.emit(event)
        except LockerbusError as exc:
            level = logging.WARNING if self.bus.accepting else logging.DEBUG
            server_logger.log(level, "could not publish %s event: %s", event_type, exc.message)

    # -- commands (KioskLink) ---------------------------------------------------

    async def send_command(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any:
        """Send ``command`` to one connection of the kiosk (the newest) and await its ack."""
        members = self.hub.rooms[EVENTS_NS].get(KIOSK_ROOM_PREFIX + kiosk_id)
        if not members:
            return await self._send_remote_command(kiosk_id, command, timeout_seconds)
        conn = next(reversed(members.values()))
        call = asyncio.ensure_future(
            self.sio.call(
                "command",
                dict(command),
                to=conn.sid,
                namespace=EVENTS_NS,
                timeout=timeout_seconds,
                ignore_queue=True,
            )
        )
        gone = asyncio.ensure_future(conn.closed.wait())
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not call.done():
            call.cancel()
            raise KioskDisconnected(kiosk_id)
        try:
            return call.result()
        except socketio.exceptions.TimeoutError:
            raise TimeoutError from None
        except socketio.exceptions.DisconnectedError:
            raise KioskDisconnected(kiosk_id) from None

    async def _send_remote_command(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any:
        """A kiosk held by another instance: the message queue carries the command
        and its ack (python-socketio's cross-host callbacks)."""
        if self.presence is None:
            raise KioskOffline(kiosk_id)
        from .presence import PresenceError  # set only in cluster mode, where redis is installed

        try:
            holders = await self.presence.find(kiosk_id)
        except PresenceError as exc:
            server_logger.warning("command: cannot look kiosk %s up: %s", kiosk_id, exc)
            raise KioskOffline(kiosk_id) from None
        remote = [sid for host, sid in holders if host != self.presence.instance_id]
        if not remote:
            raise KioskOffline(kiosk_id)
        try:
            return await self.sio.call(
                "command",
                dict(command),
                to=remote[-1],
                namespace=EVENTS_NS,
                timeout=timeout_seconds,
            )
        except socketio.exceptions.TimeoutError:
            raise TimeoutError from None

    def resync(self, namespace: str) -> None:
        """Close every local connection of ``namespace``: its clients reconnect and replay.

        The cluster relay asks for it when live delivery could not stay gap-free.
        """
        for conn in list(self.hub.connections[namespace].values()):
            self.hub.remove(conn)
            self.spawn(self.sio.disconnect(conn.sid, namespace=namespace))

    # -- replay ---------------------------------------------------------------

    def established(self, namespace: str, sid: str) -> None:
        conn = self.hub.get(namespace, sid)
        if conn is not None:
            self.spawn(self._replay(conn))

    async def _replay(self, conn: Connection) -> None:
        async with conn.catching_up:
            await self._replay_locked(conn)

    async def _replay_locked(self, conn: Connection) -> None:
        request, ns = conn.replay, conn.namespace
        limit = self.settings.replay_buffer_size
        try:
            if request.mode == "none":
                events: list[Event] = []
                last_seq = await self.store.last_seq(ns)
                epoch, recovered = self.store.epoch, None
            else:
                result = await self.store.replay(
                    ns,
                    after_seq=request.after_seq,
                    epoch=request.epoch,
                    since=request.since,
                    limit=limit,
                )
                events, last_seq = result.events, result.last_seq
                epoch, recovered = result.epoch, result.recovered
        except StoreUnavailableError as exc:
            server_logger.warning("replay failed sid=%s: %s", conn.sid, exc.message)
            self.hub.remove(conn)
            await self.sio.disconnect(conn.sid, namespace=ns)
            return
        if self.hub.get(ns, conn.sid) is not conn:
            return  # gone while the store answered
        # From here to the end: no await, so no live event can slip in between.
        for event in events:
            self.hub.send(conn, event["type"], {**event, "replayed": True})
        self.metrics.replayed.inc(len(events))
        self.hub.send(
            conn,
            "replay_complete",
            {
                "namespace": ns,
                "count": len(events),
                "last_seq": last_seq,
                "epoch": epoch,
                "recovered": recovered,
            },
        )
        self._go_live(conn, last_seq)

    def _go_live(self, conn: Connection, covered_seq: int) -> None:
        """Release the events held during a catch-up that it did not cover; no await."""
        conn.last_seq = max(conn.last_seq, covered_seq)
        pending, conn.pending = conn.pending, []
        conn.replaying = False
        for event in pending:
            if event["seq"] > conn.last_seq:
                self.hub.send(conn, event["type"], event)
                conn.last_seq = event["seq"]

    async def join(self, conn: Connection, room: str) -> None:
        """Join ``room`` and send what it was sent since this connection's last event.

        Between connecting and subscribing, events to a room with members skip
        the connection; the gap is filled from the store before the ack, so a
        subscriber's stream has no hole.
        """
        if room in conn.rooms:
            return
        async with conn.catching_up:
            self.hub.join(conn, room)
            conn.replaying = True
            try:
                page = await self.store.page(
                    conn.namespace,
                    after_seq=conn.last_seq,
                    limit=self.settings.replay_buffer_size,
                )
            except StoreUnavailableError as exc:
                server_logger.warning("gap fill failed sid=%s: %s", conn.sid, exc.message)
                self._go_live(conn, conn.last_seq)
                return
            if self.hub.get(conn.namespace, conn.sid) is not conn:
                return
            missed = [e for e in page.events if e["seq"] > conn.last_seq and e["room"] == room]
            for event in missed:
                self.hub.send(conn, event["type"], {**event, "replayed": True})
            self.metrics.replayed.inc(len(missed))
            self._go_live(conn, page.last_seq if not page.has_more else page.events[-1]["seq"])

    async def stats(self) -> dict[str, Any]:
        """The figures of ``GET /api/stats``."""
        try:
            store: dict[str, Any] = dataclasses.asdict(await self.store.stats())
        except StoreUnavailableError as exc:
            store = {"error": exc.message}
        connections = {ns: len(conns) for ns, conns in self.hub.connections.items()}
        stats: dict[str, Any] = {
            "connections": connections,
            "broadcast_latency_ms": self.metrics.latency.summary(),
            "fallback_broadcasts": dict(self.hub.fallbacks),
            "store": store,
            "errors": dict(self.metrics.errors),
            "commands": dict(self.commands.outcomes),
        }
        if self.presence is not None and self.relay is not None:
            stats["instance"] = self.presence.instance_id
            stats["scope"] = {
                "connections": "instance",
                "broadcast_latency_ms": "instance",
                "fallback_broadcasts": "instance",
                "errors": "instance",
                "store": "cluster",
                "cluster": "cluster",
            }
            cluster: dict[str, Any] = {"relay": self.relay.stats()}
            try:
                instances = await self.presence.instances()
                cluster["instances"] = instances
                cluster["connections"] = {
                    ns: sum(i.get("connections", {}).get(ns, 0) for i in instances.values())
                    for ns in connections
                }
            except Exception as exc:  # Redis down: the per-instance figures still stand
                cluster["error"] = str(exc)
            stats["cluster"] = cluster
        return stats

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self.hub.reap_overflowed(self.sio))
        if self.relay is not None:
            await self.relay.start()
            # python-socketio starts the manager's listener at the first client
            # connection; an instance must hear the cluster from the start.
            if not getattr(self.sio, "manager_initialized", True):
                self.sio.manager_initialized = True
                self.sio.manager.initialize()
            self.spawn(self.relay.run())
        if self.presence is not None:
            hub = self.hub
            self.spawn(self.presence.run(lambda: {ns: len(c) for ns, c in hub.connections.items()}))

    async def close(self) -> None:
        """Disconnect every client so it reconnects elsewhere; stop background tasks."""
        if self._closed:
            return
        self._closed = True
        if self.sio.eio.sockets:
            # closing the transports disconnects every namespace too; closing
            # namespaces one by one first leaves clients half-closed for seconds
            await self.sio.eio.disconnect()
        await self.sio.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.presence is not None:
            await self.presence.close()


def _short(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


# -- several instances -----------------------------------------------------------

TESTED_SOCKETIO: Final = ("5.",)
READ_SECONDS: Final = 1.0  # one pub/sub read waits at most this long
MAX_INSTANT_READS: Final = 50  # empty reads in a row that returned at once: a dead socket
RECONNECT_FIRST_SECONDS: Final = 0.25
RECONNECT_MAX_SECONDS: Final = 4.0
CLOSE_SECONDS: Final = 1.0
NOT_SUBSCRIBED: Final = "pub/sub not subscribed yet"


class ClusterRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, whose channel also carries the store's events.

    The Redis store publishes each appended event on this channel; they are
    taken out of the stream here and handed to the :class:`ClusterRelay` in
    the order received, and everything else (cross-host acks, disconnects)
    goes on to python-socketio.  ``alive``/``ping``/``restart`` let the relay
    notice a listener that died or went deaf and start it again; they touch
    python-socketio internals (``thread``, ``_thread``, ``pubsub``), checked
    against the versions this was tested with.
    """

    PING: Final = "lockerbus_ping"

    def __init__(self, url: str, *, channel: str) -> None:
        from .redisopts import client_options  # redis: imported only in cluster mode

        super().__init__(url, channel=channel, redis_options=client_options())
        self.relay: ClusterRelay | None = None
        self.failure: str | None = NOT_SUBSCRIBED
        self._internals = version("python-socketio").startswith(TESTED_SOCKETIO) and all(
            hasattr(self, name) for name in ("_thread", "_publish", "_listen")
        )
        if not self._internals:
            server_logger.warning(
                "python-socketio %s is untested here: a dead pub/sub listener is not restarted",
                version("python-socketio"),
            )

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            if isinstance(message, bytes) and message.startswith(EVENT_PREFIX):
                if self.relay is not None:
                    await self.relay.receive(message)
                continue
            if isinstance(message, bytes) and self.PING.encode() in message[:40]:
                data = self.json.loads(message)
                if data.get("host_id") == self.host_id and self.relay is not None:
                    self.relay.pong(int(data.get("token", 0)))
                continue
            yield message

    # -- partition-proof listening (issue 20) ------------------------------------

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        """Replaces python-socketio's listener loop: every read is bounded, so no
        loop can wait forever on a dead connection or spin on one; a failure is
        recorded (``problem``, /readyz) and the subscription made again with backoff.
        Yields raw pub/sub messages; python-socketio's ``_listen`` filters them."""
        delay = RECONNECT_FIRST_SECONDS
        while True:
            try:
                async for message in self._subscription():
                    delay = RECONNECT_FIRST_SECONDS
                    yield message
            except Exception as exc:
                failure = f"pub/sub {self.redis_url}: {exc or type(exc).__name__}"
                if failure != self.failure:
                    server_logger.error("cluster: %s; subscribing again", failure)
                self.failure = failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _subscription(self) -> AsyncIterator[Any]:
        """One subscription on one connection, read in bounded steps until it fails."""
        if self.redis is None:
            self._redis_connect()  # the client (and pool) python-socketio publishes with
        pubsub = self.pubsub = self.redis.pubsub()
        loop = asyncio.get_running_loop()
        try:
            await pubsub.subscribe(self.channel)
            instant = 0
            while True:
                began = loop.time()
                message = await pubsub.get_message(timeout=READ_SECONDS)
                if message is None:
                    # A dead socket can make every read return at once: redis-py
                    # <8.2 took ETIMEDOUT for "no message yet" and spun here.
                    instant = instant + 1 if loop.time() - began < READ_SECONDS / 2 else 0
                    if instant >= MAX_INSTANT_READS:
                        raise ConnectionError("pub/sub reads return at once: connection dead")
                    continue
                instant = 0
                if message.get("type") == "subscribe":
                    if self.failure not in (None, NOT_SUBSCRIBED):
                        server_logger.warning("cluster: pub/sub subscribed again")
                    self.failure = None  # Redis confirmed: the channel is heard again
                    continue
                yield message
        finally:
            await _close_quietly(pubsub)

    def problem(self) -> str | None:
        """Why this instance cannot hear the cluster now, or None."""
        if not self.alive():
            return "pub/sub listener stopped"
        return self.failure

    def alive(self) -> bool:
        """Whether the listener task is still running."""
        thread = getattr(self, "thread", None)
        return thread is None or not thread.done()

    async def ping(self, token: int) -> None:
        """Publish a ping this instance's own listener should hear."""
        await self._publish({"method": self.PING, "host_id": self.host_id, "token": token})

    def restart(self) -> None:
        """Drop the listener and its subscription; start a fresh one now."""
        if not self._internals or self.server is None:
            return
        thread, pubsub = getattr(self, "thread", None), getattr(self, "pubsub", None)
        if thread is not None:
            thread.cancel()
        if pubsub is not None:
            self.server.start_background_task(_close_quietly, pubsub)
        self.thread = self.server.start_background_task(self._thread)


async def _close_quietly(pubsub: Any) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):  # over a cut link, closing can hang
            await pubsub.aclose()
    except Exception:
        server_logger.debug("closing a dropped pub/sub connection failed")


__all__ = [
    "ClusterRedisManager",
    "Connection",
    "Hub",
    "LockerbusNamespace",
    "ReplayRequest",
    "SocketGateway",
]
