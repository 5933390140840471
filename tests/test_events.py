"""lockerbus.events: the schemas follow the seed field for field; routing and versions."""

from __future__ import annotations

import pytest
from marshmallow import Schema, ValidationError, fields

from lockerbus import events
from tests.eventdata import ENUMERATIONS, SEED, TYPES, full_data


def _schema_for(key: str) -> Schema:
    event_type, _, nested = key.partition(".")
    schema = events.DATA_SCHEMAS[event_type]
    if nested:
        field = schema.fields[nested]
        assert isinstance(field, fields.Nested)
        nested_schema = field.schema
        assert isinstance(nested_schema, Schema)
        return nested_schema
    return schema


@pytest.mark.parametrize("key", sorted(SEED))
def test_fields_and_required_flags_are_the_seeds(key: str) -> None:
    schema = _schema_for(key)
    declared = {name: bool(field.required) for name, field in schema.fields.items()}
    assert declared == SEED[key]


@pytest.mark.parametrize(("event_type", "path", "choices"), ENUMERATIONS)
def test_enumerations_are_the_seeds(event_type: str, path: str, choices: tuple[str, ...]) -> None:
    *nested, name = path.split(".")
    schema = _schema_for(".".join([event_type, *nested]))
    validators = schema.fields[name].validators
    one_of = [v for v in validators if hasattr(v, "choices")]
    assert len(one_of) == 1
    assert tuple(one_of[0].choices) == choices  # type: ignore[attr-defined]


def test_every_type_has_a_schema_and_a_route() -> None:
    assert set(events.EVENT_TYPES) == set(TYPES)
    assert set(events.DATA_SCHEMAS) == set(TYPES)


@pytest.mark.parametrize(
    ("event_type", "namespace", "room"),
    [
        ("locker_state_changed", "/ws/lockers", "locker_updates"),
        ("help_requested", "/ws/help", "help_requests"),
        ("help_status_updated", "/ws/help", "help_requests"),
        ("command_applied", "/ws/events", "system_events"),
        ("system_status", "/ws/events", "system_events"),
        ("connection", "/ws/events", "system_events"),
        ("disconnection", "/ws/events", "system_events"),
    ],
)
def test_routes_are_the_contracts(event_type: str, namespace: str, room: str) -> None:
    assert events.route(event_type) == (namespace, room)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0", (1, 0)),
        ("1.7", (1, 7)),
        ("2.0", (2, 0)),
        ("10.12", (10, 12)),
        ("1", None),
        ("1.0.0", None),
        ("v1.0", None),
        ("1.0\n", None),  # $ would let a trailing newline through
        ("١.٧", None),  # \d would take Arabic-Indic digits
        ("", None),
        (1.0, None),
        (None, None),
    ],
)
def test_parse_version(text: object, expected: tuple[int, int] | None) -> None:
    assert events.parse_version(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T19:00:00Z",
        "2026-11-26T19:00:00.123Z",
        "2026-11-26T19:00:00.123456+00:00",
        "2026-11-26T19:00+05:30",
        "2026-11-26T19:00:00-08:00",
    ],
)
def test_timestamp_accepts_iso_8601_with_a_zone(text: str) -> None:
    assert events.Timestamp().deserialize(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T19:00:00",  # no zone
        "2026-11-26",  # a date
        "2026-11-26 19:00:00Z",  # no T
        "2026-11-26T19:00:00\x00Z",  # fromisoformat stops at the NUL
        "2026-11-26T19:00:00Z\n",
        "2026-11-26T25:00:00Z",
        "yesterday",
        "",
        "2026-11-26T19:00:00.000000000000000000000000000000000000000000000000000000000Z",
    ],
)
def test_timestamp_refuses_others(text: str) -> None:
    with pytest.raises(ValidationError):
        events.Timestamp().deserialize(text)


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        (events.Integer(), [0, -3, 2**70], [True, False, 1.0, "1", None]),
        (events.Number(), [0, 1.5, -2, 2**70], [True, float("nan"), float("inf"), "1"]),
        (events.Boolean(), [True, False], [1, 0, "true", None]),
    ],
)
def test_strict_json_scalars(
    field: fields.Field[object], good: list[object], bad: list[object]
) -> None:
    for value in good:
        assert field.deserialize(value) == value
    for value in bad:
        with pytest.raises(ValidationError):
            field.deserialize(value)


@pytest.mark.parametrize("event_type", TYPES)
def test_strict_and_lenient_schemas_load_full_data(event_type: str) -> None:
    data = full_data(event_type)
    assert events.DATA_SCHEMAS[event_type].load(data) == data
    assert events.DATA_SCHEMAS_LENIENT[event_type].load(data) == data


def test_lenient_schemas_drop_unknown_fields_at_every_level() -> None:
    data = full_data("command_applied")
    data["extra"] = 1
    data["command"]["extra"] = 2
    data["result"]["extra"] = 3
    assert events.DATA_SCHEMAS_LENIENT["command_applied"].load(data) == full_data("command_applied")
    with pytest.raises(ValidationError):
        events.DATA_SCHEMAS["command_applied"].load(data)


def test_every_schema_has_a_compiled_fast_path() -> None:
    loaders = [
        *events.DATA_LOADERS.values(),
        *events.DATA_LOADERS_LENIENT.values(),
        events.ENVELOPE_LOADER,
        events.ENVELOPE_LOADER_LENIENT,
    ]
    assert all(loader.fast is not None for loader in loaders)
