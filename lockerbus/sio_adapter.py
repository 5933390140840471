"""Every private name of python-socketio, python-engineio and asyncio we rely on.

The rest of lockerbus uses these libraries through their public API and the
small hooks defined here.  Each private name is listed in :data:`INTERNALS`;
``tests/test_sio_adapter.py`` checks every one against the installed versions
and fails naming the symbol when an upgrade removes or changes one.  pyproject.toml
caps the versions (python-socketio <6, python-engineio <5) so that happens in a
deliberate upgrade, not in a routine install.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final

import engineio
import socketio
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.base_socket import BaseSocket

from .log import server_logger
from .redisconn import where
from .sio_receive import event_loads, read_event, take_events
from .sio_rooms import ROOM_INTERNALS, RoomIndex

TESTED_SOCKETIO: Final = ("5.",)
TESTED_ENGINEIO: Final = ("4.",)
READ_SECONDS: Final = 1.0  # one pub/sub read waits at most this long
MAX_INSTANT_READS: Final = 50  # empty reads in a row that returned at once: a dead socket
RECONNECT_FIRST_SECONDS: Final = 0.25
RECONNECT_MAX_SECONDS: Final = 4.0
CLOSE_SECONDS: Final = 1.0
NOT_SUBSCRIBED: Final = "pub/sub not subscribed yet"
_EIO_PACKET_TYPES: Final = frozenset("0123456b")  # open..noop; "b": base64 binary


@dataclass(frozen=True, slots=True)
class Internal:
    """One private name: where it lives and what it must be.

    ``kind`` is "coroutine", "asyncgen" or "method" (a plain function) for a
    method of ``owner``, or "assigned" for an attribute some method of
    ``owner`` (``where``) sets.
    """

    symbol: str  # dotted, for the message
    owner: Any
    name: str
    kind: str
    where: str = "__init__"


INTERNALS: Final = (
    Internal(
        "socketio.AsyncServer._handle_eio_message",
        socketio.AsyncServer,
        "_handle_eio_message",
        "coroutine",
    ),
    Internal(
        "socketio.AsyncServer._handle_connect", socketio.AsyncServer, "_handle_connect", "coroutine"
    ),
    Internal(
        "socketio.AsyncServer._handle_event_internal",
        socketio.AsyncServer,
        "_handle_event_internal",
        "coroutine",
    ),
    Internal(
        "socketio.AsyncServer._trigger_event", socketio.AsyncServer, "_trigger_event", "coroutine"
    ),
    Internal(
        "socketio.AsyncServer._send_packet", socketio.AsyncServer, "_send_packet", "coroutine"
    ),
    Internal(
        "socketio.AsyncServer._binary_packet", socketio.AsyncServer, "_binary_packet", "assigned"
    ),
    Internal(
        "socketio.AsyncServer.manager_initialized",
        socketio.AsyncServer,
        "manager_initialized",
        "assigned",
    ),
    Internal(
        "socketio.AsyncRedisManager._listen", socketio.AsyncRedisManager, "_listen", "asyncgen"
    ),
    Internal(
        "socketio.AsyncRedisManager._publish", socketio.AsyncRedisManager, "_publish", "coroutine"
    ),
    Internal(
        "socketio.AsyncRedisManager._thread", socketio.AsyncRedisManager, "_thread", "coroutine"
    ),
    Internal(
        "socketio.AsyncRedisManager.thread",
        socketio.AsyncRedisManager,
        "thread",
        "assigned",
        "initialize",
    ),
    Internal("socketio.AsyncRedisManager.pubsub", socketio.AsyncRedisManager, "pubsub", "assigned"),
    Internal(
        "socketio.AsyncRedisManager._redis_listen_with_retries",
        socketio.AsyncRedisManager,
        "_redis_listen_with_retries",
        "asyncgen",
    ),
    Internal(
        "socketio.AsyncRedisManager._redis_connect",
        socketio.AsyncRedisManager,
        "_redis_connect",
        "method",
    ),
    Internal(
        "socketio.AsyncRedisManager.redis",
        socketio.AsyncRedisManager,
        "redis",
        "assigned",
        "_redis_connect",
    ),
    Internal("engineio.AsyncServer._async", engineio.AsyncServer, "_async", "assigned"),
    Internal(
        "engineio.async_drivers.aiohttp.WebSocket.wait", eio_aiohttp.WebSocket, "wait", "coroutine"
    ),
    Internal(
        "engineio.async_drivers.aiohttp.WebSocket.handler",
        eio_aiohttp.WebSocket,
        "handler",
        "assigned",
    ),
    Internal(
        "engineio.async_drivers.aiohttp.WebSocket._sock", eio_aiohttp.WebSocket, "_sock", "assigned"
    ),
    Internal("engineio.base_socket.BaseSocket.queue", BaseSocket, "queue", "assigned"),
    Internal("asyncio.Queue._queue", asyncio.Queue, "_queue", "assigned", "_init"),
    Internal("asyncio.Queue._getters", asyncio.Queue, "_getters", "assigned"),
    *(Internal(*spec) for spec in ROOM_INTERNALS),
)


def check_internals() -> list[str]:
    """One line per private name that is missing or changed; empty when all hold."""
    return [problem for item in INTERNALS if (problem := check_internal(item))]


def check_internal(item: Internal) -> str | None:
    """Why ``item`` no longer holds in the installed library, or None when it does."""
    if item.kind == "assigned":
        for cls in item.owner.__mro__:
            method = cls.__dict__.get(item.where)
            if method is None:
                continue
            try:
                source = inspect.getsource(method)
            except (OSError, TypeError):
                continue
            if f"self.{item.name} =" in source:
                return None
        return f"{item.symbol}: no longer set by {item.owner.__name__}.{item.where}"
    attr = getattr(item.owner, item.name, None)
    if attr is None:
        return f"{item.symbol}: removed"
    if item.kind == "coroutine" and not inspect.iscoroutinefunction(attr):
        return f"{item.symbol}: no longer a coroutine function"
    if item.kind == "asyncgen" and not inspect.isasyncgenfunction(attr):
        return f"{item.symbol}: no longer an async generator"
    if item.kind == "method" and not (
        inspect.isfunction(attr)
        and not inspect.iscoroutinefunction(attr)
        and not inspect.isasyncgenfunction(attr)
    ):
        return f"{item.symbol}: no longer a plain method"
    return None


def tested(package: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the installed ``package`` is a version this adapter was tested with."""
    return version(package).startswith(prefixes)


