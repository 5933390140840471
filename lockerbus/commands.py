"""Remote commands: issuer -> kiosk -> ``command_applied`` (contract §5).

Transport-agnostic: the Socket.IO layer supplies a :class:`KioskLink` that
reaches a kiosk's connection; this module validates, times, records every
outcome as a stored ``command_applied`` event, and makes retries idempotent:
within this process with a future per key, across instances (contract §13)
through :class:`CommandClaims` (command_claims.py keeps them in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cachetools import TTLCache
from marshmallow import ValidationError

from .auth import Principal, authorize_command
from .bus import EventBus
from .errors import BadRequestError, EventValidationError, StoreUnavailableError, flatten_messages
from .events import COMMAND_REQUEST_SCHEMA, KIOSK_ANSWER_SCHEMA, Event
from .limits import TokenBucket
from .log import command_logger
from .service import utc_now_iso

IDEMPOTENCY_SECONDS: Final = 300.0
IDEMPOTENCY_MAX_KEYS: Final = 10_000
#: a claim outlives the command's timeout by this much (the append, a slow store)
CLAIM_MARGIN_SECONDS: Final = 10.0
CLAIM_POLL_FIRST_SECONDS: Final = 0.02
CLAIM_POLL_MAX_SECONDS: Final = 0.25
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


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to "may this instance run the command?": a ``token`` when it now
    does, the ``event`` when it already ran, neither while another instance runs it."""

    token: str | None = None
    event: Event | None = None


class CommandClaims(Protocol):
    """Who runs the command with an idempotency key, across instances (contract §13)."""

    async def claim(self, owner: str, key: str, hold_seconds: float) -> Claim: ...

    async def finish(self, owner: str, key: str, event: Event) -> None: ...

    async def release(self, owner: str, key: str, token: str) -> None: ...


class CommandService:
    """Issues commands and records their results."""

    def __init__(
        self,
        bus: EventBus,
        link: KioskLink,
        *,
        timeout_seconds: float,
        claims: CommandClaims | None = None,
    ) -> None:
        self.bus = bus
        self._claims = claims  # None: one instance, the futures below are enough
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
        minutes returns the first command's event without running it again
        (on any instance, given claims).
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
            event = await self._run_once(principal, request, key)
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

    async def _run_once(self, principal: Principal, request: dict[str, Any], key: str) -> Event:
        """Run the command unless another instance runs or ran it with ``key``."""
        claims = self._claims
        if claims is None:
            return await self._run(principal, request)
        hold = self.timeout_seconds + CLAIM_MARGIN_SECONDS
        deadline = time.monotonic() + 2 * hold  # by then any other instance's hold expired
        wait = CLAIM_POLL_FIRST_SECONDS
        while True:
            claim = await claims.claim(principal.sub, key, hold)
            if claim.event is not None:
                return claim.event
            if claim.token is not None:
                break
            if time.monotonic() > deadline:
                raise StoreUnavailableError("the command's claim never ended (idempotency_key)")
            await asyncio.sleep(wait)  # another instance runs it: poll for its answer
            wait = min(wait * 2, CLAIM_POLL_MAX_SECONDS)
        try:
            event = await self._run(principal, request)
        except BaseException:
            with contextlib.suppress(Exception):  # the hold expires anyway
                await claims.release(principal.sub, key, claim.token)
            raise
        # It ran and is stored: answer it even if the claim cannot say so (a retry
        # after the hold then runs it again: Redis was unreachable).
        with contextlib.suppress(StoreUnavailableError):
            await claims.finish(principal.sub, key, event)
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
