"""LockerbusClient / KioskClient: python-socketio clients that stay correct across drops.

What this adds to ``socketio.AsyncClient`` (docs/client.md has the detail):

* one Socket.IO client per namespace, because python-socketio sends the same
  ``auth`` to every namespace of a client while replay positions are per
  namespace; each reconnect sends ``{token, last_seq, epoch}`` of the last
  event seen there, so the server replays exactly what was missed (§6);
* events already seen (same epoch, seq not above the last) are dropped;
  ``recovered`` mirrors each namespace's latest ``replay_complete``;
* its own reconnect loop (exponential backoff with jitter) that also covers
  the first connect and server-side disconnects, and stops on a refused token;
* an ordered, bounded offline queue (optionally on disk) for publishes, each
  sent after the previous one was acked;
* ``@client.on_command``: the handler's return value becomes the kiosk's ack.

It imports no server code: only socketio, the event vocabulary and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import socketio

from .events import EVENT_TYPES, EVENTS_NS, NAMESPACE_ROOMS, NAMESPACES, Event

log = logging.getLogger("lockerbus.client")

Handler = Callable[[Event], Awaitable[None] | None]
CommandHandler = Callable[[dict[str, Any]], Any]

#: refusals that retrying with the same token cannot fix
FATAL_REFUSALS: Final = frozenset({"unauthorized", "forbidden", "bad_request"})
#: publish errors worth retrying: the server, not the event, is the problem
TRANSIENT_ERRORS: Final = frozenset({"rate_limited", "store_unavailable", "internal_error"})
ANSWER_KEYS: Final = ("success", "message", "error", "response_data")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Tunables of a client; the defaults suit a kiosk on a flaky link."""

    reconnect_first_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    queue_size: int = 1000
    queue_path: str | None = None
    ack_timeout: float = 10.0
    connect_timeout: float = 10.0
    transient_retries: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_first_delay <= self.reconnect_max_delay:
            raise ValueError("need 0 < reconnect_first_delay <= reconnect_max_delay")
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.ack_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("ack_timeout and connect_timeout must be > 0")


class ClientError(Exception):
    """Root of the client's errors."""


