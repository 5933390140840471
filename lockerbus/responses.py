"""JSON responses shared by the HTTP API and the board (orjson, contract error bodies)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import LockerbusError


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(exc: LockerbusError) -> web.Response:
    """The contract's ``{error: {code, message, fields?}}`` with the error's status."""
    return json_response({"error": exc.to_wire()}, status=exc.http_status)
