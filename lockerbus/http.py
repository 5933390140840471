"""aiohttp routes: health, readiness, the events API, metrics."""

from __future__ import annotations

from aiohttp import web


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves; no dependency is consulted."""
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    """Register the HTTP routes on ``app``."""
    app.router.add_get("/healthz", healthz)
