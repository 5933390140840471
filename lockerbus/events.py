"""The event vocabulary: types, routing, marshmallow schemas, the envelope.

Field names, optional fields and enumerations follow the seed design field for
field; the value rules are the contract's (§4).  Schemas are built once at
import and reused: building a marshmallow schema costs far more than using it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Final, Literal

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from .fastcheck import Loader, value_only

Event = dict[str, Any]
"""An event envelope (contract §4) as a plain dict, ready for JSON; the one alias for it."""

SCHEMA_VERSION: Final = "1.0"
SCHEMA_MAJOR: Final = 1
SCHEMA_MINOR: Final = 0

LOCKER_STATES: Final = ("closed", "open", "reserved", "maintenance", "error")
HELP_CATEGORIES: Final = ("access_issue", "hardware_problem", "payment_issue", "other")
HELP_STATUSES: Final = ("open", "assigned", "resolved")
HELP_PRIORITIES: Final = ("low", "medium", "high", "urgent")
COMMAND_TYPES: Final = ("open", "close", "reset", "buzzer", "status_check")
COMPONENTS: Final = ("kiosk", "gateway", "panel", "database", "websocket")
COMPONENT_STATUSES: Final = ("online", "offline", "degraded", "maintenance")

LOCKERS_NS: Final = "/ws/lockers"
HELP_NS: Final = "/ws/help"
EVENTS_NS: Final = "/ws/events"
NAMESPACES: Final = (LOCKERS_NS, HELP_NS, EVENTS_NS)

#: The room each namespace's events go to (contract §3).
NAMESPACE_ROOMS: Final[dict[str, str]] = {
    LOCKERS_NS: "locker_updates",
    HELP_NS: "help_requests",
    EVENTS_NS: "system_events",
}

#: event type -> namespace (contract §3); the room is NAMESPACE_ROOMS[namespace].
ROUTES: Final[dict[str, str]] = {
    "locker_state_changed": LOCKERS_NS,
    "help_requested": HELP_NS,
    "help_status_updated": HELP_NS,
    "command_applied": EVENTS_NS,
    "system_status": EVENTS_NS,
    "connection": EVENTS_NS,
    "disconnection": EVENTS_NS,
}
EVENT_TYPES: Final = tuple(ROUTES)

KIOSK_ROOM_PREFIX: Final = "kiosk:"

# [0-9] and \Z, not \d and $: \d takes other scripts' digits ("١.٧") and $ a trailing newline
_VERSION_RE = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\Z")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
# fromisoformat stops at a NUL ("...00\x00Z" parses), so the alphabet is checked first
_TIMESTAMP_CHARS = re.compile(r"[0-9TWZ:.,+\-]{1,64}\Z")


def parse_version(version: object) -> tuple[int, int] | None:
    """``"1.7"`` -> ``(1, 7)``; None when it is not ``major.minor``."""
    if not isinstance(version, str):
        return None
    match = _VERSION_RE.match(version)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def route(event_type: str) -> tuple[str, str]:
    """The (namespace, room) an event type is delivered to."""
    namespace = ROUTES[event_type]
    return namespace, NAMESPACE_ROOMS[namespace]


# --------------------------------------------------------------------------
# fields


@value_only
class Timestamp(fields.String):
    """An ISO-8601 timestamp with a zone, kept as the string it was given."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "invalid": "Not a valid string.",
        "format": "Not an ISO-8601 timestamp with a time zone.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if _TIMESTAMP_CHARS.match(text) is None:
            raise self.make_error("format")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise self.make_error("format") from None
        if parsed.tzinfo is None or "T" not in text:
            raise self.make_error("format")
        return text


