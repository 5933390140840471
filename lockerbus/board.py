"""Current-state routes (``/api/lockers``, ``/api/help``, ``/api/kiosks``) and the board page.

The page and its assets are files in ``lockerbus/static``, read once and
served from memory: no build step, no CDN.  ``socket.io.min.js`` is the
socket.io-client dist bundle, vendored unchanged (see static/README.md).
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from aiohttp import web

from .auth import Principal, TokenVerifier, bearer_token
from .errors import ForbiddenError
from .kiosks import KioskTracker
from .projections import Projection
from .reads import scoped_help, scoped_kiosks, scoped_lockers
from .responses import json_response
from .store import EventStore

#: file name -> content type; nothing else in static/ is served
ASSETS: Final = {
    "board.html": "text/html; charset=utf-8",
    "board.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "follow.js": "text/javascript; charset=utf-8",
    "board.css": "text/css; charset=utf-8",
    "socket.io.min.js": "text/javascript; charset=utf-8",
}
#: who may read /api/kiosks (contract §11)
KIOSK_READERS: Final = frozenset({"panel", "gateway", "admin"})
#: the page talks to its own origin only; the token never leaves it
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _load_assets() -> dict[str, bytes]:
    static = resources.files("lockerbus") / "static"
    return {name: (static / name).read_bytes() for name in ASSETS}


class BoardRoutes:
    """``GET /api/lockers``, ``GET /api/help`` and, when enabled, ``GET /board``."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        store: EventStore,
        projection: Projection,
        board_enabled: bool,
        kiosks: KioskTracker | None = None,
    ) -> None:
        self.verifier = verifier
        self.store = store
        self.projection = projection
        self.kiosks = kiosks
        self.board_enabled = board_enabled
        self._assets = _load_assets() if board_enabled else {}

    def add_routes(self, app: web.Application) -> None:
        """Register the routes on ``app``."""
        app.router.add_get("/api/lockers", self.get_lockers)
        app.router.add_get("/api/help", self.get_help)
        if self.kiosks is not None:
            app.router.add_get("/api/kiosks", self.get_kiosks)
        if self.board_enabled:
            app.router.add_get("/board", self.page)
            app.router.add_get("/board/{name}", self.asset)

    def _authorize(self, request: web.Request) -> Principal:
        return self.verifier.verify(bearer_token(request.headers.get("Authorization")))

    async def get_lockers(self, request: web.Request) -> web.Response:
        """The latest state of every locker seen, with the seq it reflects."""
        principal = self._authorize(request)
        snapshot = await self.projection.lockers_snapshot(self.store)
        return json_response(scoped_lockers(snapshot, principal))

    async def get_help(self, request: web.Request) -> web.Response:
        """Help requests not yet resolved, with the seq they reflect."""
        principal = self._authorize(request)
        snapshot = await self.projection.help_snapshot(self.store)
        return json_response(scoped_help(snapshot, principal))

    async def get_kiosks(self, request: web.Request) -> web.Response:
        """Kiosk presence across instances (contract §11): panel, gateway, admin; scoped."""
        principal = self._authorize(request)
        if principal.role not in KIOSK_READERS:
            raise ForbiddenError(f"role {principal.role} may not read /api/kiosks")
        assert self.kiosks is not None
        kiosks = await self.kiosks.listing()
        return json_response({"kiosks": scoped_kiosks(kiosks, principal)})

    async def page(self, request: web.Request) -> web.Response:
        """The board; it asks for its token in the browser, so no auth here."""
        return self._file("board.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS or name == "board.html":
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(
            body=self._assets[name],
            headers={
                "Content-Type": ASSETS[name],
                "Cache-Control": "no-cache",
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )
