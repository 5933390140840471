"""Clients of the soak (test_soak.py): resuming followers with a scope or filter, a churning kiosk.

A :class:`Follower` follows /ws/lockers and resumes from the newest position it
knows: its last event's seq or the last ``replay_complete.last_seq``, whichever
is greater (a filtered or scoped stream skips seqs; resuming from the
namespace position keeps the replay small).  Everything it receives is kept
so the test can compare it with the store.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import socketio

from tests.processes import ServerProcess
from tests.support import WAIT

LOCKERS = "/ws/lockers"
EVENTS = "/ws/events"


class Follower:
    """One socket: follows /ws/lockers (and /ws/events when ``commands``), resuming by seq."""

    def __init__(
        self,
        server: ServerProcess,
        role: str,
        sub: str,
        *,
        flt: dict[str, Any] | None = None,
        commands: bool = False,
    ) -> None:
        self.server, self.role, self.sub, self.flt = server, role, sub, flt
        self.sio = socketio.AsyncClient(reconnection=False)
        # commands come on a second socket (/ws/events, replay: false): auth is per socket
        self.cmd_sio = socketio.AsyncClient(reconnection=False) if commands else None
        self.seqs: list[int] = []
        self.position = 0  # newest namespace seq this client is known to have covered
        self.epoch: str | None = None
        self.violations: list[str] = []
        self.unrecovered = 0  # replay_complete with recovered false
        self.connects = 0
        self.dropped = 0  # disconnects this client did not ask for (the server dropped it)
        self._leaving = False
        self.changed = asyncio.Event()
        self.sio.on("locker_state_changed", self._on_event, namespace=LOCKERS)
        self.sio.on("replay_complete", self._on_complete, namespace=LOCKERS)
        self.sio.on("disconnect", self._on_disconnect, namespace=LOCKERS)
        if self.cmd_sio is not None:
            self.cmd_sio.on("command", self._on_command, namespace=EVENTS)

    def auth(self) -> dict[str, Any]:
        """Evaluated on every connect: resume where this client stopped."""
        auth: dict[str, Any] = {"token": self.server.token(self.role, self.sub)}
        auth["last_seq"] = self.position
        if self.epoch is not None:
            auth["epoch"] = self.epoch
        if self.flt is not None:
            auth["filter"] = self.flt
        return auth

    async def connect(self) -> None:
        await self.sio.connect(
            self.server.url,
            namespaces=[LOCKERS],
            auth=self.auth,
            transports=["websocket"],
            wait_timeout=WAIT,
        )
        self._leaving = False
        self.connects += 1
        if self.cmd_sio is not None:
            await self.cmd_sio.connect(
                self.server.url,
                namespaces=[EVENTS],
                auth={"token": self.server.token(self.role, self.sub), "replay": False},
                transports=["websocket"],
                wait_timeout=WAIT,
            )

    async def disconnect(self) -> None:
        self._leaving = True
        await self.sio.disconnect()
        if self.cmd_sio is not None:
            await self.cmd_sio.disconnect()

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    async def _on_disconnect(self, reason: Any = None) -> None:
        if not self._leaving:
            self.dropped += 1

    async def _on_event(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if self.seqs and seq <= self.seqs[-1]:
            self.violations.append(f"{self.sub}: seq {seq} after {self.seqs[-1]}")
        self.seqs.append(seq)
        self.position = max(self.position, seq)
        self.epoch = event["epoch"]
        self.changed.set()

    async def _on_complete(self, payload: dict[str, Any]) -> None:
        if payload["recovered"] is False:
            self.unrecovered += 1
        self.position = max(self.position, int(payload["last_seq"]))
        self.epoch = payload["epoch"]
        self.changed.set()

    async def _on_command(self, command: dict[str, Any]) -> dict[str, Any]:
        return {"success": True, "message": f"{command['type']} done"}

    async def wait_position(self, seq: int, timeout: float) -> None:
        """Until this client has covered namespace seq ``seq``."""
        async with asyncio.timeout(timeout):
            while self.position < seq:
                self.changed.clear()
                await self.changed.wait()


async def churn(kiosk: Follower, stop: asyncio.Event, online: tuple[float, float]) -> int:
    """Connect and drop ``kiosk`` at random until ``stop``; returns the failed connects."""
    failures = 0
    rng = random.Random(kiosk.sub)
    await asyncio.sleep(rng.uniform(0, online[1]))  # spread the first connects
    while not stop.is_set():
        try:
            await kiosk.connect()
        except socketio.exceptions.ConnectionError:
            failures += 1
        if await _sleep_or_stop(stop, rng.uniform(*online)):
            break
        await kiosk.disconnect()
        if await _sleep_or_stop(stop, rng.uniform(0.5, 6.0)):
            break
    return failures


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
