"""create_app(settings): wiring and lifecycle only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from .board import BoardRoutes
from .bus import EventBus
from .config import Settings
from .http import Handler, HttpApi, errors_middleware
from .limits import PrincipalLimits
from .log import app_logger
from .metrics import Metrics
from .projections import Projection
from .server import ClusterRedisManager, SocketGateway
from .service import EventService
from .store import EventStore, StoreOptions, open_store

SETTINGS: Final = web.AppKey("settings", Settings)
BUS: Final = web.AppKey("bus", EventBus)
STORE: Final = web.AppKey("store", EventStore)
GATEWAY: Final = web.AppKey("gateway", SocketGateway)
METRICS: Final = web.AppKey("metrics", Metrics)
PROJECTION: Final = web.AppKey("projection", Projection)


def store_options(settings: Settings) -> StoreOptions:
    """The store's share of the settings."""
    return StoreOptions(
        max_events=settings.max_events,
        ttl_seconds=settings.ttl_seconds,
        cleanup_interval_seconds=settings.cleanup_interval_minutes * 60,
    )


def _no_websocket_compression() -> Any:
    """Refuse permessage-deflate: it costs CPU and ~90 KB per connection here."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Sec-WebSocket-Extensions" in request.headers:
            headers = request.headers.copy()
            del headers["Sec-WebSocket-Extensions"]
            request = request.clone(headers=headers)
        return await handler(request)

    return middleware


def create_app(settings: Settings, *, store: EventStore | None = None) -> web.Application:
    """An aiohttp application serving lockerbus with ``settings``.

    ``store`` replaces the one named by ``settings.store`` (tests, embedding).
    """
    if settings.secret is None:
        raise ValueError("create_app needs settings.secret (the CLI makes one in dev mode)")
    middlewares: list[Any] = [errors_middleware]
    if not settings.websocket_compression:
        middlewares.insert(0, _no_websocket_compression())
    app = web.Application(
        middlewares=middlewares, client_max_size=settings.max_event_bytes * 2 + 65536
    )
    metrics = Metrics()
    service = EventService(max_event_bytes=settings.max_event_bytes)
    store = store or open_store(settings.store, store_options(settings))
    bus = EventBus(service, store, metrics)
    projection = Projection()
    bus.on_stored.append(projection.apply)
    client_manager = None
    if settings.message_queue:
        from .store.redis import events_channel

        client_manager = ClusterRedisManager(
            settings.message_queue, channel=events_channel(settings.store)
        )
    gateway = SocketGateway(settings, bus, store, metrics, client_manager=client_manager)
    if client_manager is not None:
        _join_cluster(settings, bus, store, gateway, client_manager)
    gateway.sio.attach(app)

    async def stats() -> dict[str, Any]:
        return await gateway.stats()

    HttpApi(
        secret=settings.secret,
        bus=bus,
        store=store,
        metrics=metrics,
        commands=gateway.commands,
        limits=PrincipalLimits(settings.rate_limit_per_second, settings.rate_limit_burst),
        max_event_bytes=settings.max_event_bytes,
        stats=stats,
        problem=lambda: None if gateway.relay is None else gateway.relay.problem(),
    ).add_routes(app)
    BoardRoutes(
        secret=settings.secret,
        store=store,
        projection=projection,
        board_enabled=settings.board_enabled,
    ).add_routes(app)
    if settings.cors_origins:
        _allow_cross_origin(app, settings.cors_origins)
    app[SETTINGS] = settings
    app[BUS] = bus
    app[STORE] = store
    app[GATEWAY] = gateway
    app[METRICS] = metrics
    app[PROJECTION] = projection
    app.cleanup_ctx.append(_lifecycle)
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


def _join_cluster(
    settings: Settings,
    bus: EventBus,
    store: EventStore,
    gateway: SocketGateway,
    manager: ClusterRedisManager,
) -> None:
    """Deliver from the shared channel (see cluster.py), not straight from each publish."""
    from .cluster import ClusterRelay
    from .presence import Presence

    relay = ClusterRelay(gateway.hub, store, resync=gateway.resync)
    relay.listener = manager
    manager.relay = relay
    bus.broadcaster = relay
    gateway.relay = relay
    gateway.presence = Presence(settings.store)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store, gateway = app[STORE], app[GATEWAY]
    await store.start()
    await app[PROJECTION].rebuild(store)
    await gateway.start()
    app_logger.info("lockerbus ready store=%s epoch=%s", app[SETTINGS].store, store.epoch)
    yield
    await gateway.close()
    await store.close()
    app_logger.info("lockerbus stopped")
