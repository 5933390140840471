"""EventService: create, validate, serialize and deserialize events.

The seed's event-service.ts in Python.  It knows nothing of sockets or
storage: the server and the HTTP routes call it at the edge, so every event is
valid before it is stored, emitted or answered.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson
from marshmallow import ValidationError

from .errors import (
    BadRequestError,
    EventValidationError,
    LockerbusError,
    PayloadTooLargeError,
    SchemaVersionError,
    UnknownEventTypeError,
    flatten_messages,
)
from .events import (
    DATA_LOADERS,
    DATA_LOADERS_LENIENT,
    ENVELOPE_LOADER,
    ENVELOPE_LOADER_LENIENT,
    NAMESPACE_ROOMS,
    ROUTES,
    SCHEMA_MAJOR,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    Event,
    parse_version,
)

DEFAULT_MAX_EVENT_BYTES = 65536


_second_prefix: tuple[int, str] = (-1, "")
#: ids made from one os.urandom call
RANDOM_IDS = 256
_VARIANTS = "89ab"
_random_hex = ""
_random_at = 0


def utc_now_iso() -> str:
    """Now as ``2026-11-26T19:00:00.123Z``."""
    # wall-clock time is what a timestamp is; the formatted second is cached
    # because strftime costs more than everything else an event needs
    global _second_prefix
    now = time.time()
    second = int(now)
    cached, prefix = _second_prefix
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{int((now - second) * 1000):03d}Z"


def new_event_id() -> str:
    """A random UUID4 as text, as ``str(uuid.uuid4())`` gives, in a fraction of its time.

    The random bits come from ``os.urandom`` in blocks of RANDOM_IDS ids (one
    system call per block, not per id); a forked child starts a block of its own.
    """
    global _random_hex, _random_at
    at = _random_at
    if at >= len(_random_hex):
        _random_hex, at = os.urandom(16 * RANDOM_IDS).hex(), 0
    _random_at = at + 32
    x = _random_hex[at : at + 32]
    variant = _VARIANTS[int(x[16], 16) & 3]  # RFC 4122 variant: 10xx
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{variant}{x[17:20]}-{x[20:]}"


def _new_random_block() -> None:
    global _random_hex, _random_at
    _random_hex, _random_at = "", 0


os.register_at_fork(after_in_child=_new_random_block)


def parse_since(value: Any, name: str) -> datetime:
    """An aware datetime from an ISO-8601 string with a zone; ``name`` goes in the error."""
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequestError(f"{name} must be an ISO-8601 timestamp with a time zone")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequestError(f"{name} is not an ISO-8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise BadRequestError(f"{name} must carry a time zone (e.g. Z or +00:00)")
    return parsed


def dumps(value: Any) -> bytes:
    """JSON-encode; values JSON cannot carry raise :class:`BadRequestError`."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise BadRequestError(f"not representable as JSON: {exc}") from None


# orjson (the stores' and the wire's encoder) carries integers of 64 bits, signed or not
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
_LONG_NUMBER: Final = re.compile(rb"\d{19}")  # a literal that may be out of orjson's range