class PublishRejected(ClientError):
    """The server refused an event (``{ok: false, error}``); it is not retried."""

    def __init__(self, error: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        self.code: str = str(error.get("code", "error"))
        self.message: str = str(error.get("message", ""))
        self.fields: dict[str, Any] = dict(error.get("fields") or {})
        self.payload = dict(payload)
        super().__init__(f"{self.code}: {self.message}")


class PublishDropped(ClientError):
    """The offline queue was full and this event, the oldest, was dropped."""


class ConnectionRefused(ClientError):
    """The server refused the connection with a code retrying cannot fix."""

    def __init__(self, namespace: str, code: str, message: str) -> None:
        self.namespace, self.code, self.message = namespace, code, message
        super().__init__(f"{namespace}: {code}: {message}")


class ClientClosed(ClientError):
    """The client was closed before the operation finished."""


def backoff_delay(attempt: int, first: float, maximum: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of the step.

    The floor keeps a fleet from reconnecting in lock-step without ever
    hammering a server that is starting up.
    """
    step = min(maximum, first * 2.0 ** min(attempt, 32))
    return step / 2 + random.uniform(0, step / 2)


def command_answer(result: Any) -> dict[str, Any]:
    """A command handler's return value as the kiosk's ack (contract §5).

    None -> success; a bool -> success flag; a str -> success with message; a
    dict with ``success`` -> as given (known keys only); another dict ->
    success with it as ``response_data``.
    """
    if result is None:
        return {"success": True}
    if isinstance(result, bool):
        return {"success": result}
    if isinstance(result, str):
        return {"success": True, "message": result}
    if isinstance(result, Mapping):
        if "success" in result:
            answer = {k: result[k] for k in ANSWER_KEYS if k in result}
            answer["success"] = bool(answer["success"])
            return answer
        return {"success": True, "response_data": dict(result)}
    raise TypeError(
        f"a command handler returned {type(result).__name__}: return None/bool/str/dict"
    )


# --------------------------------------------------------------------------
# the outgoing queue


@dataclass(slots=True)
class _Item:
    id: int
    payload: dict[str, Any]
    attempts: int = 0


class _DiskQueue:
    """The unsent events in a small SQLite file, so a rebooted kiosk keeps them.

    aiosqlite runs every statement on its own thread, off the event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Any = None

    async def open(self) -> list[_Item]:
        import aiosqlite

        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"
        )
        await self._db.commit()
        async with self._db.execute("SELECT id, payload FROM outbox ORDER BY id") as cursor:
            rows = await cursor.fetchall()
        return [_Item(int(row[0]), json.loads(row[1])) for row in rows]

    async def add(self, item: _Item) -> None:
        await self._db.execute(
            "INSERT INTO outbox (id, payload) VALUES (?, ?)", (item.id, json.dumps(item.payload))
        )
        await self._db.commit()

    async def remove(self, item_id: int) -> None:
        await self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


# --------------------------------------------------------------------------
# one namespace's connection


class _Link:
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
        sio = socketio.AsyncClient(reconnection=False)
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
                    transports=["websocket"],
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
            await self._close_sio(sio)
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

    @staticmethod
    async def _close_sio(sio: socketio.AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await sio.disconnect()
        with contextlib.suppress(Exception):
            await sio.eio.disconnect()

    async def close(self) -> None:
        self._gone.set()
        if self.sio is not None:
            await self._close_sio(self.sio)


# --------------------------------------------------------------------------
# the client


class LockerbusClient:
    """A lockerbus client for scripts and services; use it as ``async with``.

    ``token`` may be a callable returning a fresh token, asked on each
    (re)connect.  ``replay`` is the ``auth`` replay choice for the first
    connect of each namespace (``{"replay": False}``, ``{"since": ...}``);
    ``positions`` resumes from known ``(last_seq, epoch)`` per namespace
    (e.g. a ``GET /api/lockers`` snapshot).  Later reconnects always resume
    from the last event seen.
    """

    def __init__(
        self,
        url: str,
        token: str | Callable[[], str],
        *,
        namespaces: Sequence[str] = NAMESPACES,
        subscribe: bool = True,
        replay: Mapping[str, Any] | None = None,
        positions: Mapping[str, tuple[int, str | None]] | None = None,
        publish_namespace: str | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        unknown = set(namespaces) - set(NAMESPACES)
        if unknown or not namespaces:
            raise ValueError(f"namespaces must be among {', '.join(NAMESPACES)}")
        self.url = url
        self._token = token
        self.options = options or ClientOptions()
        self.initial_replay: dict[str, Any] = dict(replay or {})
        self.links = {ns: _Link(self, ns, subscribe) for ns in namespaces}
        for ns, (seq, epoch) in (positions or {}).items():
            self.links[ns].seq, self.links[ns].epoch = seq, epoch
        self.publish_namespace = publish_namespace or (
            EVENTS_NS if EVENTS_NS in self.links else namespaces[0]
        )
        if self.publish_namespace not in self.links:
            raise ValueError("publish_namespace must be one of the client's namespaces")
        self._handlers: dict[str, list[Handler]] = {}
        self._rejected_handlers: list[Callable[[PublishRejected], Any]] = []
        self._command_handler: CommandHandler | None = None
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._queue: deque[_Item] = deque()
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._next_id = 1
        self._disk = _DiskQueue(self.options.queue_path) if self.options.queue_path else None
        self._send_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._inflight: _Item | None = None
        self._disk_tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.closing = False
        self.failure: ConnectionRefused | None = None
        #: events seen twice and skipped; events dropped from a full queue; rejections
        self.duplicates = 0
        self.dropped = 0
        self.rejected = 0
        self.published = 0

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> LockerbusClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the disk queue, start connecting; returns after the first attempt.

        A server that is down is not an error (the client keeps retrying and
        queues publishes); a refused token raises :class:`ConnectionRefused`.
        """
        if self._disk is not None:
            for item in await self._disk.open():
                self._queue.append(item)
                self._next_id = max(self._next_id, item.id + 1)
                self._drained.clear()
            if self._queue:
                log.info("%d unsent event(s) restored from %s", len(self._queue), self._disk.path)
        self._tasks.append(asyncio.create_task(self._dispatcher()))
        for link in self.links.values():
            link.task = asyncio.create_task(link.run())
        self._tasks.append(asyncio.create_task(self._sender()))
        await asyncio.gather(*(link.first_attempt.wait() for link in self.links.values()))
        if self.failure is not None:
            failure = self.failure
            await self.close()
            raise failure

    async def close(self) -> None:
        """Disconnect and stop; unsent events stay in the disk queue, if any."""
        if self.closing:
            return
        self.closing = True
        self._closed.set()
        for link in self.links.values():
            await link.close()
        tasks = [link.task for link in self.links.values() if link.task] + self._tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._disk_tasks:  # let settled events leave the disk queue
            await asyncio.gather(*self._disk_tasks, return_exceptions=True)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ClientClosed("closed before the event was acked"))
                future.exception()
        self._futures.clear()
        if self._disk is not None:
            await self._disk.close()

    def token(self) -> str:
        return self._token() if callable(self._token) else self._token

    def _fail(self, refusal: ConnectionRefused) -> None:
        self.failure = refusal
        for future in self._futures.values():
            if not future.done():
                future.set_exception(refusal)
                future.exception()

    # -- state ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return all(link.connected.is_set() for link in self.links.values())

    @property
    def recovered(self) -> dict[str, bool | None]:
        """Each namespace's latest ``replay_complete.recovered`` (False: resync needed)."""
        return {ns: link.recovered for ns, link in self.links.items()}

    @property
    def positions(self) -> dict[str, tuple[int | None, str | None]]:
        """Each namespace's ``(last_seq, epoch)``: what the next reconnect sends."""
        return {ns: (link.seq, link.epoch) for ns, link in self.links.items()}

    @property
    def pending(self) -> int:
        """Events queued and not yet acked."""
        return len(self._queue)

    async def wait_live(self) -> None:
        """Until every namespace is connected and its replay is complete."""
        for link in self.links.values():
            await link.live.wait()

    async def wait_sent(self) -> None:
        """Until the queue is empty (every event acked, rejected or dropped)."""
        await self._drained.wait()

    # -- receiving -------------------------------------------------------------------

    def on(self, event_type: str, handler: Handler | None = None) -> Any:
        """Register ``handler(payload)`` for an event type, or ``*`` for every type.

        Also ``replay_complete``, and ``connect``/``disconnect`` with
        ``{namespace, ...}``.  Handlers run one at a time in arrival order;
        usable as a decorator.
        """

        def register(fn: Handler) -> Handler:
            self._handlers.setdefault(event_type, []).append(fn)
            return fn

        return register(handler) if handler is not None else register

    def on_rejected(self, handler: Callable[[PublishRejected], Any]) -> Callable[..., Any]:
        """Register ``handler(error)`` for events the server refused (also when not awaited)."""
        self._rejected_handlers.append(handler)
        return handler

    def on_command(self, handler: CommandHandler) -> CommandHandler:
        """Register the command handler (decorator); its return value is the ack.

        ``handler(command)`` may be async; see :func:`command_answer` for what
        it may return.  An exception answers ``success: false`` with its text.
        """
        if EVENTS_NS not in self.links:
            raise ValueError(f"commands arrive on {EVENTS_NS}: add it to namespaces")
        self._command_handler = handler
        return handler

    def _dispatch(self, name: str, payload: Any) -> None:
        self._inbox.put_nowait((name, payload))

    async def _dispatcher(self) -> None:
        while True:
            name, payload = await self._inbox.get()
            catch_all = self._handlers.get("*", ()) if name in EVENT_TYPES else ()
            for handler in [*self._handlers.get(name, ()), *catch_all]:
                try:
                    result = handler(payload)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("handler for %s failed", name)

    async def _run_command(self, command: Any = None) -> dict[str, Any]:
        handler = self._command_handler
        if handler is None:
            return {"success": False, "error": "no command handler on this client"}
        try:
            result = handler(command)
            if asyncio.iscoroutine(result):
                result = await result
            return command_answer(result)
        except Exception as exc:
            kind = command.get("type") if isinstance(command, dict) else None
            log.warning("command %s failed: %s", kind, exc)
            return {"success": False, "error": str(exc) or type(exc).__name__}

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        room: str | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Queue an event and, with ``wait``, return its stored envelope once acked.

        Events are sent in order, one after the other's ack, whether the client
        is online or not.  Raises :class:`PublishRejected` when the server
        refuses it (never retried), :class:`PublishDropped` when the full
        queue dropped it.  With ``wait=False`` it returns once queued (and,
        with a disk queue, stored); rejections then go to ``on_rejected``.
        """
        if self.closing:
            raise ClientClosed("the client is closed")
        if self.failure is not None:
            raise self.failure
        payload: dict[str, Any] = {"type": event_type, "data": dict(data)}
        if room is not None:
            payload["room"] = room
        item = _Item(self._next_id, payload)
        self._next_id += 1
        future: asyncio.Future[Event] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._futures[item.id] = future
        if len(self._queue) >= self.options.queue_size:
            self._drop_oldest()
        self._queue.append(item)
        self._drained.clear()
        if self._disk is not None:
            await self._disk.add(item)
        self._wake_sender()
        return await future if future is not None else None

    def _drop_oldest(self) -> None:
        # the event in flight stays: its ack decides its fate
        index = 1 if self._queue and self._queue[0] is self._inflight else 0
        if index >= len(self._queue):
            return
        dropped = self._queue[index]
        del self._queue[index]
        self.dropped += 1
        log.warning(
            "offline queue full (%d): dropped the oldest event %s (%d dropped so far)",
            self.options.queue_size,
            dropped.payload.get("type"),
            self.dropped,
        )
        self._settle(dropped, error=PublishDropped("the offline queue was full"))

    def _settle(
        self, item: _Item, *, event: Event | None = None, error: Exception | None = None
    ) -> None:
        if not self._queue:
            self._drained.set()
        if self._disk is not None:
            task = asyncio.create_task(self._disk.remove(item.id))
            self._disk_tasks.add(task)
            task.add_done_callback(self._disk_tasks.discard)
        future = self._futures.pop(item.id, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(event or {})

    def _wake_sender(self) -> None:
        self._send_wake.set()

    async def _sender(self) -> None:
        """Send the queue's head, await its ack, settle it; in order, forever."""
        link = self.links[self.publish_namespace]
        opts = self.options
        while True:
            if not self._queue or not link.connected.is_set():
                self._send_wake.clear()
                await self._send_wake.wait()
                continue
            item = self._inflight = self._queue[0]
            item.attempts += 1
            try:
                answer = await self._call(link, item.payload)
            finally:
                self._inflight = None
            if answer is None:
                # no ack (dropped connection, timeout): resend once reconnected;
                # the server may have stored it, so delivery is at-least-once
                item.attempts -= 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link._gone.wait(), opts.reconnect_first_delay)
                continue
            error = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(answer, dict) and answer.get("ok") is True:
                self._queue.popleft()
                self.published += 1
                self._settle(item, event=answer.get("event"))
                continue
            error = (
                error if isinstance(error, dict) else {"code": "bad_answer", "message": str(answer)}
            )
            if error.get("code") in TRANSIENT_ERRORS and item.attempts <= opts.transient_retries:
                await asyncio.sleep(
                    backoff_delay(
                        item.attempts - 1, opts.reconnect_first_delay, opts.reconnect_max_delay
                    )
                )
                continue
            self._queue.popleft()
            self._reject(item, PublishRejected(error, item.payload))

    async def command(
        self,
        command_type: str,
        kiosk_id: str,
        *,
        locker_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Run a command at a kiosk (panel, gateway, admin); returns ``command_applied``.

        Not queued: a command is only worth running now.  The event's
        ``data.result`` says how it went (``kiosk_offline``, ``timeout``, ...).
        Raises :class:`PublishRejected` when it cannot be issued.
        """
        link = self.links.get(EVENTS_NS)
        if link is None or link.sio is None or not link.connected.is_set():
            raise ClientError(f"not connected to {EVENTS_NS}")
        body: dict[str, Any] = {"type": command_type, "kioskId": kiosk_id}
        _put(body, lockerId=locker_id, parameters=parameters, idempotency_key=idempotency_key)
        answer = await link.sio.call(
            "command",
            body,
            namespace=EVENTS_NS,
            # the server answers within its command timeout (default 10 s)
            timeout=self.options.ack_timeout + 60,
        )
        if isinstance(answer, dict) and answer.get("ok") is True:
            return dict(answer["event"])
        error = answer.get("error") if isinstance(answer, dict) else None
        raise PublishRejected(error if isinstance(error, dict) else {"code": "bad_answer"}, body)

    async def _call(self, link: _Link, payload: dict[str, Any]) -> Any:
        sio = link.sio
        if sio is None:
            return None
        call = asyncio.ensure_future(
            sio.call("publish", payload, namespace=link.namespace, timeout=self.options.ack_timeout)
        )
        gone = asyncio.ensure_future(link._gone.wait())
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            return None
        try:
            return call.result()
        except (socketio.exceptions.SocketIOError, OSError):
            return None

    def _reject(self, item: _Item, error: PublishRejected) -> None:
        self.rejected += 1
        log.warning("event %s rejected: %s", item.payload.get("type"), error)
        awaited = item.id in self._futures
        self._settle(item, error=error)
        for handler in self._rejected_handlers:
            try:
                handler(error)
            except Exception:
                log.exception("on_rejected handler failed")
        if not awaited and not self._rejected_handlers:
            log.error("unhandled rejection of %s: %s", item.payload.get("type"), error)


class KioskClient(LockerbusClient):
    """A kiosk's client: commands on /ws/events, typed helpers for what kiosks publish.

    By default it connects to /ws/events only (commands arrive there; every
    type may be published there) and asks for no replay on its first connect.
    """

    def __init__(
        self,
        url: str,
        token: str | Callable[[], str],
        kiosk_id: str,
        *,
        namespaces: Sequence[str] = (EVENTS_NS,),
        subscribe: bool = False,
        replay: Mapping[str, Any] | None = None,
        options: ClientOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            url,
            token,
            namespaces=namespaces,
            subscribe=subscribe,
            replay={"replay": False} if replay is None else replay,
            options=options,
            **kwargs,
        )
        self.kiosk_id = kiosk_id

    async def publish_locker_state_changed(
        self,
        locker_id: str,
        old_state: str,
        new_state: str,
        *,
        user_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish that one of this kiosk's lockers changed state."""
        data: dict[str, Any] = {
            "lockerId": locker_id,
            "oldState": old_state,
            "newState": new_state,
            "kioskId": self.kiosk_id,
        }
        _put(data, userId=user_id, reason=reason, metadata=metadata)
        return await self.publish("locker_state_changed", data, wait=wait)

    async def request_help(
        self,
        request_id: int,
        category: str,
        *,
        priority: str = "medium",
        locker_no: int | None = None,
        note: str | None = None,
        photo_url: str | None = None,
        user_contact: str | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish a new, open help request from this kiosk."""
        data: dict[str, Any] = {
            "id": request_id,
            "kiosk_id": self.kiosk_id,
            "category": category,
            "status": "open",
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "priority": priority,
        }
        _put(data, locker_no=locker_no, note=note, photo_url=photo_url, user_contact=user_contact)
        return await self.publish("help_requested", data, wait=wait)

    async def report_status(
        self,
        status: str,
        health_score: float,
        *,
        metrics: Mapping[str, float] | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish this kiosk's health (``system_status`` with component ``kiosk``)."""
        data: dict[str, Any] = {
            "component": "kiosk",
            "status": status,
            "health_score": health_score,
        }
        _put(data, metrics=metrics, message=message, details=details)
        return await self.publish("system_status", data, wait=wait)


def _put(target: dict[str, Any], **optional: Any) -> None:
    for key, value in optional.items():
        if value is not None:
            target[key] = dict(value) if isinstance(value, Mapping) else value


__all__ = [
    "ClientClosed",
    "ClientError",
    "ClientOptions",
    "ConnectionRefused",
    "KioskClient",
    "LockerbusClient",
    "PublishDropped",
    "PublishRejected",
    "backoff_delay",
    "command_answer",
]
