"""Test helpers: a real lockerbus server on a free 127.0.0.1 port, real clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio
from aiohttp import web

from lockerbus.auth import issue_token
from lockerbus.config import Settings
from lockerbus.events import EVENT_TYPES
from lockerbus.runner import RunningApp, start

SECRET = "test-secret-" + "x" * 40
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """A lockerbus app served by aiohttp on 127.0.0.1."""

    running: RunningApp
    settings: Settings

    @property
    def app(self) -> web.Application:
        return self.running.app

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str = "gateway", sub: str | None = None, ttl: float = 600) -> str:
        assert self.settings.secret is not None
        return issue_token(self.settings.secret, role, sub or f"{role}-1", ttl)

    def headers(self, role: str = "gateway", sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def post_event(
        self, http: aiohttp.ClientSession, body: Any, role: str = "gateway", sub: str | None = None
    ) -> tuple[int, Any]:
        return await post_event(self, http, body, role, sub)

    async def stop(self) -> None:
        await self.running.stop()


async def post_event(
    server: Any,
    http: aiohttp.ClientSession,
    body: Any,
    role: str = "gateway",
    sub: str | None = None,
    path: str = "/api/events",
) -> tuple[int, Any]:
    """POST ``path`` to any server with ``url`` and ``headers()``: (status, JSON)."""
    async with http.post(
        f"{server.url}{path}", json=body, headers=server.headers(role, sub)
    ) as resp:
        return resp.status, await resp.json()


async def start_server(**overrides: Any) -> RunningServer:
    # load tests publish far above the production default rate limit
    defaults: dict[str, Any] = {"rate_limit_per_second": 1e6, "rate_limit_burst": 1_000_000}
    settings = Settings(secret=SECRET, port=0).replace(**{**defaults, **overrides})
    return RunningServer(await start(settings), settings)


@dataclass
class Client:
    """A python-socketio AsyncClient that records what it receives."""

    sio: socketio.AsyncClient
    received: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    connect_errors: dict[str, Any] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def events(self, namespace: str, name: str | None = None) -> list[Any]:
        return [p for n, p in self.received.get(namespace, []) if name is None or n == name]

    def names(self, namespace: str) -> list[str]:
        return [n for n, _ in self.received.get(namespace, [])]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    async def wait_events(
        self, namespace: str, name: str, count: int, timeout: float = WAIT
    ) -> list[Any]:
        await self.wait_for(lambda: len(self.events(namespace, name)) >= count, timeout)
        return self.events(namespace, name)

    async def call(self, event: str, data: Any, namespace: str) -> Any:
        return await self.sio.call(event, data, namespace=namespace, timeout=WAIT)

    async def close(self) -> None:
        await self.sio.disconnect()


async def connect(
    server: RunningServer,
    namespaces: list[str] | str = "/ws/lockers",
    *,
    role: str = "panel",
    sub: str | None = None,
    auth: dict[str, Any] | None = None,
    token: str | None = None,
    expect_refusal: bool = False,
    handlers: dict[str, Callable[..., Any]] | None = None,
    **client_kwargs: Any,
) -> Client:
    """Connect a real client; ``auth`` extends the default ``{token}``."""
    if isinstance(namespaces, str):
        namespaces = [namespaces]
    sio = socketio.AsyncClient(
        reconnection=client_kwargs.pop("reconnection", False), **client_kwargs
    )
    client = Client(sio)
    OPEN_CLIENTS.append(client)
    loop_names = ["replay_complete", "command", *EVENT_TYPES]

    def recorder(ns: str, name: str) -> Callable[..., Any]:
        async def handler(*args: Any) -> None:
            async with client._changed:
                client.received.setdefault(ns, []).append((name, args[0] if args else None))
                client._changed.notify_all()

        return handler

    def error_recorder(ns: str) -> Callable[..., Any]:
        async def handler(data: Any = None) -> None:
            async with client._changed:
                client.connect_errors[ns] = data
                client._changed.notify_all()

        return handler

    for ns in namespaces:
        for name in loop_names:
            sio.on(name, recorder(ns, name), namespace=ns)
        sio.on("disconnect", recorder(ns, "disconnect"), namespace=ns)
        for name, handler in (handlers or {}).items():
            sio.on(name, handler, namespace=ns)
        sio.on("connect_error", error_recorder(ns), namespace=ns)
    full_auth: dict[str, Any] = {"token": token if token is not None else server.token(role, sub)}
    full_auth.update(auth or {})
    try:
        await sio.connect(
            server.url,
            namespaces=namespaces,
            auth=full_auth,
            transports=["websocket"],
            wait_timeout=WAIT,
        )
    except socketio.exceptions.ConnectionError:
        if not expect_refusal:
            raise
    return client


#: Clients made by :func:`connect`, closed before servers stop: a client that
#: shares the server's event loop would otherwise stall its close handshake.
OPEN_CLIENTS: list[Client] = []


async def close_clients() -> None:
    while OPEN_CLIENTS:
        client = OPEN_CLIENTS.pop()
        if client.sio.connected:
            await client.sio.disconnect()


def help_requested(n: int) -> dict[str, Any]:
    """A publish of an open, high-priority help request ``n`` at kiosk-1."""
    data = {
        "id": n,
        "kiosk_id": "kiosk-1",
        "category": "other",
        "status": "open",
        "created_at": "2026-11-26T19:00:00Z",
        "priority": "high",
    }
    return {"type": "help_requested", "data": data}


def locker_event(n: int, kiosk: str = "kiosk-1") -> dict[str, Any]:
    """A valid locker_state_changed publish payload; states alternate so they differ."""
    old, new = ("closed", "open") if n % 2 == 0 else ("open", "closed")
    return {
        "type": "locker_state_changed",
        "data": {"lockerId": f"L{n}", "oldState": old, "newState": new, "kioskId": kiosk},
    }
