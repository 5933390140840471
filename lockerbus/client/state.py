"""Rebuilding from the server's state when history was lost (contract §11).

A ``replay_complete`` with ``recovered: false`` means events were missed and
are no longer held.  History cannot fill that hole, but the state can:
``GET /api/lockers`` or ``/api/help`` is the truth as of its ``last_seq``.
The client fetches it and hands it to ``@client.on("state")`` handlers as
``{namespace, last_seq, epoch, lockers | help_requests}``; apply it, then only
events with a greater seq (those at or below it are already in it).
"""

from __future__ import annotations

import ssl
from typing import Any, Final

import aiohttp

from ..events import HELP_NS, LOCKERS_NS
from .options import ClientOptions

#: namespace -> the route holding its state
STATE_ROUTES: Final = {LOCKERS_NS: "/api/lockers", HELP_NS: "/api/help"}


async def fetch_state(
    url: str, token: str, namespace: str, options: ClientOptions | None = None
) -> dict[str, Any]:
    """``GET`` the state of ``namespace`` (``/ws/lockers`` or ``/ws/help``) as the token's
    principal (scoped as the server scopes it); raises aiohttp.ClientError on failure."""
    opts = options or ClientOptions()
    route = STATE_ROUTES.get(namespace)
    if route is None:
        raise ValueError(f"no state for {namespace}: one of {', '.join(STATE_ROUTES)}")
    tls: ssl.SSLContext | bool = True
    if not opts.ssl_verify:
        tls = False
    elif opts.ca_file is not None:
        tls = ssl.create_default_context(cafile=opts.ca_file)
    timeout = aiohttp.ClientTimeout(total=opts.connect_timeout)
    headers = {**dict(opts.headers), "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url.rstrip("/") + route, headers=headers, ssl=tls) as resp,
    ):
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
    return {"namespace": namespace, **body}
