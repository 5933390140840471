"""Start-up failures as one line and an exit code; waiting for a late store.

An operator meets these first: a store that is not up yet, a port that is
taken.  Each becomes :class:`StartupError` with the setting it is about, so
the CLI prints one line and exits with a code a supervisor can tell apart
(docs/operations.md lists them).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Final

from aiohttp import web

from .config import Settings
from .errors import StoreUnavailableError
from .log import app_logger
from .store import StoreOptions, open_store

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # anything unexpected
EXIT_BAD_SETTING: Final = 2  # a setting or the command line is wrong
EXIT_STORE_UNAVAILABLE: Final = 3  # the store cannot be opened (in the wait, if any)
EXIT_CANNOT_LISTEN: Final = 4  # host:port cannot be bound

#: Pending connections the kernel queues before the server accepts them
#: (aiohttp's default is 128; the kernel caps it at net.core.somaxconn).  A
#: fleet of 10,000 kiosks reconnecting at once overflows 128, and every
#: dropped SYN waits for TCP's retry timer (1, 3, 7, 15, 31 s ...).
LISTEN_BACKLOG: Final = 4096

_FIRST_RETRY_SECONDS: Final = 0.25
_MAX_RETRY_SECONDS: Final = 5.0


class StartupError(Exception):
    """Start-up stopped; ``setting`` names what to fix, ``exit_code`` says what kind."""

    def __init__(self, setting: str, message: str, exit_code: int) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message
        self.exit_code = exit_code


def store_failed(exc: StoreUnavailableError) -> StartupError:
    """The store named by the ``store`` setting could not be opened."""
    return StartupError("store", f"cannot open the store: {exc.message}", EXIT_STORE_UNAVAILABLE)


def listen_failed(host: str, port: int, exc: OSError, setting: str = "port") -> StartupError:
    """``host:port`` could not be bound."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StartupError(setting, f"cannot listen on {host}:{port}: {reason}", EXIT_CANNOT_LISTEN)


def startup_failed(exc: Exception) -> StartupError:
    """Anything else that stopped start-up (the traceback is logged at DEBUG)."""
    return StartupError("start-up", f"{type(exc).__name__}: {exc}", EXIT_FAILED)


async def probe_store(url: str, options: StoreOptions) -> None:
    """Open and close the store once; raises StoreUnavailableError saying why not."""
    store = open_store(url, options)
    try:
        await store.start()
    finally:
        await store.close()


async def wait_for_store(
    settings: Settings, options: StoreOptions, stop: asyncio.Event | None = None
) -> bool:
    """Retry opening the store for ``store_wait_seconds`` while /readyz answers 503.

    Returns False when ``stop`` was set meanwhile; raises :class:`StartupError`
    when the store is still unavailable at the deadline.  Meanwhile a stand-in
    app on the server's port answers /healthz 200 and everything else 503, so
    an orchestrator sees a live process that is not ready yet.
    """
    deadline = time.monotonic() + settings.store_wait_seconds
    reason = "not tried"
    stand_in = _StandIn()
    await stand_in.start(settings.host, settings.port)
    try:
        delay = _FIRST_RETRY_SECONDS
        while True:
            try:
                await probe_store(settings.store, options)
            except StoreUnavailableError as exc:
                reason = exc.message
            else:
                return True
            stand_in.reason = f"waiting for the store: {reason}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise store_failed(StoreUnavailableError(reason))
            app_logger.warning("store unavailable (%s); retrying for %.0f s more", reason, left)
            if stop is not None:
                try:
                    await asyncio.wait_for(stop.wait(), min(delay, left))
                except TimeoutError:
                    pass
                else:
                    return False
            else:
                await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_RETRY_SECONDS)
    finally:
        await stand_in.stop()


class _StandIn:
    """/healthz 200 and /readyz 503 on the real port until the store answers."""

    def __init__(self) -> None:
        self.reason = "waiting for the store"
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._unavailable)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port, backlog=LISTEN_BACKLOG).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise listen_failed(host, port, exc) from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _unavailable(self, request: web.Request) -> web.Response:
        body: dict[str, Any]
        if request.path == "/readyz":
            body = {"status": "unavailable", "reason": self.reason}
        else:
            body = {"error": {"code": "store_unavailable", "message": self.reason}}
        return web.json_response(body, status=503)
