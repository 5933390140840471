"""LockerbusClient: one Socket.IO client per namespace, replay positions, handlers, commands."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..events import EVENT_TYPES, EVENTS_NS, NAMESPACES, Event
from .link import Link
from .options import (
    ClientClosed,
    ClientError,
    ClientOptions,
    CommandHandler,
    ConnectionRefused,
    Handler,
    PublishRejected,
    command_answer,
    log,
    put_optional,
)
from .outbox import DiskQueue, Item
from .publishing import Publisher


class LockerbusClient(Publisher):
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
        self.links = {ns: Link(self, ns, subscribe) for ns in namespaces}
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
        self._queue: deque[Item] = deque()
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._next_id = 1
        self._disk = DiskQueue(self.options.queue_path) if self.options.queue_path else None
        self._send_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._inflight: Item | None = None
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
        await asyncio.gather(*(link.close() for link in self.links.values()))
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

        Also ``replay_complete``, ``state`` (after ``recovered: false``; see
        :mod:`lockerbus.client.state`), and ``connect``/``disconnect`` with
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
        put_optional(
            body, lockerId=locker_id, parameters=parameters, idempotency_key=idempotency_key
        )
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
