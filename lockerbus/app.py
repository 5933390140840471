"""create_app(settings): builds every collaborator, passes each in through its
constructor, and opens and closes the resources in order.

One aiohttp cleanup context per resource (store -> presence -> command claims
-> relay -> sockets): when one fails to start, aiohttp runs the cleanup of those
already started, so nothing is left open.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .auth import TokenVerifier
from .board import BoardRoutes
from .bus import EventBus
from .commands import CommandService
from .config import Settings, redact_url
from .delivery import Background, Broadcaster, CatchUp, Hub
from .errors import LockerbusError
from .events import NAMESPACES
from .http import Handler, HttpApi, errors_middleware
from .kiosk_link import SocketKioskLink
from .kiosks import KioskBook, KioskTracker, LocalBook, status_listener
from .limits import RoleLimits
from .log import app_logger
from .metrics import Metrics
from .projections import Projection
from .server import LockerbusNamespace, LockerbusServer, SocketServices
from .service import EventService
from .sockets import Sockets
from .stats import Stats
from .store import EventStore, Retention, StoreOptions, open_store

if TYPE_CHECKING:  # cluster mode only: presence needs redis, an optional extra
    from .cluster import ChannelInbox, ClusterRedisManager, ClusterRelay
    from .command_claims import RedisCommandClaims
    from .presence import Presence

#: where python-socketio's ``attach`` serves Engine.IO (its default)
SOCKETIO_PATH: Final = "/socket.io/"
SETTINGS: Final = web.AppKey("settings", Settings)
BUS: Final = web.AppKey("bus", EventBus)
STORE: Final = web.AppKey("store", EventStore)
#: the Socket.IO side (its AsyncServer, hub and relay); the runner closes it first
GATEWAY: Final = web.AppKey("gateway", Sockets)
STATS: Final = web.AppKey("stats", Stats)
METRICS: Final = web.AppKey("metrics", Metrics)
PROJECTION: Final = web.AppKey("projection", Projection)


def store_options(settings: Settings) -> StoreOptions:
    """The store's share of the settings."""
    return StoreOptions(
        max_events=settings.max_events,
        ttl_seconds=settings.ttl_seconds,
        cleanup_interval_seconds=settings.cleanup_interval_minutes * 60,
        namespaces={
            namespace: Retention(*settings.namespace_retention(namespace))
            for namespace in settings.retention
        },
    )


# The middlewares below are plain functions handing back the handler's awaitable:
# a coroutine middleware's frame would stay alive as long as each websocket does
# (about 0.5 KB each, per idle connection).


def _no_websocket_compression() -> Any:
    """Refuse permessage-deflate: it costs CPU and ~90 KB per connection here."""

    @web.middleware
    def middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if "Sec-WebSocket-Extensions" in request.headers:
            headers = request.headers.copy()
            del headers["Sec-WebSocket-Extensions"]
            request = request.clone(headers=headers)
        return handler(request)

    return middleware


