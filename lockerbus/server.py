"""The Socket.IO edge: the namespaces' handlers and the AsyncServer they run on.

Everything a handler does beyond reading its arguments lives elsewhere and is
passed in (:class:`SocketServices`): the delivery core (lockerbus.delivery)
holds connections, rooms and the replay -> replay_complete -> live order, the
bus publishes, the command service runs commands.  The one ordering rule kept
here: the connect handler marks the connection ``replaying`` (by adding it to
the hub) before its first await, and the replay starts once python-socketio
has queued the CONNECT answer (:meth:`LockerbusServer.connection_established`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import engineio
import socketio

from .auth import TokenVerifier, check_subscribe_room
from .bus import EventBus
from .commands import CommandService
from .config import Settings
from .delivery import Background, CatchUp, Connection, Hub, parse_replay_request
from .errors import BadRequestError, ForbiddenError, LockerbusError
from .events import EVENTS_NS, KIOSK_ROOM_PREFIX, NAMESPACES
from .fanout import Sender, encode_ack
from .kiosks import KioskTracker
from .limits import RoleLimits, TokenBucket
from .log import server_logger
from .metrics import Metrics
from .sio_adapter import HookedAsyncServer
from .sio_rooms import IndexedAsyncManager
from .views import ConnectionViews

if TYPE_CHECKING:  # presence needs redis, an optional extra: imported only in cluster mode
    from .presence import Presence

ADMIN_UI_ORIGIN: Final = "https://admin.socket.io"

Handler = Callable[..., Awaitable[dict[str, Any]]]


async def answer(handler: Handler, sid: str, payload: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a handler and turn any error into the contract's ``{ok: false, error}``."""
    try:
        result: dict[str, Any] = await handler(sid, payload, **kwargs)
    except LockerbusError as exc:
        return {"ok": False, "error": exc.to_wire()}
    except Exception:
        server_logger.exception("handler failed sid=%s", sid)
        return {"ok": False, "error": {"code": "internal_error", "message": "internal error"}}
    return result


@dataclass(frozen=True, slots=True)
class SocketServices:
    """What the namespace handlers work with, built by app.py."""

    settings: Settings
    verifier: TokenVerifier
    #: publish rate buckets per principal, shared with HTTP (contract §2)
    limits: RoleLimits
    hub: Hub
    catchup: CatchUp
    bus: EventBus
    commands: CommandService
    metrics: Metrics
    tasks: Background
    presence: Presence | None = None
    #: kiosk presence and its announcements (contract §11); None: not tracked
    kiosks: KioskTracker | None = None


class LockerbusNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """One of /ws/lockers, /ws/help, /ws/events."""

    def __init__(self, namespace: str, services: SocketServices) -> None:
        super().__init__(namespace)
        self.svc = services

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        if not isinstance(event, str):
            # python-socketio would fail on it with a traceback and never ack
            server_logger.info("event with a non-string name refused namespace=%s", self.namespace)
            error = BadRequestError("an event name must be a string")
            return {"ok": False, "error": error.to_wire()}
        return await super().trigger_event(event, *args)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        # No await before hub.add marks the connection "replaying": see module docstring.
        svc, ns = self.svc, self.namespace
        limit = svc.settings.max_connections_per_principal
        try:
            if auth is not None and not isinstance(auth, Mapping):
                raise BadRequestError("auth must be an object: {token, ...}")
            auth = auth or {}
            principal = svc.verifier.verify(auth.get("token"))
            views = ConnectionViews.from_auth(principal, auth)  # a bad auth.filter: bad_request
            replay = parse_replay_request(auth, svc.settings.replay_window_minutes)
            if svc.hub.principal_count(principal.sub) >= limit:
                raise ForbiddenError(f"too many connections for {principal.sub}: at most {limit}")
        except LockerbusError as exc:
            svc.metrics.refused.labels(exc.code).inc()
            server_logger.info("connection refused namespace=%s code=%s", ns, exc.code)
            raise socketio.exceptions.ConnectionRefusedError(exc.code, exc.to_wire()) from None
        eio_sid = self.server.manager.eio_sid_from_sid(sid, ns)
        conn = Connection(sid, eio_sid, ns, principal, replay, views)
        svc.hub.add(conn)
        if principal.role == "kiosk" and ns == EVENTS_NS:
            svc.hub.join(conn, KIOSK_ROOM_PREFIX + principal.sub)
            if svc.presence is not None:  # before the connection is confirmed: commands find it
                await svc.presence.add(principal.sub, sid)
        if principal.role == "kiosk" and svc.kiosks is not None:
            svc.kiosks.connected(principal.sub, sid)
        server_logger.info(
            "connected sid=%s namespace=%s sub=%s role=%s", sid, ns, principal.sub, principal.role
        )
        svc.tasks.spawn(self._connection_event("connection", conn, environ))

    def established(self, sid: str) -> None:
        """python-socketio queued the CONNECT answer: the replay goes after it."""
        conn = self.svc.hub.get(self.namespace, sid)
        if conn is not None:
            self.svc.tasks.spawn(self.svc.catchup.replay(conn))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        svc = self.svc
        conn = svc.hub.get(self.namespace, sid)
        if conn is None:
            return
        held_kiosk = KIOSK_ROOM_PREFIX + conn.principal.sub in conn.rooms
        svc.hub.remove(conn)
        if svc.presence is not None and held_kiosk:
            svc.tasks.spawn(svc.presence.remove(conn.principal.sub, sid))
        if conn.principal.role == "kiosk" and svc.kiosks is not None:
            svc.kiosks.disconnected(conn.principal.sub, sid)
        server_logger.info(
            "disconnected sid=%s namespace=%s reason=%s", sid, conn.namespace, reason
        )
        svc.tasks.spawn(self._connection_event("disconnection", conn, None))

    async def on_subscribe(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await answer(self._room_change, sid, payload, join=True)

    async def on_unsubscribe(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await answer(self._room_change, sid, payload, join=False)

    async def _room_change(self, sid: str, payload: Any, *, join: bool) -> dict[str, Any]:
        conn = self._connection(sid)
        if not isinstance(payload, Mapping):
            raise BadRequestError("expected {room}" if not join else "expected {room, filter?}")
        room = check_subscribe_room(self.namespace, payload.get("room"))
        if join:
            await self.svc.catchup.join(conn, room, payload.get("filter"))
        else:
            self.svc.hub.leave(conn, room)
        return {"ok": True}

    async def on_publish(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await answer(self._publish, sid, payload)

    async def _publish(self, sid: str, payload: Any) -> dict[str, Any]:
        conn = self._connection(sid)
        published = await self.svc.bus.publish_request(
            payload, principal=conn.principal, bucket=self._bucket(conn)
        )
        return published.ack()

    async def on_command(self, sid: str, payload: Any = None) -> dict[str, Any]:
        return await answer(self._command, sid, payload)

    async def _command(self, sid: str, payload: Any) -> dict[str, Any]:
        conn = self._connection(sid)
        if self.namespace != EVENTS_NS:
            raise BadRequestError(f"commands are issued on {EVENTS_NS}")
        event = await self.svc.commands.execute(conn.principal, payload, self._bucket(conn))
        return {"ok": True, "event": event}

    def _connection(self, sid: str) -> Connection:
        conn = self.svc.hub.get(self.namespace, sid)
        if conn is None:
            raise BadRequestError("not connected")
        return conn

    def _bucket(self, conn: Connection) -> TokenBucket | None:
        """The principal's publish rate bucket (None: its role is not limited)."""
        return self.svc.limits.bucket(conn.principal.sub, conn.principal.role)

    async def _connection_event(
        self, event_type: str, conn: Connection, environ: Mapping[str, Any] | None
    ) -> None:
        """Publish a connection/disconnection event on /ws/events."""
        environ = environ or {}
        bus = self.svc.bus
        try:
            event = bus.service.create_connection_event(
                event_type,
                conn.sid,
                conn.namespace,
                len(self.svc.hub.connections[conn.namespace]),
                user_id=conn.principal.sub,
                user_agent=_short(environ.get("HTTP_USER_AGENT")),
                ip_address=_short(environ.get("REMOTE_ADDR")),
            )
            await bus.emit(event)
        except LockerbusError as exc:
            level = logging.WARNING if bus.accepting else logging.DEBUG
            server_logger.log(level, "could not publish %s event: %s", event_type, exc.message)


#: python-engineio decodes at most 16 packets per long-polling payload by default, a
#: guard against many tiny packets that the byte limit (max_http_buffer_size) already
#: bounds.  A polling client's burst of publishes, or a replay it reads, has more.
POLLING_PAYLOAD_PACKETS: Final = 65_536


def allow_long_polling_payloads() -> None:
    """Raise python-engineio's packets-per-payload limit (process-wide, never lowered)."""
    payload = engineio.payload.Payload
    payload.max_decode_packets = max(payload.max_decode_packets, POLLING_PAYLOAD_PACKETS)


class LockerbusServer(HookedAsyncServer):
    """The AsyncServer: CORS, the Admin UI, the :class:`~lockerbus.fanout.Sender`
    on its Engine.IO server, and the two hooks the namespaces need."""

    def __init__(
        self, settings: Settings, tasks: Background, *, client_manager: Any = None
    ) -> None:
        cors: Any = None
        if settings.cors_origins is not None:
            cors = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
        if settings.admin_ui and cors != "*":
            cors = [*(cors or []), ADMIN_UI_ORIGIN]
        super().__init__(
            async_mode="aiohttp",
            namespaces=list(NAMESPACES),  # any other, "/" included, is refused (§2)
            cors_allowed_origins=cors,
            http_compression=False,
            max_http_buffer_size=settings.max_event_bytes * 2 + 65536,
            client_manager=client_manager if client_manager is not None else IndexedAsyncManager(),
        )
        self._tasks = tasks
        self.sender = Sender(self.eio, settings.max_send_queue, settings.max_send_buffer_bytes)
        allow_long_polling_payloads()

    def serve(self, namespaces: list[LockerbusNamespace], settings: Settings) -> None:
        """Register the namespaces, then the hosted Admin UI when enabled."""
        for namespace in namespaces:
            self.register_namespace(namespace)
        if settings.admin_ui:
            # the hosted Admin UI (admin.socket.io); production mode keeps its cost low
            self.instrument(
                auth={"username": settings.admin_username, "password": settings.admin_password},
                mode="production",
                read_only=True,
            )

    def send_ack(self, eio_sid: str, namespace: str, ack_id: Any, answer: dict[str, Any]) -> bool:
        """Acks go the broadcasts' way: orjson, and the frame fast path (fanout.Sender)."""
        out = encode_ack(namespace, ack_id, answer)
        return out is not None and self.sender.send(eio_sid, out) is True

    def malformed_packet(self, eio_sid: str, exc: Exception) -> None:
        server_logger.warning("closing eio_sid=%s: malformed packet: %.200s", eio_sid, exc)
        self.cut(eio_sid)

    def connection_established(self, namespace: str, sid: str) -> None:
        handler = self.namespace_handlers.get(namespace)
        if isinstance(handler, LockerbusNamespace):
            handler.established(sid)

    def cut(self, eio_sid: str) -> None:
        """Close one client's whole connection (every namespace on it), now."""
        if not self.sender.abort(eio_sid):
            self._tasks.spawn(self.eio.disconnect(eio_sid))

    async def disconnect_sid(self, sid: str, namespace: str) -> None:
        """Close one connection to one namespace (the delivery core's Disconnect)."""
        await self.disconnect(sid, namespace=namespace)


def _short(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


__all__ = ["LockerbusNamespace", "LockerbusServer", "SocketServices", "answer"]
