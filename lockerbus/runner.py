"""Run an app on a TCP port and stop it gracefully.

aiohttp's own shutdown closes idle connections before ``on_shutdown`` runs,
which leaves open websockets waiting for a close handshake that cannot
finish.  So the order here is: stop listening, refuse new publishes and let
the ones in flight be stored, broadcast and acked, disconnect every
Socket.IO client (so it reconnects elsewhere), then let aiohttp finish
in-flight HTTP requests and run the cleanup context (which flushes and
closes the store).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from .app import BUS, GATEWAY, METRICS, SETTINGS, STORE, create_app, store_options
from .config import Settings
from .errors import StoreUnavailableError
from .http import metrics_response
from .log import access_logger, app_logger
from .startup import LISTEN_BACKLOG, listen_failed, startup_failed, store_failed, wait_for_store

#: Allocations between young collections (CPython's default is 700).  A publish
#: allocates a few dozen containers and keeps a few (the stored record), so at
#: 700 the full collection (every 10 x 10 young ones) ran every ~10k events and
#: scanned the whole heap: ~8 % of the server's CPU under a batch load.
GC_YOUNG_THRESHOLD = 10_000


@dataclass(slots=True)
class RunningApp:
    """An app listening on ``host:port``."""

    app: web.Application
    runner: web.AppRunner
    site: web.TCPSite
    host: str
    port: int
    metrics_runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Graceful stop; see the module docstring for the order."""
        await self.site.stop()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        bus = self.app[BUS]
        bus.stop_accepting()
        if not await bus.drain(self.app[SETTINGS].shutdown_grace_seconds):
            app_logger.warning("publishes still in flight at shutdown were abandoned")
        await self.app[GATEWAY].close()
        await self.runner.cleanup()


async def start(settings: Settings, app: web.Application | None = None) -> RunningApp:
    """Serve ``app`` (or ``create_app(settings)``) on the settings' host and port.

    Raises :class:`~lockerbus.startup.StartupError` when the store cannot be
    opened or the port cannot be bound.
    """
    app = app if app is not None else create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=access_logger if settings.access_log else None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )
    try:
        await runner.setup()
    except StoreUnavailableError as exc:
        await runner.cleanup()
        raise store_failed(exc) from None
    except Exception as exc:  # e.g. the message queue's Redis: still one line, exit 1
        app_logger.debug("start-up failed", exc_info=True)
        await runner.cleanup()
        raise startup_failed(exc) from None
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_failed(settings.host, settings.port, exc) from None
    port = settings.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    running = RunningApp(app, runner, site, settings.host, port)
    if settings.metrics_port is not None:
        try:
            running.metrics_runner = await _serve_metrics(app, settings.host, settings.metrics_port)
        except BaseException:
            await running.stop()
            raise
    return running


async def _serve_metrics(main: web.Application, host: str, port: int) -> web.AppRunner:
    """/metrics alone on its own port, so scrapes can stay inside the cluster network."""
    metrics, store = main[METRICS], main[STORE]

    async def handler(request: web.Request) -> web.Response:
        return await metrics_response(metrics, store)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_failed(host, port, exc, setting="metrics_port") from None
    return runner


async def serve_until_signalled(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if settings.store_wait_seconds > 0 and not await wait_for_store(
        settings, store_options(settings), stop
    ):
        return
    running = await start(settings)
    tune_gc()
    app_logger.info("listening on http://%s:%s", running.host, running.port)
    print(f"lockerbus serving on http://{running.host}:{running.port}", file=sys.stderr, flush=True)
    await stop.wait()
    app_logger.info("shutting down")
    await running.stop()


def tune_gc() -> None:
    """Move what startup built (modules, schemas, the app) out of the collector's
    scans, and collect young objects less often (see GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
