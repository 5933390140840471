"""EventBus: the one publish pipeline every entry point goes through.

authorize -> validate -> append to the store (assigns seq/epoch) -> broadcast.
Socket ``publish``, ``POST /api/events`` and the in-process ``emit_*`` API all
call :meth:`EventBus.publish`, so an event that fails any step is never
broadcast and every caller gets the same typed error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from .auth import Principal, authorize_publish, authorize_scope, check_publish_room
from .delivery.hub import Broadcaster
from .errors import (
    BadRequestError,
    ConflictError,
    LockerbusError,
    StoreUnavailableError,
    UnknownEventTypeError,
)
from .events import ROUTES, Event
from .limits import TokenBucket
from .log import server_logger
from .metrics import Metrics
from .service import EventService, check_version
from .store import EventStore
from .tags import source, tag_event

PUBLISH_KEYS: Final = frozenset({"type", "data", "room", "version"})


class EventBus:
    """Validates, authorizes, stores and broadcasts events."""

    def __init__(
        self,
        service: EventService,
        store: EventStore,
        metrics: Metrics,
        broadcaster: Broadcaster | None = None,
        *,
        on_stored: Sequence[Callable[[Event], None]] = (),
        help_kiosk: Callable[[int], Awaitable[str | None]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.service = service
        self.store = store
        self.metrics = metrics
        self.broadcaster = broadcaster
        #: called with each stored event, in seq order, before it is broadcast
        #: (projections); a listener must be quick and must not raise
        self.on_stored: tuple[Callable[[Event], None], ...] = tuple(on_stored)
        #: the kiosk of a help request by id (None: unknown), for help_status_updated's tag
        self.help_kiosk = help_kiosk
        self._clock = clock
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return self._accepting

    def stop_accepting(self) -> None:
        """Refuse new publishes from now on (shutdown): they answer store_unavailable."""
        self._accepting = False

    async def drain(self, timeout_seconds: float) -> bool:
        """Wait for in-flight publishes to be stored and broadcast; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True

    async def publish_request(
        self,
        payload: Any,
        *,
        principal: Principal,
        bucket: TokenBucket | None = None,
    ) -> Event:
        """Publish a client's ``{type, data, room?, version?}`` (socket or HTTP)."""
        return await self.publish(None, None, principal=principal, bucket=bucket, request=payload)

    async def publish(
        self,
        event_type: Any,
        data: Any,
        *,
        principal: Principal | None = None,
        room: Any = None,
        ttl_seconds: float | None = None,
        bucket: TokenBucket | None = None,
        request: Any = None,
    ) -> Event:
        """Publish one event; ``principal`` None is the server itself.

        ``request`` is a client's whole ``{type, data, room?, version?}``
        object, given instead of ``event_type``/``data``/``room``.  Raises a
        :class:`LockerbusError` subclass with the contract's code; nothing is
        stored or broadcast when it does.
        """
        accepted_at = self._clock()
        try:
            if bucket is not None:
                bucket.check()  # first: a flood costs no validation work
            lenient = False
            if request is not None:
                event_type, data, room, lenient = _read_request(request)
            if not isinstance(event_type, str) or event_type not in ROUTES:
                raise UnknownEventTypeError(f"unknown event type {str(event_type)[:64]!r}")
            self.service.check_size(data)
            checked_room = check_publish_room(event_type, room)
            if principal is not None:
                # before validation: a caller learns nothing of a schema it may not use
                authorize_publish(principal, event_type, data, checked_room)
            valid = self.service.validate(event_type, data, lenient=lenient)
            event = self.service.create_event(event_type, valid, room=checked_room, validated=True)
            await self._tag(event, principal)
            if principal is not None:
                authorize_scope(principal, event)
            stored = await self._append(event, ttl_seconds)
        except LockerbusError as exc:
            self.metrics.reject(exc.code)
            server_logger.info(
                "publish rejected code=%s type=%.64s by=%s: %s",
                exc.code,
                event_type,
                principal.sub if principal else "server",
                exc.message,
            )
            raise
        self._accepted(stored, accepted_at)
        return stored

    def _accepted(self, stored: Event, accepted_at: float) -> None:
        self.metrics.published.labels(stored["type"]).inc()
        for listener in self.on_stored:
            try:
                listener(stored)
            except Exception:  # a projection bug must not fail a stored publish
                server_logger.exception("on_stored listener failed")
        if self.broadcaster is not None:
            self.broadcaster.broadcast(stored, accepted_at)

    async def _append(self, event: Event, ttl_seconds: float | None) -> Event:
        if not self._accepting:
            raise StoreUnavailableError("the server is shutting down; publish elsewhere")
        self._inflight += 1
        self._idle.clear()
        try:
            return await self.store.append(event, ttl_seconds=ttl_seconds)
        except (StoreUnavailableError, ConflictError):  # ConflictError: the state refused it
            raise
        except Exception as exc:  # a backend bug must not look like success
            server_logger.exception("store append failed")
            raise StoreUnavailableError(f"the event store failed: {exc}") from exc
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _tag(self, event: Event, principal: Principal | None) -> None:
        """Derive tags and source once, before the event is stored (contract §10)."""
        help_kiosk = None
        if event["type"] == "help_status_updated" and self.help_kiosk is not None:
            help_kiosk = await self.help_kiosk(event["data"]["id"])
        publisher = source(principal.sub, principal.role) if principal else source(None, None)
        tag_event(event, publisher, help_kiosk=help_kiosk)

    async def emit(self, event: Event) -> Event:
        """Store and broadcast an event the server built (``EventService.create_*``)."""
        accepted_at = self._clock()
        try:
            if "tags" not in event:
                await self._tag(event, None)
            stored = await self._append(event, None)
        except LockerbusError as exc:
            self.metrics.reject(exc.code)
            raise
        self._accepted(stored, accepted_at)
        return stored

    # -- the seed's in-process API: same arguments as EventService.create_* --

    async def emit_locker_state_changed(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a locker state change as the server."""
        return await self.emit(self.service.create_locker_state_changed_event(*args, **kwargs))

    async def emit_help_requested(
        self, data: Mapping[str, Any], priority: str | None = None
    ) -> Event:
        """Publish a help request as the server; ``priority`` apart, as in the seed."""
        return await self.emit(self.service.create_help_requested_event(data, priority))

    async def emit_help_status_updated(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a help request's status change as the server."""
        return await self.emit(self.service.create_help_status_updated_event(*args, **kwargs))

    async def emit_command_applied(
        self, command: Mapping[str, Any], result: Mapping[str, Any]
    ) -> Event:
        """Publish the record of a command and its result as the server."""
        return await self.emit(self.service.create_command_applied_event(command, result))

    async def emit_system_status(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a component's health as the server."""
        return await self.emit(self.service.create_system_status_event(*args, **kwargs))


def _read_request(request: Any) -> tuple[Any, Any, Any, bool]:
    """``(type, data, room, lenient)`` from a client's publish object."""
    if not isinstance(request, Mapping):
        raise BadRequestError("publish expects an object {type, data, room?, version?}")
    unknown = set(request) - PUBLISH_KEYS
    if unknown:
        names = ", ".join(sorted(str(k)[:64] for k in unknown))
        raise BadRequestError(f"unknown publish fields: {names}")
    lenient = "version" in request and check_version(request["version"])
    return request.get("type"), request.get("data"), request.get("room"), lenient
