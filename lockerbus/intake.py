"""Reading a client's publish request, and the answers of contract §12.

The bus calls these: what a publish object may hold (``id`` included), what a
held id answers (the stored event, or ``conflict``), and how a store failure
reads to the caller.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .auth import Principal
from .errors import (
    BadRequestError,
    ConflictError,
    EventValidationError,
    LockerbusError,
    StoreUnavailableError,
)
from .events import Event
from .log import server_logger
from .service import check_version, unencodable

PUBLISH_KEYS: Final = frozenset({"type", "data", "room", "version", "id"})


@dataclass(frozen=True, slots=True)
class Published:
    """A publish's answer: the stored event, and whether it was stored before (§12)."""

    event: Event
    duplicate: bool = False

    def ack(self) -> dict[str, Any]:
        """The socket ack ``{ok: true, event, duplicate?}``."""
        if self.duplicate:
            return {"ok": True, "event": self.event, "duplicate": True}
        return {"ok": True, "event": self.event}


@dataclass(slots=True)
class Prepared:
    """A checked event on its way to the store, and what is needed to answer for it."""

    event: Event
    event_type: str
    accepted_at: float


class InflightGate:
    """Counts appends under way, so a shutdown can refuse new ones and let these finish."""

    def __init__(self) -> None:
        self.accepting = True
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        """Count one append in; StoreUnavailableError once shutdown has begun."""
        if not self.accepting:
            raise StoreUnavailableError("the server is shutting down; publish elsewhere")
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        """Count one append out."""
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    async def drain(self, timeout_seconds: float) -> bool:
        """Wait until no append is under way; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True


def duplicate_answer(event: Event, stored: Event, principal: Principal) -> Published:
    """The answer to a publish whose id is held: the stored event when it is the same
    event from within the same scope, else ConflictError (contract §12)."""
    # scope first: nothing about an event outside the caller's scope is told (§10)
    if not principal.reads(stored):
        raise ConflictError(f"event {event['id']} is stored already for another scope")
    if stored.get("type") != event["type"] or _canonical(stored.get("data")) != _canonical(
        event["data"]
    ):
        raise ConflictError(f"event {event['id']} is stored already with other content")
    return Published(stored, duplicate=True)


def append_error(event: Event, exc: BaseException) -> LockerbusError:
    """A store failure as the caller's typed error; never one that looks like success."""
    if isinstance(exc, LockerbusError):
        return exc
    if isinstance(exc, TypeError):  # what JSON cannot carry: name the field (§5)
        return unencodable(event, "")
    server_logger.error("store append failed", exc_info=exc)
    return StoreUnavailableError(f"the event store failed: {exc}")


def read_request(request: Any) -> tuple[Any, Any, Any, bool, str | None]:
    """``(type, data, room, lenient, id)`` from a client's publish object."""
    if not isinstance(request, Mapping):
        raise BadRequestError("publish expects an object {type, data, room?, version?, id?}")
    unknown = set(request) - PUBLISH_KEYS
    if unknown:
        names = ", ".join(sorted(str(k)[:64] for k in unknown))
        raise BadRequestError(f"unknown publish fields: {names}")
    lenient = "version" in request and check_version(request["version"])
    event_id = _event_id(request["id"]) if "id" in request else None
    return request.get("type"), request.get("data"), request.get("room"), lenient, event_id


def _event_id(value: Any) -> str:
    """A client-chosen event id: a UUID in its usual 36-character form, lower-cased."""
    if isinstance(value, str) and len(value) == 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise EventValidationError({"id": ["Not a valid UUID."]})


def _canonical(data: Any) -> bytes:
    """``data`` as JSON with sorted keys: equal content compares equal however stored."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(data).encode()
