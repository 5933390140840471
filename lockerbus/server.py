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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import socketio

from .auth import Principal, check_subscribe_room, verify_token
from .bus import EventBus
from .commands import CommandService, KioskDisconnected, KioskOffline
from .config import Settings
from .errors import (
    BadRequestError,
    ForbiddenError,
    LockerbusError,
    StoreUnavailableError,
)
from .events import EVENTS_NS, KIOSK_ROOM_PREFIX, NAMESPACES
from .fanout import Sender, encode_event
from .limits import TokenBucket
from .log import server_logger
from .metrics import Metrics
from .service import Event, check_version, parse_since
from .store import EventStore

PUBLISH_KEYS: Final = frozenset({"type", "data", "room", "version"})


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
    #: the newest seq its replay covered: a store read can see an event whose
    #: append has not returned (so not been broadcast) yet; it must not come twice
    floor: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    bucket: TokenBucket | None = None


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
        conn.closed.set()
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
        for conn in recipients:
            if conn.replaying:
                conn.pending.append(event)
                if len(conn.pending) > self._max_pending:
                    self._overflow(conn)
            elif event["seq"] <= conn.floor:
                continue
            elif not self._sender.send(conn.eio_sid, pkt):
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
        conn.bucket = TokenBucket(gw.settings.rate_limit_per_second, gw.settings.rate_limit_burst)
        gw.hub.add(conn)
        if principal.role == "kiosk" and ns == EVENTS_NS:
            gw.hub.join(conn, KIOSK_ROOM_PREFIX + principal.sub)
        server_logger.info(
            "connected sid=%s namespace=%s sub=%s role=%s", sid, ns, principal.sub, principal.role
        )
        gw.spawn(gw.connection_event("connection", conn, environ))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self.gw.hub.get(self.namespace, sid)
        if conn is None:
            return
        self.gw.hub.remove(conn)
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
            self.gw.hub.join(conn, room)
        else:
            self.gw.hub.leave(conn, room)
        return {"ok": True}

    async def on_publish(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await self.gw.answer(self._publish, sid, payload)

    async def _publish(self, sid: str, payload: Any) -> dict[str, Any]:
        conn = self.gw.connection(self.namespace, sid)
        if not isinstance(payload, Mapping):
            raise BadRequestError("publish expects an object {type, data, room?}")
        unknown = set(payload) - PUBLISH_KEYS
        if unknown:
            raise BadRequestError(f"unknown publish fields: {', '.join(sorted(map(str, unknown)))}")
        if "version" in payload:
            check_version(payload["version"])
        event = await self.gw.bus.publish(
            payload.get("type"),
            payload.get("data"),
            principal=conn.principal,
            room=payload.get("room"),
            bucket=conn.bucket,
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
        self.sender = Sender(self.sio.eio, settings.max_send_queue)
        self.hub = Hub(
            self.sender,
            metrics,
            max_pending=settings.max_send_queue,
        )
        bus.broadcaster = self.hub
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.commands = CommandService(bus, self, timeout_seconds=settings.command_timeout_seconds)
        for ns in NAMESPACES:
            self.sio.register_namespace(LockerbusNamespace(ns, self))

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
            server_logger.warning("could not publish %s event: %s", event_type, exc.message)

    # -- commands (KioskLink) ---------------------------------------------------

    async def send_command(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any:
        """Send ``command`` to one connection of the kiosk (the newest) and await its ack."""
        members = self.hub.rooms[EVENTS_NS].get(KIOSK_ROOM_PREFIX + kiosk_id)
        if not members:
            raise KioskOffline(kiosk_id)
        conn = next(reversed(members.values()))
        call = asyncio.ensure_future(
            self.sio.call(
                "command", dict(command), to=conn.sid, namespace=EVENTS_NS, timeout=timeout_seconds
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

    # -- replay ---------------------------------------------------------------

    def established(self, namespace: str, sid: str) -> None:
        conn = self.hub.get(namespace, sid)
        if conn is not None:
            self.spawn(self._replay(conn))

    async def _replay(self, conn: Connection) -> None:
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
        pending, conn.pending = conn.pending, []
        conn.floor = last_seq
        conn.replaying = False
        for event in pending:
            if event["seq"] > last_seq:
                self.hub.send(conn, event["type"], event)

    async def stats(self) -> dict[str, Any]:
        """The figures of ``GET /api/stats``."""
        try:
            store: dict[str, Any] = dataclasses.asdict(await self.store.stats())
        except StoreUnavailableError as exc:
            store = {"error": exc.message}
        return {
            "connections": {ns: len(conns) for ns, conns in self.hub.connections.items()},
            "broadcast_latency_ms": self.metrics.latency.summary(),
            "fallback_broadcasts": dict(self.hub.fallbacks),
            "store": store,
            "errors": dict(self.metrics.errors),
        }

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self.spawn(self.hub.reap_overflowed(self.sio))

    async def close(self) -> None:
        """Disconnect every client so it reconnects elsewhere; stop background tasks."""
        if self._closed:
            return
        self._closed = True
        for ns, conns in self.hub.connections.items():
            for sid in list(conns):
                try:
                    await self.sio.disconnect(sid, namespace=ns)
                except Exception:
                    server_logger.debug("disconnect at shutdown failed sid=%s", sid)
        if self.sio.eio.sockets:
            await self.sio.eio.disconnect()  # close transports too, or aiohttp waits on them
        await self.sio.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _short(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


__all__ = ["Connection", "Hub", "LockerbusNamespace", "ReplayRequest", "SocketGateway"]
