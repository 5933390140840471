"""Clients for the reliability suite: a resuming subscriber, publishers, a raw websocket."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import socketio

from tests.processes import ServerProcess
from tests.support import WAIT, locker_event

LOCKERS = "/ws/lockers"


class Tracker:
    """A python-socketio client that reconnects by itself and resumes from its last seq.

    It records every seq it receives in one namespace and notes any seq that
    is not greater than the previous one (a duplicate or a reorder): the
    contract says a connection never sees either.
    """

    def __init__(
        self,
        server: ServerProcess,
        sub: str,
        *,
        namespace: str = LOCKERS,
        event: str = "locker_state_changed",
        reconnection: bool = True,
    ) -> None:
        self.server, self.sub, self.namespace = server, sub, namespace
        self.sio = socketio.AsyncClient(
            reconnection=reconnection,
            reconnection_delay=0.2,
            reconnection_delay_max=1.0,
            randomization_factor=0.5,
        )
        self.seqs: list[int] = []
        self.ids: dict[int, str] = {}
        self.last_seq: int | None = None
        self.epoch: str | None = None
        self.completes: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.generations: list[list[int]] = []  # seqs before each `recovered: false`
        self._replayed: list[dict[str, Any]] = []
        self.arrivals: dict[int, float] = {}  # seq -> perf_counter() of live events
        self.changed = asyncio.Event()
        self.sio.on(event, self._on_event, namespace=namespace)
        self.sio.on("replay_complete", self._on_complete, namespace=namespace)
        self.sio.on("connect", self._on_connect, namespace=namespace)

    def auth(self) -> dict[str, Any]:
        """Evaluated on every (re)connect: resume where this client stopped."""
        auth: dict[str, Any] = {"token": self.server.token("panel", self.sub)}
        if self.last_seq is not None:
            auth["last_seq"] = self.last_seq
            if self.epoch is not None:
                auth["epoch"] = self.epoch
        return auth

    async def connect(self) -> Tracker:
        await self.sio.connect(
            self.server.url,
            namespaces=[self.namespace],
            auth=self.auth,
            transports=["websocket"],
            wait_timeout=WAIT,
        )
        return self

    async def _on_connect(self) -> None:
        self._replayed = []  # a replay cut short by a drop starts over on the new connection

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("replayed"):
            self._replayed.append(event)  # judged once replay_complete says what they are
        else:
            self.arrivals[event["seq"]] = time.perf_counter()
            self._take(event)

    def _take(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if self.last_seq is not None and seq <= self.last_seq:
            self.violations.append(f"seq {seq} after {self.last_seq}")
        self.seqs.append(seq)
        self.ids[seq] = event["id"]
        self.last_seq = seq
        self.changed.set()

    async def _on_complete(self, payload: dict[str, Any]) -> None:
        self.completes.append(payload)
        if payload["recovered"] is False and self.last_seq is not None:
            # the server says: rebuild from what follows; old seqs mean nothing now
            self.generations.append(self.seqs)
            self.seqs, self.ids, self.last_seq = [], {}, None
        replayed, self._replayed = self._replayed, []
        for event in replayed:
            self._take(event)
        self.epoch = payload["epoch"]
        if self.last_seq is None:
            self.last_seq = payload["last_seq"]
        self.changed.set()

    async def wait_until(self, last_seq: int, timeout: float = WAIT) -> None:
        """Until this client has seen ``last_seq``."""
        async with asyncio.timeout(timeout):
            while (self.last_seq or 0) < last_seq:
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        await self.sio.disconnect()


@dataclass
class Publisher:
    """Publishes locker events as fast as acks come back, over HTTP or a socket.

    ``acked`` holds every event whose publish was acknowledged; ``failed``
    counts the attempts that were not (the server was down, or died mid-call).
    """

    server: ServerProcess
    via: str  # "http" | "socket"
    kiosk: str
    interval: float = 0.0  # seconds between publishes: a paced stream, not a flood
    acked: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def _ack(self, event: dict[str, Any]) -> None:
        self.acked.append(event)
        self.progress.set()

    async def wait_acked(self, count: int, timeout: float = 30) -> None:
        """Until ``count`` publishes in all were acknowledged."""
        async with asyncio.timeout(timeout):
            while len(self.acked) < count:
                self.progress.clear()
                await self.progress.wait()

    async def run(self, limit: int | None = None) -> None:
        """Publish until ``stop`` is set (or ``limit`` events are acked)."""
        if self.via == "http":
            await self._run_http(limit)
        else:
            await self._run_socket(limit)

    def _done(self, limit: int | None) -> bool:
        return self.stop.is_set() or (limit is not None and len(self.acked) >= limit)

    async def _run_http(self, limit: int | None) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(headers=self.server.headers(), timeout=timeout) as http:
            for n in itertools.count():
                if self._done(limit):
                    return
                try:
                    async with http.post(
                        f"{self.server.url}/api/events", json=locker_event(n, self.kiosk)
                    ) as resp:
                        body = await resp.json(loads=orjson.loads)
                        if resp.status == 201:
                            self._ack(body)
                        else:
                            self.failed += 1
                    if self.interval:
                        await asyncio.sleep(self.interval)
                except (aiohttp.ClientError, TimeoutError):
                    self.failed += 1
                    await asyncio.sleep(0.05)  # back off while the server is down

    async def _run_socket(self, limit: int | None) -> None:
        sio = socketio.AsyncClient(reconnection=False)
        try:
            await sio.connect(
                self.server.url,
                namespaces=[LOCKERS],
                auth={"token": self.server.token(), "replay": False},
                transports=["websocket"],
                wait_timeout=WAIT,
            )
            for n in itertools.count():
                if self._done(limit):
                    return
                answer = await sio.call(
                    "publish", locker_event(n, self.kiosk), namespace=LOCKERS, timeout=5
                )
                if answer.get("ok"):
                    self._ack(answer["event"])
                else:
                    self.failed += 1
        except (socketio.exceptions.SocketIOError, OSError):
            self.failed += 1  # the server died under us: the call in flight is unacked
        finally:
            await sio.disconnect()
