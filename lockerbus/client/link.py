"""One namespace's connection: its socketio client, replay position and reconnect loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import engineio
import socketio

from ..events import EVENT_TYPES, EVENTS_NS, NAMESPACE_ROOMS
from .options import FATAL_REFUSALS, ConnectionRefused, backoff_delay, log
from .state import STATE_ROUTES, fetch_state

if TYPE_CHECKING:
    from .core import LockerbusClient


#: packets the client reads from one long-polling answer (the server's send queue
#: holds at most LOCKERBUS_MAX_SEND_QUEUE of them, 5,000 by default)
POLLING_PAYLOAD_PACKETS = 65_536


class Link:
    """One namespace: its socketio client, replay position and reconnect loop."""

    def __init__(self, client: LockerbusClient, namespace: str, subscribe: bool) -> None:
        self.client = client
        self.namespace = namespace
        self.subscribe = subscribe
        self.sio: socketio.AsyncClient | None = None
        self.seq: int | None = None
        self.epoch: str | None = None
        self.recovered: bool | None = None
        self.connected = asyncio.Event()
        self.live = asyncio.Event()  # replay_complete seen on the current connection
        self.first_attempt = asyncio.Event()
        self.refusal: ConnectionRefused | None = None
        self._gone = asyncio.Event()
        self._last_error: Any = None
        self.task: asyncio.Task[None] | None = None
        self.connects = 0
        #: the latest state loaded after a ``recovered: false`` (see client.state)
        self.state: dict[str, Any] | None = None
        self._rebuilds: set[asyncio.Task[None]] = set()
        # python-engineio must not be told to disconnect twice at once: the
        # second call drains the send queue, taking the stop sentinel meant for
        # the write loop, and the first then waits out a ping interval (~30 s)
        self._closing_sio = asyncio.Lock()

    def auth(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"token": self.client.token()}
        if self.seq is not None:
            auth["last_seq"] = self.seq
            if self.epoch is not None:
                auth["epoch"] = self.epoch
        else:
            auth.update(self.client.initial_replay)
        return auth

    def _new_sio(self) -> socketio.AsyncClient:
        opts = self.client.options
        # python-engineio reads at most 16 packets from a long-polling answer by
        # default: a replay is more, and the client would never get connected
        payload = engineio.payload.Payload
        payload.max_decode_packets = max(payload.max_decode_packets, POLLING_PAYLOAD_PACKETS)
        extra: dict[str, Any] = {}
        if opts.ca_file is not None:
            extra["http_session"] = functools.partial(_session_trusting, opts.ca_file)
        sio = socketio.AsyncClient(reconnection=False, ssl_verify=opts.ssl_verify, **extra)
        ns = self.namespace
        for name in EVENT_TYPES:
            sio.on(name, self._event_handler(name), namespace=ns)
        sio.on("replay_complete", self._replay_complete, namespace=ns)
        sio.on("disconnect", self._disconnected, namespace=ns)
        sio.on("connect_error", self._connect_error, namespace=ns)
        if ns == EVENTS_NS:
            sio.on("command", self.client._run_command, namespace=ns)
        return sio

    def _event_handler(self, name: str) -> Callable[[Any], None]:
        def handler(event: Any = None) -> None:
            # synchronous: events are checked in the order they arrived
            if not isinstance(event, dict):
                return
            seq, epoch = event.get("seq"), event.get("epoch")
            known = self.seq is not None and epoch == self.epoch
            if known and isinstance(seq, int) and self.seq is not None and seq <= self.seq:
                self.client.duplicates += 1
                return
            if isinstance(seq, int):
                self.seq, self.epoch = seq, epoch
            self.client._dispatch(name, event)

        return handler

    def _replay_complete(self, info: Any = None) -> None:
        if not isinstance(info, dict):
            return
        self.recovered = info.get("recovered")
        last_seq, epoch = info.get("last_seq"), info.get("epoch")
        if isinstance(last_seq, int) and (
            self.seq is None or epoch != self.epoch or last_seq > self.seq
        ):
            # the replay covered up to last_seq, held or not: resume after it
            self.seq, self.epoch = last_seq, epoch
        if self.recovered is False:
            log.warning("%s: events were lost while offline (recovered=false)", self.namespace)
        self.live.set()
        self.client._dispatch("replay_complete", info)
        if self.recovered is False and self.namespace in STATE_ROUTES:
            task = asyncio.create_task(self._rebuild(), name=f"lockerbus-state {self.namespace}")
            self._rebuilds.add(task)
            task.add_done_callback(self._rebuilds.discard)

    async def _rebuild(self) -> None:
        """History was lost: hand the handlers the state instead (contract §11)."""
        client = self.client
        try:
            state = await fetch_state(client.url, client.token(), self.namespace, client.options)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("%s: could not load the state to rebuild from: %s", self.namespace, exc)
            return
        self.state = state
        client._dispatch("state", state)

    def _disconnected(self, reason: Any = None) -> None:
        if self.connected.is_set():
            self.client._dispatch("disconnect", {"namespace": self.namespace, "reason": reason})
        self.connected.clear()
        self.live.clear()
        self._gone.set()

    def _connect_error(self, data: Any = None) -> None:
        self._last_error = data

    def _refusal(self) -> ConnectionRefused | None:
        data = self._last_error
        if not isinstance(data, dict):
            return None
        inner = data.get("data")
        detail: dict[str, Any] = inner if isinstance(inner, dict) else data
        code = str(detail.get("code") or data.get("message") or "")
        if code not in FATAL_REFUSALS:
            return None
        return ConnectionRefused(self.namespace, code, str(detail.get("message", "")))

    async def run(self) -> None:
        """Connect, stay connected, reconnect with backoff; until closed or refused."""
        opts = self.client.options
        attempt = 0
        while not self.client.closing:
            self._gone.clear()
            self._last_error = None
            sio = self.sio = self._new_sio()
            try:
                await sio.connect(
                    self.client.url,
                    auth=self.auth(),
                    namespaces=[self.namespace],
                    transports=list(opts.transports),
                    headers=dict(opts.headers),
                    socketio_path=opts.socketio_path,
                    wait_timeout=opts.connect_timeout,
                )
            except (socketio.exceptions.ConnectionError, OSError, ValueError) as exc:
                refusal = self._refusal()
                if refusal is not None:
                    self.refusal = refusal
                    log.error("connection refused, not retrying: %s", refusal)
                    self.first_attempt.set()
                    self.client._fail(refusal)
                    return
                log.info("%s: connect failed (%s); retrying", self.namespace, exc)
                self.first_attempt.set()
                await self._pause(
                    backoff_delay(attempt, opts.reconnect_first_delay, opts.reconnect_max_delay)
                )
                attempt += 1
                continue
            connected_at = asyncio.get_running_loop().time()
            self.connects += 1
            self.connected.set()
            self.client._dispatch("connect", {"namespace": self.namespace, "count": self.connects})
            self.first_attempt.set()
            if self.subscribe:
                with contextlib.suppress(socketio.exceptions.SocketIOError):
                    await sio.call(
                        "subscribe",
                        {"room": NAMESPACE_ROOMS[self.namespace]},
                        namespace=self.namespace,
                        timeout=opts.ack_timeout,
                    )
            self.client._wake_sender()
            await self._gone.wait()
            await self._close(sio)
            if not self.client.closing:
                # a connection that is dropped soon after it was made (a server
                # that keeps refusing us work) backs off further each time
                lasted = asyncio.get_running_loop().time() - connected_at
                attempt = 0 if lasted >= opts.reconnect_max_delay else attempt
                log.info("%s: disconnected; reconnecting", self.namespace)
                await self._pause(
                    backoff_delay(attempt, opts.reconnect_first_delay, opts.reconnect_max_delay)
                )
                attempt += 1

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client._closed.wait(), seconds)

    async def _close(self, sio: socketio.AsyncClient) -> None:
        async with self._closing_sio:
            with contextlib.suppress(Exception):
                await sio.disconnect()
            with contextlib.suppress(Exception):
                await sio.eio.disconnect()

    async def close(self) -> None:
        for task in list(self._rebuilds):
            task.cancel()
        self._gone.set()
        if self.sio is not None:
            await self._close(self.sio)


def _session_trusting(ca_file: str) -> Any:
    """An aiohttp session verifying TLS against ``ca_file`` (engine.io closes it)."""
    context = ssl.create_default_context(cafile=ca_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