# -- python-socketio --------------------------------------------------------------


class HookedAsyncServer(socketio.AsyncServer):  # type: ignore[misc]
    """An AsyncServer with public hooks over its private packet handlers, and a
    receive fast path: a websocket client's EVENT is decoded where Engine.IO
    reads it and handled in one task, not through Engine.IO's per-message
    read timer and task and python-socketio's decode and second task."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handling: set[asyncio.Task[None]] = set()
        #: EVENT frames the receive fast path took (the rest went through python-socketio)
        self.events_taken = 0
        self._loads = event_loads(self.packet_class.json)
        if self.async_handlers and tested("python-engineio", TESTED_ENGINEIO):
            take_events(self.eio, self._take_event)

    def _take_event(self, eio_sid: str, text: str) -> bool:
        """Handle the frame ``text`` when it is an EVENT read as python-socketio would
        (its ``_handle_event``); False: Engine.IO and python-socketio handle it."""
        if eio_sid in self._binary_packet:  # python-socketio reads it as an attachment
            return False
        event = read_event(text, self._loads)
        if event is None:
            return False
        namespace, ack_id, data = event
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            self.logger.warning("%s is not connected to namespace %s", sid, namespace)
            return True
        self.events_taken += 1
        task = asyncio.ensure_future(
            self._handle_event_internal(self, sid, eio_sid, data, namespace, ack_id)
        )
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        return True

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # python-socketio logs a traceback for a frame it cannot decode (an
        # integer over 100 digits, JSON nested too deep, a bad packet type)
        # and drops it: an ack-waiting client would hang.  Report it instead.
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            self.malformed_packet(eio_sid, exc)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and self.manager.is_connected(sid, namespace):
            self.connection_established(namespace, sid)

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        # python-socketio's, with one change: an ack that is one JSON object goes to
        # send_ack (encoded with orjson, written like a broadcast) when it takes it
        result = await server._trigger_event(data[0], namespace, sid, *data[1:])
        if result == self.not_handled or id is None:
            return
        if isinstance(result, dict) and self.send_ack(eio_sid, namespace, id, result):
            return
        if result is None:
            args = []
        elif isinstance(result, tuple):
            args = list(result)
        else:
            args = [result]
        await server._send_packet(
            eio_sid, self.packet_class(socketio.packet.ACK, namespace=namespace, id=id, data=args)
        )

    def send_ack(self, eio_sid: str, namespace: str, ack_id: Any, answer: dict[str, Any]) -> bool:
        """Send a handler's ``answer`` as the ack ``ack_id``; False: python-socketio sends it."""
        return False

    def malformed_packet(self, eio_sid: str, exc: Exception) -> None:
        """A client sent a packet python-socketio could not handle."""

    def connection_established(self, namespace: str, sid: str) -> None:
        """The CONNECT answer for ``sid`` is queued: what follows goes after it."""

    def start_manager(self) -> None:
        """Start the client manager's listener now, not at the first connection.

        An instance of a cluster must hear the others from the start.
        """
        if not getattr(self, "manager_initialized", True):
            self.manager_initialized = True
            self.manager.initialize()


