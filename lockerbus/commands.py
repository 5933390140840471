"""Remote commands: issuer -> kiosk -> ``command_applied`` (contract §5).

Transport-agnostic: the Socket.IO layer supplies a :class:`KioskLink` that
reaches a kiosk's connection; this module validates, times, records every
outcome as a stored ``command_applied`` event, and makes retries idempotent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final, Protocol

from cachetools import TTLCache
from marshmallow import ValidationError

from .auth import Principal, authorize_command
from .bus import EventBus
from .errors import BadRequestError, EventValidationError, flatten_messages
from .events import COMMAND_REQUEST_SCHEMA, KIOSK_ANSWER_SCHEMA, Event
from .limits import TokenBucket
from .log import command_logger
from .service import utc_now_iso

IDEMPOTENCY_SECONDS: Final = 300.0
IDEMPOTENCY_MAX_KEYS: Final = 10_000
OUTCOMES: Final = (
    "success",
    "failure",
    "kiosk_offline",
    "timeout",
    "kiosk_disconnected",
    "bad_response",
)


class KioskOffline(Exception):
    """No connection of the kiosk is held (by any instance)."""


class KioskDisconnected(Exception):
    """The kiosk's connection went away while the command was out."""


class KioskLink(Protocol):
    """Delivers a command to one connection of a kiosk and returns its ack."""

    async def send_command(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any: ...


class CommandService:
    """Issues commands and records their results."""

    def __init__(self, bus: EventBus, link: KioskLink, *, timeout_seconds: float) -> None:
        self.bus = bus
        self.metrics = bus.metrics
        self.link = link
        self.timeout_seconds = timeout_seconds
        self._recent: TTLCache[tuple[str, str], asyncio.Future[Event]] = TTLCache(
            maxsize=IDEMPOTENCY_MAX_KEYS, ttl=IDEMPOTENCY_SECONDS
        )

    async def execute(
        self, principal: Principal, payload: Any, bucket: TokenBucket | None = None
    ) -> Event:
        """Run one command for ``principal``; returns the stored command_applied event.

        A command counts as one publish against ``bucket`` (checked first, §2).

        The same ``idempotency_key`` from the same principal within five
        minutes returns the first command's event without running it again.
        """
        if bucket is not None:
            bucket.check()
        authorize_command(principal)
        request = _load_request(payload)
        authorize_command(principal, request)  # inside its scope (contract §10)
        key = request.pop("idempotency_key", None)
        if key is None:
            return await self._run(principal, request)
        cache_key = (principal.sub, key)
        earlier = self._recent.get(cache_key)
        if earlier is not None:
            return await asyncio.shield(earlier)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._recent[cache_key] = future
        try:
            event = await self._run(principal, request)
        except BaseException as exc:
            # a command that was never recorded may be tried again
            self._recent.pop(cache_key, None)
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # mark retrieved: only waiting retries re-raise it
            else:
                future.cancel()
            raise
        future.set_result(event)
        return event

    async def _run(self, principal: Principal, request: dict[str, Any]) -> Event:
        command = {
            "id": str(uuid.uuid4()),
            **request,
            "issued_by": principal.sub,
            "issued_at": utc_now_iso(),
        }
        started = time.perf_counter()
        outcome, result = await self._deliver(command)
        result["timestamp"] = utc_now_iso()
        result["execution_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        event = await self.bus.emit(self.bus.service.create_command_applied_event(command, result))
        self.metrics.commands.labels(outcome).inc()
        command_logger.info(
            "command id=%s type=%s kiosk=%s by=%s outcome=%s ms=%.1f",
            command["id"],
            command["type"],
            command["kioskId"],
            principal.sub,
            outcome,
            result["execution_time_ms"],
        )
        return event

    async def _deliver(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            answer = await self.link.send_command(command["kioskId"], command, self.timeout_seconds)
        except KioskOffline:
            return "kiosk_offline", {"success": False, "error": "kiosk_offline"}
        except TimeoutError:
            return "timeout", {"success": False, "error": "timeout"}
        except KioskDisconnected:
            return "kiosk_disconnected", {"success": False, "error": "kiosk_disconnected"}
        try:
            result: dict[str, Any] = KIOSK_ANSWER_SCHEMA.load(answer)
        except (ValidationError, TypeError):
            return "bad_response", {
                "success": False,
                "error": "bad_response",
                "message": "the kiosk's answer was not {success, message?, error?, response_data?}",
            }
        return ("success" if result["success"] else "failure"), result


def _load_request(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise BadRequestError("command expects an object {type, kioskId, lockerId?, parameters?}")
    try:
        request: dict[str, Any] = COMMAND_REQUEST_SCHEMA.load(payload)
    except ValidationError as exc:
        raise EventValidationError(flatten_messages(exc.messages)) from None
    return request
