"""The publishing half of LockerbusClient: an ordered, bounded queue sent one ack at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import socketio

from ..events import Event
from .link import Link
from .options import (
    TRANSIENT_ERRORS,
    ClientClosed,
    ClientOptions,
    ConnectionRefused,
    PublishDropped,
    PublishRejected,
    backoff_delay,
    log,
)
from .outbox import DiskQueue, Item


class Publisher:
    """Queue, sender task and settling of publishes; mixed into LockerbusClient."""

    links: dict[str, Link]
    options: ClientOptions
    publish_namespace: str
    closing: bool
    failure: ConnectionRefused | None
    _queue: deque[Item]
    _futures: dict[int, asyncio.Future[Event]]
    _next_id: int
    _disk: DiskQueue | None
    _send_wake: asyncio.Event
    _drained: asyncio.Event
    _inflight: Item | None
    _disk_tasks: set[asyncio.Task[None]]
    _rejected_handlers: list[Callable[[PublishRejected], Any]]
    dropped: int
    rejected: int
    published: int

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
        item = Item(self._next_id, payload)
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
        self, item: Item, *, event: Event | None = None, error: Exception | None = None
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

    async def _call(self, link: Link, payload: dict[str, Any]) -> Any:
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

    def _reject(self, item: Item, error: PublishRejected) -> None:
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