def loads_exact(body: bytes) -> Any:
    """Decode a request body; integers stay exact, even those orjson would read as floats.

    orjson turns an integer literal beyond 64 bits into a float, silently
    changing the number; such a body is decoded by the stdlib instead, so
    validation sees the integer and refuses it naming its field.
    """
    try:
        if _LONG_NUMBER.search(body):
            return json.loads(body, parse_constant=_no_constant)
        return orjson.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise BadRequestError(f"body is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def unencodable(value: Any, prefix: str) -> LockerbusError:
    """Why ``value`` cannot be stored as JSON, naming the field: a string that is not
    valid Unicode (a lone surrogate passes the schemas but no UTF-8 encoder), or an
    integer beyond 64 bits."""
    found = _bad_value(value, prefix)
    if found is not None:
        return EventValidationError({found[0]: [found[1]]})
    return BadRequestError(f"{prefix or 'the event'} is not representable as JSON")


def _bad_value(value: Any, path: str) -> tuple[str, str] | None:
    """The path of the first value (key or value) JSON cannot carry here, and why."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path or "_schema", "Not valid Unicode text (a lone surrogate)."
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_INT <= value <= MAX_INT:
            return None
        return path or "_schema", "Integer out of range: at most 64 bits (-2**63 to 2**64-1)."
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key).encode(errors="backslashreplace").decode()  # the answer must encode
            where = f"{path}.{name}" if path else name
            found = _bad_value(key, where) or _bad_value(item, where)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _bad_value(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def check_version(version: object) -> bool:
    """Whether ``version`` is a newer 1.x; raises for a bad or foreign one."""
    parsed = parse_version(version)
    if parsed is None:
        raise EventValidationError({"version": ['Not a "major.minor" version string.']})
    major, minor = parsed
    if major != SCHEMA_MAJOR:
        raise SchemaVersionError(
            f"schema version {version} is not supported: this server reads {SCHEMA_MAJOR}.x"
        )
    return minor > SCHEMA_MINOR


class EventService:
    """Validates and builds events; schemas are shared module-level instances."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes

    # -- validation ---------------------------------------------------------

    def check_size(self, data: Any) -> None:
        """Refuse ``data`` larger than ``max_event_bytes`` as JSON, before any schema work."""
        try:
            size = len(orjson.dumps(data))
        except TypeError:  # orjson.JSONEncodeError subclasses TypeError
            raise unencodable(data, "data") from None
        if size > self.max_event_bytes:
            raise PayloadTooLargeError(
                f"event data is {size} bytes as JSON; the limit is {self.max_event_bytes}"
            )

    def validate(self, event_type: Any, data: Any, *, lenient: bool = False) -> dict[str, Any]:
        """Validate ``data`` for ``event_type``; returns the data as stored.

        ``lenient`` ignores unknown fields (an event of a newer 1.x minor).
        """
        if not isinstance(event_type, str) or event_type not in ROUTES:
            raise UnknownEventTypeError(f"unknown event type {str(event_type)[:64]!r}")
        if not isinstance(data, Mapping):
            raise EventValidationError({"data": ["Not a valid mapping type."]})
        loader = (DATA_LOADERS_LENIENT if lenient else DATA_LOADERS)[event_type]
        try:
            loaded = loader.load(data)
        except ValidationError as exc:
            raise EventValidationError(flatten_messages(exc.messages, "data")) from None
        return loaded

    # -- creation -----------------------------------------------------------

    def create_event(
        self, event_type: str, data: Any, *, room: str | None = None, validated: bool = False
    ) -> Event:
        """A new, validated envelope without ``seq``/``epoch`` (the store adds them).

        ``validated`` says ``data`` is the output of :meth:`validate` already.
        """
        valid = data if validated else self.validate(event_type, data)
        namespace = ROUTES[event_type]
        return {
            "id": new_event_id(),
            "type": event_type,
            "version": SCHEMA_VERSION,
            "namespace": namespace,
            "room": room or NAMESPACE_ROOMS[namespace],
            "timestamp": utc_now_iso(),
            "data": valid,
        }

    def create_locker_state_changed_event(
        self,
        locker_id: str,
        old_state: str,
        new_state: str,
        kiosk_id: str,
        *,
        user_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Event:
        """A locker went from ``old_state`` to ``new_state``."""
        data: dict[str, Any] = {
            "lockerId": locker_id,
            "oldState": old_state,
            "newState": new_state,
            "kioskId": kiosk_id,
        }
        _put(data, userId=user_id, reason=reason, metadata=metadata)
        return self.create_event("locker_state_changed", data)

    def create_help_requested_event(
        self, data: Mapping[str, Any], priority: str | None = None
    ) -> Event:
        """A user asked for help; ``priority`` is set apart as in the seed's API.

        Without ``priority``, the data's own priority is kept, else ``medium``.
        """
        if not isinstance(data, Mapping):
            raise EventValidationError({"data": ["Not a valid mapping type."]})
        if priority is None:
            priority = data.get("priority", "medium")
        return self.create_event("help_requested", {**data, "priority": priority})

    def create_help_status_updated_event(
        self,
        help_id: int,
        old_status: str,
        new_status: str,
        *,
        agent_id: str | None = None,
        resolution_notes: str | None = None,
        updated_at: str | None = None,
    ) -> Event:
        """A help request moved from ``old_status`` to ``new_status``."""
        data: dict[str, Any] = {
            "id": help_id,
            "old_status": old_status,
            "new_status": new_status,
            "updated_at": updated_at or utc_now_iso(),
        }
        _put(data, agent_id=agent_id, resolution_notes=resolution_notes)
        return self.create_event("help_status_updated", data)

    def create_command_applied_event(
        self, command: Mapping[str, Any], result: Mapping[str, Any]
    ) -> Event:
        """The record of a remote command and its result."""
        return self.create_event("command_applied", {"command": command, "result": result})

    def create_system_status_event(
        self,
        component: str,
        status: str,
        health_score: float,
        *,
        metrics: Mapping[str, Any] | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """A component's health."""
        data: dict[str, Any] = {
            "component": component,
            "status": status,
            "health_score": health_score,
        }
        _put(data, metrics=metrics, message=message, details=details)
        return self.create_event("system_status", data)

    def create_connection_event(
        self,
        event_type: str,
        connection_id: str,
        namespace: str,
        connection_count: int,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        user_agent: str | None = None,
        ip_address: str | None = None,
    ) -> Event:
        """A ``connection`` or ``disconnection`` on ``namespace``."""
        if event_type not in ("connection", "disconnection"):
            raise UnknownEventTypeError(f"{event_type!r} is not a connection event type")
        data: dict[str, Any] = {
            "connectionId": connection_id,
            "namespace": namespace,
            "connection_count": connection_count,
        }
        _put(
            data,
            userId=user_id,
            sessionId=session_id,
            user_agent=user_agent,
            ip_address=ip_address,
        )
        return self.create_event(event_type, data)

    # -- wire form ----------------------------------------------------------

    def serialize(self, event: Event) -> str:
        """The event as JSON text."""
        return dumps(event).decode()

    def deserialize(self, raw: str | bytes | Mapping[str, Any]) -> Event:
        """Parse and fully validate an envelope from JSON text or a dict.

        A newer 1.x minor is read with its unknown fields dropped; another
        major raises :class:`SchemaVersionError`; anything else that is wrong
        raises :class:`EventValidationError` naming the field paths.
        """
        if isinstance(raw, (str, bytes, bytearray, memoryview)):
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise EventValidationError({"_schema": [f"Not valid JSON: {exc}"]}) from None
        else:
            value = raw
        if not isinstance(value, Mapping):
            raise EventValidationError({"_schema": ["An event must be a JSON object."]})
        newer = check_version(value.get("version"))
        envelope_loader = ENVELOPE_LOADER_LENIENT if newer else ENVELOPE_LOADER
        try:
            envelope: Event = envelope_loader.load(value)
        except ValidationError as exc:
            raise EventValidationError(flatten_messages(exc.messages)) from None
        if ROUTES[envelope["type"]] != envelope["namespace"]:
            raise EventValidationError(
                {"namespace": [f"Must be {ROUTES[envelope['type']]} for {envelope['type']}."]}
            )
        envelope["data"] = self.validate(envelope["type"], envelope["data"], lenient=newer)
        return envelope


def _put(target: dict[str, Any], **optional: Any) -> None:
    """Set the optional fields that were given (None means absent)."""
    for key, value in optional.items():
        if value is not None:
            target[key] = value