def _except_socketio(middleware: Any) -> Any:
    """``middleware`` for every path but Socket.IO's (whose errors Engine.IO answers)."""

    @web.middleware
    def skipping(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.path.startswith(SOCKETIO_PATH):
            return handler(request)
        result: Awaitable[web.StreamResponse] = middleware(request, handler)
        return result

    return skipping


def create_app(settings: Settings, *, store: EventStore | None = None) -> web.Application:
    """An aiohttp application serving lockerbus with ``settings``.

    ``store`` replaces the one named by ``settings.store`` (tests, embedding).
    """
    secret = settings.secret
    if secret is None:
        raise ValueError("create_app needs settings.secret (the CLI makes one in dev mode)")
    middlewares: list[Any] = [_except_socketio(errors_middleware)]
    if not settings.websocket_compression:
        middlewares.insert(0, _no_websocket_compression())
    app = web.Application(
        middlewares=middlewares, client_max_size=settings.max_event_bytes * 2 + 65536
    )
    metrics = Metrics()
    service = EventService(max_event_bytes=settings.max_event_bytes)
    store = store or open_store(settings.store, store_options(settings))
    projection = Projection()
    tasks = Background()
    cluster = (
        _Cluster(settings.message_queue, settings.store, metrics)
        if settings.message_queue
        else None
    )
    sio = LockerbusServer(
        settings, tasks, client_manager=cluster.manager if cluster is not None else None
    )
    hub = Hub(sio.sender, metrics, max_pending=settings.max_send_queue)
    catchup = CatchUp(
        hub,
        store,
        metrics,
        disconnect=sio.disconnect_sid,
        tasks=tasks,
        replay_limit=settings.replay_buffer_size,
    )
    relay = cluster.relay(hub, store, catchup.resync) if cluster is not None else None
    broadcaster: Broadcaster = relay if relay is not None else hub
    presence = cluster.presence if cluster is not None else None
    book: KioskBook = presence if presence is not None else LocalBook()
    bus = EventBus(
        service,
        store,
        metrics,
        broadcaster,
        on_stored=[status_listener(book, tasks)],
        help_kiosk=functools.partial(projection.help_kiosk, store),
    )
    kiosks = KioskTracker(bus, book, tasks, grace_seconds=settings.kiosk_offline_grace_seconds)
    commands = CommandService(
        bus,
        SocketKioskLink(sio, hub, presence),
        timeout_seconds=settings.command_timeout_seconds,
        claims=cluster.claims if cluster is not None else None,
    )
    verifier = TokenVerifier(secret, settings.previous_secrets)
    limits = RoleLimits(settings.role_rate_limits())  # per principal, sockets and HTTP
    services = SocketServices(
        settings, verifier, limits, hub, catchup, bus, commands, metrics, tasks, presence, kiosks
    )
    sio.serve([LockerbusNamespace(ns, services) for ns in NAMESPACES], settings)
    sio.attach(app, socketio_path=SOCKETIO_PATH.strip("/"))
    sockets = Sockets(sio, hub, tasks, relay=relay)
    stats = Stats(hub, store, metrics, relay=relay, presence=presence)
    HttpApi(
        verifier=verifier,
        bus=bus,
        store=store,
        metrics=metrics,
        commands=commands,
        limits=limits,
        max_event_bytes=settings.max_event_bytes,
        stats=stats,
        problem=relay.problem if relay is not None else None,
    ).add_routes(app)
    BoardRoutes(
        verifier=verifier,
        store=store,
        projection=projection,
        kiosks=kiosks,
        board_enabled=settings.board_enabled,
    ).add_routes(app)
    if settings.cors_origins:
        _allow_cross_origin(app, settings.cors_origins)
    app[SETTINGS] = settings
    app[BUS] = bus
    app[STORE] = store
    app[GATEWAY] = sockets
    app[METRICS] = metrics
    app[PROJECTION] = projection
    app[STATS] = stats
    app.cleanup_ctx.extend(
        [
            _store_context(store),
            _presence_context(presence, hub),
            _kiosks_context(kiosks, store),
            _claims_context(cluster.claims if cluster is not None else None),
            _relay_context(relay, sio),
            _sockets_context(sockets, store, settings),
        ]
    )
    return app


def _allow_cross_origin(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS for the HTTP API; Socket.IO checks origins itself (engine.io)."""
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_headers=("Authorization", "Content-Type"), max_age=600
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        if route.resource is not None and route.resource.canonical.startswith("/api/"):
            cors.add(route)


class _Cluster:
    """What several instances add: the shared channel's manager, the relay, presence.

    Delivery comes from the shared channel (see cluster.py), not straight from
    each publish.  Imported here only: presence and the manager need redis.
    """

    def __init__(self, message_queue: str, store_url: str, metrics: Metrics) -> None:
        from .cluster import ChannelInbox, ChannelPublisher, ClusterRedisManager
        from .command_claims import RedisCommandClaims
        from .config import REDIS_SCHEMES
        from .presence import Presence
        from .redisconn import events_channel

        # A Redis store publishes its events itself, and presence and claims live
        # beside it; with another store (PostgreSQL) they all use the message queue.
        own = store_url.startswith(REDIS_SCHEMES)
        redis_url = store_url if own else message_queue
        channel = events_channel(redis_url)
        self.inbox: ChannelInbox = ChannelInbox()
        self.manager: ClusterRedisManager = ClusterRedisManager(
            message_queue, channel=channel, inbox=self.inbox, metrics=metrics
        )
        self.publisher: ChannelPublisher | None = (
            None if own else ChannelPublisher(message_queue, channel)
        )
        self.metrics = metrics
        self.presence: Presence = Presence(redis_url)
        self.claims: RedisCommandClaims = RedisCommandClaims(redis_url)

    def relay(self, hub: Hub, store: EventStore, resync: Callable[[str], None]) -> ClusterRelay:
        from .cluster import ClusterRelay

        return ClusterRelay(
            hub,
            store,
            resync=resync,
            inbox=self.inbox,
            listener=self.manager,
            publisher=self.publisher,
            metrics=self.metrics,
        )


Context = Callable[[web.Application], AsyncIterator[None]]


def _store_context(store: EventStore) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        await store.start()
        try:
            yield
        finally:
            await store.close()
            app_logger.info("lockerbus stopped")

    return context


def _presence_context(presence: Presence | None, hub: Hub) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        if presence is None:
            yield
            return
        tasks = Background()
        tasks.spawn(presence.run(hub.counts))
        try:
            yield
        finally:
            await tasks.close()
            await presence.close()

    return context


def _kiosks_context(kiosks: KioskTracker, store: EventStore) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        try:
            known = await kiosks.recover(store)
            app_logger.info("kiosk presence: %d kiosks known from history", known)
        except LockerbusError as exc:  # presence in Redis away: start anyway
            app_logger.warning("kiosk presence: history not read: %s", exc)
        tasks = Background()
        tasks.spawn(kiosks.sweep_forever())
        try:
            yield
        finally:
            await tasks.close()

    return context


def _claims_context(claims: RedisCommandClaims | None) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        yield
        if claims is not None:
            await claims.close()

    return context


def _relay_context(relay: ClusterRelay | None, sio: LockerbusServer) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        if relay is None:
            yield
            return
        await relay.start()
        sio.start_manager()
        tasks = Background()
        tasks.spawn(relay.consume())
        tasks.spawn(relay.run())
        if relay.publisher is not None:
            tasks.spawn(relay.publisher.run())
        try:
            yield
        finally:
            await tasks.close()
            if relay.publisher is not None:
                await relay.publisher.close()

    return context


def _sockets_context(sockets: Sockets, store: EventStore, settings: Settings) -> Context:
    async def context(app: web.Application) -> AsyncIterator[None]:
        await sockets.start()
        store_url = redact_url(settings.store)
        app_logger.info("lockerbus ready store=%s epoch=%s", store_url, store.epoch)
        try:
            yield
        finally:
            await sockets.close()

    return context