@value_only
class Integer(fields.Field[int]):
    """A JSON integer; booleans and floats are refused (marshmallow takes both)."""

    default_error_messages = {"invalid": "Not a valid integer."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if type(value) is not int:
            raise self.make_error("invalid")
        return value


@value_only
class Number(fields.Field[float | int]):
    """A finite JSON number kept as given; booleans, NaN and infinities are refused."""

    default_error_messages = {"invalid": "Not a valid number."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float | int:
        if type(value) is int:
            return value
        if type(value) is float and math.isfinite(value):
            return value
        raise self.make_error("invalid")


@value_only
class Boolean(fields.Field[bool]):
    """A JSON boolean; marshmallow's Boolean would also take "yes" and 1."""

    default_error_messages = {"invalid": "Not a valid boolean."}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise self.make_error("invalid")
        return value


def _id(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=256), **kwargs)


def _text(**kwargs: Any) -> fields.String:
    return fields.String(**kwargs)


def _enum(choices: tuple[str, ...], **kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(choices), **kwargs)


def _free_object(**kwargs: Any) -> fields.Dict:
    return fields.Dict(keys=fields.String(), **kwargs)


_PERCENT = validate.Range(min=0, max=100)
_NON_NEGATIVE = validate.Range(min=0)


# --------------------------------------------------------------------------
# data schemas, one per type (seed §Event Types)


class _DataSchema(Schema):
    class Meta:
        unknown = RAISE


class LockerStateChangedSchema(_DataSchema):
    lockerId = _id(required=True)
    oldState = _enum(LOCKER_STATES, required=True)
    newState = _enum(LOCKER_STATES, required=True)
    kioskId = _id(required=True)
    userId = _id()
    reason = _text()
    metadata = _free_object()

    @validates_schema(skip_on_field_errors=False)
    def _states_differ(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("oldState") is not None and data.get("oldState") == data.get("newState"):
            raise ValidationError("Must differ from oldState.", "newState")


class HelpRequestedSchema(_DataSchema):
    id = Integer(required=True, validate=_NON_NEGATIVE)
    kiosk_id = _id(required=True)
    locker_no = Integer(validate=_NON_NEGATIVE)
    category = _enum(HELP_CATEGORIES, required=True)
    note = _text()
    photo_url = _text()
    status = _enum(HELP_STATUSES, required=True)
    created_at = Timestamp(required=True)
    priority = _enum(HELP_PRIORITIES, required=True)
    user_contact = _text()


class HelpStatusUpdatedSchema(_DataSchema):
    id = Integer(required=True, validate=_NON_NEGATIVE)
    old_status = _enum(HELP_STATUSES, required=True)
    new_status = _enum(HELP_STATUSES, required=True)
    agent_id = _id()
    resolution_notes = _text()
    updated_at = Timestamp(required=True)

    @validates_schema(skip_on_field_errors=False)
    def _statuses_differ(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("old_status") is not None and data.get("old_status") == data.get("new_status"):
            raise ValidationError("Must differ from old_status.", "new_status")


class CommandSchema(_DataSchema):
    id = _id(required=True)
    type = _enum(COMMAND_TYPES, required=True)
    lockerId = _id()
    kioskId = _id()
    parameters = _free_object()
    issued_by = _id(required=True)
    issued_at = Timestamp(required=True)


class CommandResultSchema(_DataSchema):
    success = Boolean(required=True)
    message = _text()
    timestamp = Timestamp(required=True)
    error = _text()
    execution_time_ms = Number(validate=_NON_NEGATIVE)
    response_data = _free_object()


class SystemMetricsSchema(_DataSchema):
    cpu_usage = Number(validate=_PERCENT)
    memory_usage = Number(validate=_PERCENT)
    disk_usage = Number(validate=_PERCENT)
    network_latency = Number(validate=_NON_NEGATIVE)
    error_rate = Number(validate=_NON_NEGATIVE)


class SystemStatusSchema(_DataSchema):
    component = _enum(COMPONENTS, required=True)
    status = _enum(COMPONENT_STATUSES, required=True)
    health_score = Number(required=True, validate=_PERCENT)
    metrics = fields.Nested(SystemMetricsSchema)
    message = _text()
    details = _free_object()


class ConnectionSchema(_DataSchema):
    connectionId = _id(required=True)
    userId = _id()
    sessionId = _id()
    namespace = _enum(NAMESPACES, required=True)
    user_agent = _text()
    ip_address = _text()
    connection_count = Integer(required=True, validate=_NON_NEGATIVE)


class CommandAppliedSchema(_DataSchema):
    command = fields.Nested(CommandSchema, required=True)
    result = fields.Nested(CommandResultSchema, required=True)


_DATA_SCHEMA_CLASSES: Final[dict[str, type[Schema]]] = {
    "locker_state_changed": LockerStateChangedSchema,
    "help_requested": HelpRequestedSchema,
    "help_status_updated": HelpStatusUpdatedSchema,
    "command_applied": CommandAppliedSchema,
    "system_status": SystemStatusSchema,
    "connection": ConnectionSchema,
    "disconnection": ConnectionSchema,
}


class EnvelopeSchema(Schema):
    """The envelope of contract §4; ``data`` is checked by its type's schema."""

    class Meta:
        unknown = RAISE

    id = fields.String(
        required=True, validate=validate.Regexp(_UUID_RE, error="Not a UUID4 string.")
    )
    type = _enum(EVENT_TYPES, required=True)
    version = fields.String(required=True)
    seq = Integer(validate=validate.Range(min=1))
    epoch = fields.String(validate=validate.Length(min=1, max=128))
    namespace = _enum(NAMESPACES, required=True)
    room = fields.String(required=True, validate=validate.Length(min=1, max=256))
    timestamp = Timestamp(required=True)
    data = fields.Dict(required=True)
    #: contract §10: tag name -> value, and {sub, role} of the publisher
    tags = _free_object()
    source = _free_object()
    replayed = Boolean()


def _instances(unknown: Literal["raise", "exclude"]) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for name, cls in _DATA_SCHEMA_CLASSES.items():
        schema = cls(unknown=unknown)
        if unknown == EXCLUDE:
            # marshmallow does not pass ``unknown`` down to nested schemas
            for field in schema.fields.values():
                if isinstance(field, fields.Nested):
                    field.schema.unknown = EXCLUDE
        out[name] = schema
    return out


#: Reused schema instances: strict for this minor, lenient for newer 1.x.
DATA_SCHEMAS: Final = _instances(RAISE)
DATA_SCHEMAS_LENIENT: Final = _instances(EXCLUDE)
ENVELOPE_SCHEMA: Final = EnvelopeSchema()
ENVELOPE_SCHEMA_LENIENT: Final = EnvelopeSchema(unknown=EXCLUDE)

#: The same schemas behind a compiled fast path (lockerbus.fastcheck); use these to load.
DATA_LOADERS: Final = {name: Loader(schema) for name, schema in DATA_SCHEMAS.items()}
DATA_LOADERS_LENIENT: Final = {
    name: Loader(schema) for name, schema in DATA_SCHEMAS_LENIENT.items()
}
ENVELOPE_LOADER: Final = Loader(ENVELOPE_SCHEMA)
ENVELOPE_LOADER_LENIENT: Final = Loader(ENVELOPE_SCHEMA_LENIENT)

# --------------------------------------------------------------------------
# commands (contract §5): what an issuer sends, and what a kiosk answers


class CommandRequestSchema(_DataSchema):
    """``command`` from a panel, gateway or admin; the server adds id/issued_*."""

    type = _enum(COMMAND_TYPES, required=True)
    kioskId = _id(required=True)
    lockerId = _id()
    parameters = _free_object()
    idempotency_key = fields.String(validate=validate.Length(min=1, max=128))


class KioskAnswerSchema(_DataSchema):
    """A kiosk's ack to ``command``."""

    success = Boolean(required=True)
    message = _text()
    error = _text()
    response_data = _free_object()


COMMAND_REQUEST_SCHEMA: Final = CommandRequestSchema()
KIOSK_ANSWER_SCHEMA: Final = KioskAnswerSchema()
