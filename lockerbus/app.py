"""create_app(settings): wiring and lifecycle only."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from . import http
from .config import Settings

SETTINGS: Final = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    """An aiohttp application serving lockerbus with ``settings``."""
    if settings.secret is None:
        raise ValueError("create_app needs settings.secret (the CLI makes one in dev mode)")
    app = web.Application(client_max_size=settings.max_event_bytes * 2 + 65536)
    app[SETTINGS] = settings
    http.add_routes(app)
    return app
