"""EventBus: the one publish pipeline every entry point goes through.

authorize -> validate -> append to the store (assigns seq/epoch) -> broadcast.
Socket ``publish``, ``POST /api/events`` and the in-process ``emit_*`` API all
call :meth:`EventBus.publish`, so an event that fails any step is never
broadcast and every caller gets the same typed error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .auth import Principal, authorize_publish, authorize_scope, check_publish_room
from .delivery.hub import Broadcaster
from .errors import (
    ConflictError,
    LockerbusError,
    UnknownEventTypeError,
)
from .events import ROUTES, Event
from .intake import InflightGate, Prepared, Published, append_error, duplicate_answer, read_request
from .limits import TokenBucket
from .log import server_logger
from .metrics import Metrics
from .seed_api import SeedApi
from .service import EventService
from .store import Appended, DuplicateEvent, EventStore
from .tags import source, tag_event


class EventBus(SeedApi):
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
        #: in-flight appends, counted so a shutdown can let them finish
        self.gate = InflightGate()

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return self.gate.accepting

    def stop_accepting(self) -> None:
        """Refuse new publishes from now on (shutdown): they answer store_unavailable."""
        self.gate.accepting = False

    async def drain(self, timeout_seconds: float) -> bool:
        """Wait for in-flight publishes to be stored and broadcast; False on timeout."""
        return await self.gate.drain(timeout_seconds)

    async def publish_request(
        self,
        payload: Any,
        *,
        principal: Principal,
        bucket: TokenBucket | None = None,
    ) -> Published:
        """Publish a client's ``{type, data, room?, version?, id?}`` (socket or HTTP); a held
        ``id`` answers the stored event as a duplicate, or ConflictError (§12)."""
        prepared = await self._prepare(None, None, principal, bucket, None, payload)
        try:
            stored = await self._append(prepared.event, None)
        except DuplicateEvent as dup:
            return self._duplicate(prepared, dup.event, principal)
        except LockerbusError as exc:
            self._rejected(exc, prepared.event_type, principal)
            raise
        self._accepted(stored, prepared.accepted_at)
        return Published(stored)

    async def publish_batch(
        self,
        payloads: Sequence[Any],
        *,
        principal: Principal,
        bucket: TokenBucket | None = None,
    ) -> list[Published | LockerbusError]:
        """Publish each request as one publish, in order, in one store write (§12); each
        item succeeds or fails on its own, and seqs follow item order per namespace."""
        outcomes: list[Published | LockerbusError | Prepared] = []
        for payload in payloads:
            try:
                outcomes.append(await self._prepare(None, None, principal, bucket, None, payload))
            except LockerbusError as exc:
                outcomes.append(exc)
        prepared = [o for o in outcomes if isinstance(o, Prepared)]
        stored = await self._append_many([p.event for p in prepared])
        answers = iter(stored)
        results: list[Published | LockerbusError] = []
        for outcome in outcomes:
            if not isinstance(outcome, Prepared):
                results.append(outcome)
                continue
            results.append(self._settle(outcome, next(answers), principal))
        return results

    def _settle(
        self, prepared: Prepared, outcome: Appended | LockerbusError, principal: Principal
    ) -> Published | LockerbusError:
        """One batch item's answer from its store outcome (broadcast when stored)."""
        try:
            if isinstance(outcome, DuplicateEvent):
                return self._duplicate(prepared, outcome.event, principal)
            if isinstance(outcome, Exception):
                raise append_error(prepared.event, outcome)
        except LockerbusError as exc:
            self._rejected(exc, prepared.event_type, principal)
            return exc
        self._accepted(outcome, prepared.accepted_at)
        return Published(outcome)

    def _duplicate(self, prepared: Prepared, stored: Event, principal: Principal) -> Published:
        """The answer to a held id: the stored event, or ConflictError (contract §12)."""
        try:
            return duplicate_answer(prepared.event, stored, principal)
        except ConflictError as error:
            self._rejected(error, prepared.event_type, principal)
            raise

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
        prepared = await self._prepare(event_type, data, principal, bucket, room, request)
        try:
            stored = await self._append(prepared.event, ttl_seconds)
        except DuplicateEvent as dup:  # only a client-chosen id can be held already
            raise ConflictError(f"event {dup.event.get('id')} is stored already") from None
        except LockerbusError as exc:
            self._rejected(exc, prepared.event_type, principal)
            raise
        self._accepted(stored, prepared.accepted_at)
        return stored

    async def _prepare(
        self,
        event_type: Any,
        data: Any,
        principal: Principal | None,
        bucket: TokenBucket | None,
        room: Any,
        request: Any,
    ) -> Prepared:
        """Every step before the store: rate, size, authorization, validation, tags, scope."""
        accepted_at = self._clock()
        try:
            if bucket is not None:
                bucket.check()  # first: a flood costs no validation work
            lenient = False
            event_id = None
            if request is not None:
                event_type, data, room, lenient, event_id = read_request(request)
            if not isinstance(event_type, str) or event_type not in ROUTES:
                raise UnknownEventTypeError(f"unknown event type {str(event_type)[:64]!r}")
            self.service.check_size(data)
            checked_room = check_publish_room(event_type, room)
            if principal is not None:
                # before validation: a caller learns nothing of a schema it may not use
                authorize_publish(principal, event_type, data, checked_room)
            valid = self.service.validate(event_type, data, lenient=lenient)
            event = self.service.create_event(event_type, valid, room=checked_room, validated=True)
            if event_id is not None:
                event["id"] = event_id
            await self._tag(event, principal)
            if principal is not None:
                authorize_scope(principal, event)
        except LockerbusError as exc:
            self._rejected(exc, event_type, principal)
            raise
        return Prepared(event, event_type, accepted_at)

    def _rejected(self, exc: LockerbusError, event_type: Any, principal: Principal | None) -> None:
        self.metrics.reject(exc.code)
        server_logger.info(
            "publish rejected code=%s type=%.64s by=%s: %s",
            exc.code,
            event_type,
            principal.sub if principal else "server",
            exc.message,
        )

    def _accepted(self, stored: Event, accepted_at: float) -> None:
        self.metrics.stored(stored["type"])
        for listener in self.on_stored:
            try:
                listener(stored)
            except Exception:  # a projection bug must not fail a stored publish
                server_logger.exception("on_stored listener failed")
        if self.broadcaster is not None:
            self.broadcaster.broadcast(stored, accepted_at)

    async def _append(self, event: Event, ttl_seconds: float | None) -> Event:
        """Store one event; DuplicateEvent passes through, other failures become typed."""
        self.gate.enter()
        try:
            return await self.store.append(event, ttl_seconds=ttl_seconds)
        except DuplicateEvent:
            raise
        except Exception as exc:
            raise append_error(event, exc) from exc
        finally:
            self.gate.leave()

    async def _append_many(self, events: list[Event]) -> list[Appended | LockerbusError]:
        """Store a batch in one write; each item's outcome in its place."""
        if not events:
            return []
        try:
            self.gate.enter()
        except LockerbusError as exc:
            return [exc] * len(events)
        try:
            outcomes: list[Appended | LockerbusError] = list(await self.store.append_many(events))
        except Exception as exc:
            error = append_error(events[0], exc)
            return [error] * len(events)
        finally:
            self.gate.leave()
        return outcomes

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
        except DuplicateEvent as dup:
            self.metrics.reject(ConflictError.code)
            raise ConflictError(f"event {dup.event.get('id')} is stored already") from None
        except LockerbusError as exc:
            self.metrics.reject(exc.code)
            raise
        self._accepted(stored, accepted_at)
        return stored