class HookedRedisManager(RoomIndex, socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager with a public tap on its channel (and
    :class:`~lockerbus.sio_rooms.RoomIndex`: disconnects O(the sid's rooms)).

    :meth:`intercept` sees each message first and keeps the ones it returns
    True for; ``alive``/``publish``/``restart`` let a supervisor notice a
    listener that died or went deaf and start it again, and ``problem`` says
    why it cannot hear now.  Its listener loop reads in bounded steps (a cut
    link cannot hang it, a dead socket cannot make it spin) and subscribes
    again with backoff after a failure.
    """

    def __init__(
        self, url: str, *, channel: str, redis_options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(url, channel=channel, redis_options=redis_options)
        #: why the channel is not heard now (None: subscribed and reading)
        self.failure: str | None = NOT_SUBSCRIBED
        self._where = where(url)
        self._internals = tested("python-socketio", TESTED_SOCKETIO) and all(
            hasattr(self, name)
            for name in (
                "_thread",
                "_publish",
                "_listen",
                "_redis_listen_with_retries",
                "_redis_connect",
            )
        )
        if not self._internals:
            server_logger.warning(
                "python-socketio %s is untested here: a dead pub/sub listener is not restarted",
                version("python-socketio"),
            )

    async def intercept(self, message: Any) -> bool:
        """True when ``message`` was handled here and python-socketio must not see it."""
        return False

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            if not await self.intercept(message):
                yield message

    async def publish(self, data: dict[str, Any]) -> None:
        """Put ``data`` on the channel, as python-socketio does its own messages."""
        await self._publish(data)

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        """Replaces python-socketio's loop (whose reads wait forever on a dead
        connection): a failure is recorded (``problem``) and the subscription made
        again with backoff.  Yields raw pub/sub messages; ``_listen`` filters them."""
        delay = RECONNECT_FIRST_SECONDS
        while True:
            try:
                async for message in self._subscription():
                    delay = RECONNECT_FIRST_SECONDS
                    yield message
            except Exception as exc:
                failure = f"pub/sub {self._where}: {exc or type(exc).__name__}"
                if failure != self.failure:
                    server_logger.error("cluster: %s; subscribing again", failure)
                self.failure = failure
                self.subscription_lost(failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _subscription(self) -> AsyncIterator[Any]:
        """One subscription on one connection, read in bounded steps until it fails."""
        if self.redis is None:
            self._redis_connect()  # the client (and pool) python-socketio publishes with
        pubsub = self.pubsub = self.redis.pubsub()
        loop = asyncio.get_running_loop()
        try:
            await pubsub.subscribe(self.channel)
            instant = 0
            while True:
                began = loop.time()
                message = await pubsub.get_message(timeout=READ_SECONDS)
                if message is None:
                    # A dead socket can make every read return at once: redis-py
                    # <8.2 took ETIMEDOUT for "no message yet" and spun here.
                    instant = instant + 1 if loop.time() - began < READ_SECONDS / 2 else 0
                    if instant >= MAX_INSTANT_READS:
                        raise ConnectionError("pub/sub reads return at once: connection dead")
                    continue
                instant = 0
                if message.get("type") == "subscribe":
                    if self.failure not in (None, NOT_SUBSCRIBED):
                        server_logger.warning("cluster: pub/sub subscribed again")
                    self.failure = None  # Redis confirmed: the channel is heard again
                    continue
                yield message
        finally:
            await _close_quietly(pubsub)

    def subscription_lost(self, failure: str) -> None:
        """The subscription failed (or could not be made); it is made again shortly."""

    def problem(self) -> str | None:
        """Why this instance cannot hear the channel now, or None."""
        if not self.alive():
            return "pub/sub listener stopped"
        # an untested python-socketio may not run the loop above: then nothing is known
        return self.failure if self._internals else None

    def alive(self) -> bool:
        """Whether the listener task is still running."""
        thread = getattr(self, "thread", None)
        return thread is None or not thread.done()

    def restart(self) -> None:
        """Drop the listener and its subscription; start a fresh one now."""
        if not self._internals or self.server is None:
            return
        thread, pubsub = getattr(self, "thread", None), getattr(self, "pubsub", None)
        if thread is not None:
            thread.cancel()
        if pubsub is not None:
            self.server.start_background_task(_close_quietly, pubsub)
        self.failure = NOT_SUBSCRIBED
        self.thread = self.server.start_background_task(self._thread)


async def _close_quietly(pubsub: Any) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):  # over a cut link, closing can hang
            await pubsub.aclose()
    except Exception:
        server_logger.debug("closing a dropped pub/sub connection failed")


# -- python-engineio and asyncio.Queue ----------------------------------------------


def fast_path_available(eio: Any) -> bool:
    """Whether the Sender may write to Engine.IO sockets directly."""
    return tested("python-engineio", TESTED_ENGINEIO) and hasattr(eio, "sockets")


def writer_idle(queue: asyncio.Queue[Any]) -> bool:
    """Nothing queued and the writer task waiting in ``get()``: it wrote all it took."""
    return not queue._queue and bool(queue._getters)  # type: ignore[attr-defined]


def drop_unsent(eio: Any) -> int:
    """Drop what waits in every Engine.IO socket's send queue; the number dropped.

    ``eio.disconnect()`` waits until each socket's queue is taken, which a
    long-polling client that never polls again never does.
    """
    dropped = 0
    for socket in list(eio.sockets.values()):
        queue = socket.queue
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()
            dropped += 1
    return dropped


def track_websockets(eio: Any, transports: weakref.WeakKeyDictionary[Any, Any]) -> None:
    """Remember the TCP transport under each websocket Engine.IO socket.

    Engine.IO's websocket writer takes a whole batch off the socket's queue
    and then awaits each send: when the client stops reading, that await
    never returns, and neither closing the socket nor its Socket.IO
    namespaces ends it (the writer, its batch and the connection stay until
    the process exits).  Aborting the transport is what frees them.
    """
    drivers = getattr(eio, "_async", None)
    if not isinstance(drivers, dict) or drivers.get("websocket") is None:
        return
    base = drivers["websocket"]

    class TrackedWebSocket(base):  # type: ignore[misc, valid-type]
        async def __call__(self, environ: dict[str, Any]) -> Any:
            owner = getattr(self.handler, "__self__", None)
            request = environ.get("aiohttp.request")
            if owner is not None and request is not None and request.transport is not None:
                transports[owner] = request.transport
            try:
                return await super().__call__(environ)
            except Exception as exc:
                # Engine.IO's read loop lets a frame it cannot decode (empty, an
                # unknown packet type, JSON nested too deep) escape, skipping its
                # own cleanup: the writer task and the Socket.IO session would
                # linger until the ping timeout.  Finish that cleanup here.
                server_logger.warning("closing websocket: malformed frame: %.200s", exc)
                if owner is None:
                    raise
                await owner.queue.put(None)  # ends the writer, which closes the websocket
                await owner.close(wait=False, abort=True, reason=eio.reason.TRANSPORT_ERROR)
                return self._sock

        async def wait(self) -> Any:
            data = await super().wait()
            if isinstance(data, str) and (not data or data[0] not in _EIO_PACKET_TYPES):
                # Engine.IO would log a traceback per such frame and keep reading;
                # an OSError here takes its own clean "connection lost" path.
                server_logger.warning("closing websocket: not an Engine.IO frame: %.40r", data)
                raise OSError("not an Engine.IO frame")
            return data

    # a copy: the driver's table is shared by every server in the process
    eio._async = {**drivers, "websocket": TrackedWebSocket}


__all__ = [
    "INTERNALS",
    "HookedAsyncServer",
    "HookedRedisManager",
    "check_internals",
    "drop_unsent",
    "fast_path_available",
    "track_websockets",
    "writer_idle",
]
