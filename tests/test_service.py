"""EventService: create, validate, serialize, deserialize — and what it refuses."""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockerbus import events
from lockerbus.errors import (
    BadRequestError,
    EventValidationError,
    PayloadTooLargeError,
    SchemaVersionError,
    UnknownEventTypeError,
)
from lockerbus.service import EventService, new_event_id, utc_now_iso
from tests.eventdata import (
    DATA_STRATEGIES,
    ENUMERATIONS,
    SEED,
    TYPES,
    del_path,
    full_data,
    json_values,
    minimal_data,
    set_path,
    typed_data,
)

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


@pytest.fixture
def service() -> EventService:
    return EventService()


def make_event(service: EventService, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return service.create_event(event_type, data)


def fields_of(excinfo: pytest.ExceptionInfo[EventValidationError]) -> dict[str, list[str]]:
    assert excinfo.value.fields is not None
    return excinfo.value.fields


# --------------------------------------------------------------------------
# creation and round trips


@pytest.mark.parametrize("event_type", TYPES)
@pytest.mark.parametrize("shape", [full_data, minimal_data])
def test_valid_event_round_trips(service: EventService, event_type: str, shape: Any) -> None:
    event = make_event(service, event_type, shape(event_type))
    again = service.deserialize(service.serialize(event))
    assert again == event
    assert service.deserialize(service.serialize(event).encode()) == event
    assert service.deserialize(copy.deepcopy(event)) == event


@pytest.mark.parametrize("event_type", TYPES)
def test_envelope_is_the_contracts(service: EventService, event_type: str) -> None:
    event = make_event(service, event_type, full_data(event_type))
    namespace, room = events.route(event_type)
    assert UUID4.match(event["id"])
    assert event["type"] == event_type
    assert event["version"] == "1.0"
    assert event["namespace"] == namespace
    assert event["room"] == room
    assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
    assert event["timestamp"].endswith("Z")
    assert event["data"] == full_data(event_type)


def test_stored_envelope_with_seq_epoch_and_replayed_round_trips(service: EventService) -> None:
    event = make_event(service, "locker_state_changed", full_data("locker_state_changed"))
    event.update(seq=42, epoch="e1", replayed=True)
    assert service.deserialize(service.serialize(event)) == event


def test_create_helpers_build_the_seeds_events(service: EventService) -> None:
    locker = service.create_locker_state_changed_event(
        "locker-1", "closed", "open", "kiosk-1", user_id="u", reason="rfid", metadata={"a": 1}
    )
    assert locker["data"] == {
        "lockerId": "locker-1",
        "oldState": "closed",
        "newState": "open",
        "kioskId": "kiosk-1",
        "userId": "u",
        "reason": "rfid",
        "metadata": {"a": 1},
    }
    help_data = minimal_data("help_requested")
    del help_data["priority"]
    assert service.create_help_requested_event(help_data, "urgent")["data"]["priority"] == "urgent"
    assert service.create_help_requested_event(help_data)["data"]["priority"] == "medium"
    # a priority already in the data is kept when none is passed
    kept = service.create_help_requested_event({**help_data, "priority": "low"})
    assert kept["data"]["priority"] == "low"

    status = service.create_help_status_updated_event(1, "open", "resolved", agent_id="a")
    assert status["data"]["new_status"] == "resolved"
    assert datetime.fromisoformat(status["data"]["updated_at"]).tzinfo is not None

    data = full_data("command_applied")
    applied = service.create_command_applied_event(data["command"], data["result"])
    assert applied["data"] == data

    system = service.create_system_status_event("gateway", "online", 100, metrics={"cpu_usage": 1})
    assert system["namespace"] == "/ws/events"

    for kind in ("connection", "disconnection"):
        conn = service.create_connection_event(kind, "c1", "/ws/help", 0, user_agent="ua")
        assert conn["type"] == kind
        assert conn["data"]["connection_count"] == 0
    with pytest.raises(UnknownEventTypeError):
        service.create_connection_event("locker_state_changed", "c1", "/ws/help", 0)


def test_create_rejects_invalid_input(service: EventService) -> None:
    with pytest.raises(EventValidationError) as excinfo:
        service.create_locker_state_changed_event("locker-1", "invalid-state", "open", "kiosk-1")
    assert set(fields_of(excinfo)) == {"data.oldState"}
    assert "data.oldState" in excinfo.value.message


def test_create_event_with_a_room(service: EventService) -> None:
    event = service.create_event("system_status", full_data("system_status"), room="kiosk:k1")
    assert event["room"] == "kiosk:k1"
    assert service.deserialize(service.serialize(event)) == event


def test_event_ids_are_uuid4_and_distinct() -> None:
    seen = {new_event_id() for _ in range(2000)}
    assert len(seen) == 2000
    for text in seen:
        assert UUID4.match(text)
        assert uuid.UUID(text).version == 4
        assert uuid.UUID(text).variant == uuid.RFC_4122
        assert str(uuid.UUID(text)) == text
    assert {text[19] for text in seen} == set("89ab")  # the variant's two random bits


def test_a_forked_child_makes_ids_of_its_own() -> None:
    import os

    new_event_id()  # the parent holds a block of random bits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_event_id() for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    assert len(child) == 20
    assert child.isdisjoint(new_event_id() for _ in range(20))


def test_utc_now_iso_is_now_with_a_zone() -> None:
    before = datetime.now().astimezone()
    stamp = utc_now_iso()
    after = datetime.now().astimezone()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = datetime.fromisoformat(stamp)
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= parsed <= after


# --------------------------------------------------------------------------
# validation: enumerations, required fields, unknown fields, value rules


@pytest.mark.parametrize(("event_type", "path", "choices"), ENUMERATIONS)
def test_each_enumeration_rejects_an_unknown_value(
    service: EventService, event_type: str, path: str, choices: tuple[str, ...]
) -> None:
    data = full_data(event_type)
    set_path(data, path, "no-such-value")
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]
    assert "Must be one of" in fields_of(excinfo)[f"data.{path}"][0]
    for choice in choices:  # and every listed value is accepted
        set_path(data, path, choice)
        if event_type == "locker_state_changed":
            other = "oldState" if path == "newState" else "newState"
            data[other] = "error" if choice != "error" else "open"
        if event_type == "help_status_updated":
            other = "old_status" if path == "new_status" else "new_status"
            data[other] = "resolved" if choice != "resolved" else "open"
        service.validate(event_type, data)


def _required_paths() -> list[tuple[str, str]]:
    out = []
    for key, spec in SEED.items():
        event_type, _, nested = key.partition(".")
        for name, required in spec.items():
            if required:
                out.append((event_type, f"{nested}.{name}" if nested else name))
    return out


@pytest.mark.parametrize(("event_type", "path"), _required_paths())
def test_each_required_field_missing_is_named(
    service: EventService, event_type: str, path: str
) -> None:
    data = full_data(event_type)
    del_path(data, path)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert fields_of(excinfo) == {f"data.{path}": ["Missing data for required field."]}


@pytest.mark.parametrize("event_type", TYPES)
def test_unknown_fields_are_named(service: EventService, event_type: str) -> None:
    data = full_data(event_type)
    data["colour"] = "red"
    data["shade"] = 1
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    unknown = ["Unknown field."]
    assert fields_of(excinfo) == {"data.colour": unknown, "data.shade": unknown}


@pytest.mark.parametrize("path", ["command.extra", "result.extra"])
def test_unknown_nested_fields_are_named(service: EventService, path: str) -> None:
    data = full_data("command_applied")
    set_path(data, path, 1)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate("command_applied", data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]


def test_unknown_metrics_field_is_named(service: EventService) -> None:
    data = full_data("system_status")
    data["metrics"]["gpu_usage"] = 1
    with pytest.raises(EventValidationError) as excinfo:
        service.validate("system_status", data)
    assert list(fields_of(excinfo)) == ["data.metrics.gpu_usage"]


def test_several_problems_are_all_named(service: EventService) -> None:
    data = full_data("help_requested")
    data["category"] = "nope"
    del data["kiosk_id"]
    data["created_at"] = "tomorrow"
    with pytest.raises(EventValidationError) as excinfo:
        service.validate("help_requested", data)
    assert set(fields_of(excinfo)) == {"data.category", "data.kiosk_id", "data.created_at"}


@pytest.mark.parametrize(
    ("event_type", "old", "new"),
    [
        ("locker_state_changed", "oldState", "newState"),
        ("help_status_updated", "old_status", "new_status"),
    ],
)
def test_states_must_differ(service: EventService, event_type: str, old: str, new: str) -> None:
    data = full_data(event_type)
    data[new] = data[old]
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{new}"]
    assert "differ" in fields_of(excinfo)[f"data.{new}"][0]


VALUE_RULES: list[tuple[str, str, list[Any], list[Any]]] = [
    # (type, path in data, accepted, refused)
    ("system_status", "health_score", [0, 100, 0.0, 100.0, 55.5], [-1, -0.01, 100.01, 101]),
    ("system_status", "metrics.cpu_usage", [0, 100, 50.5], [-1, 100.5]),
    ("system_status", "metrics.memory_usage", [0, 100], [-0.5, 101]),
    ("system_status", "metrics.disk_usage", [0, 100], [-0.5, 101]),
    ("system_status", "metrics.network_latency", [0, 0.0, 12345.6], [-1, -0.001]),
    ("system_status", "metrics.error_rate", [0, 3.5], [-1]),
    ("command_applied", "result.execution_time_ms", [0, 0.0, 10**9], [-1, -0.5]),
    ("help_requested", "id", [0, 2**40], [-1]),
    ("help_requested", "locker_no", [0, 7], [-1]),
    ("help_status_updated", "id", [0, 5], [-1]),
    ("connection", "connection_count", [0, 10], [-1]),
]


@pytest.mark.parametrize(("event_type", "path", "good", "bad"), VALUE_RULES)
def test_ranges(
    service: EventService, event_type: str, path: str, good: list[Any], bad: list[Any]
) -> None:
    for value in good:
        data = full_data(event_type)
        set_path(data, path, value)
        service.validate(event_type, data)
    for value in bad:
        data = full_data(event_type)
        set_path(data, path, value)
        with pytest.raises(EventValidationError) as excinfo:
            service.validate(event_type, data)
        assert list(fields_of(excinfo)) == [f"data.{path}"], value


NUMBER_PATHS = [
    ("system_status", "health_score"),
    ("system_status", "metrics.cpu_usage"),
    ("system_status", "metrics.network_latency"),
    ("command_applied", "result.execution_time_ms"),
    ("help_requested", "id"),
    ("help_requested", "locker_no"),
    ("help_status_updated", "id"),
    ("connection", "connection_count"),
]


@pytest.mark.parametrize(("event_type", "path"), NUMBER_PATHS)
@pytest.mark.parametrize("value", [True, False, "1", None, [1], {"n": 1}])
def test_no_bools_or_strings_for_numbers(
    service: EventService, event_type: str, path: str, value: Any
) -> None:
    data = full_data(event_type)
    set_path(data, path, value)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]


@pytest.mark.parametrize(
    ("event_type", "path"),
    [("help_requested", "id"), ("help_requested", "locker_no"), ("connection", "connection_count")],
)
def test_integers_refuse_floats(service: EventService, event_type: str, path: str) -> None:
    data = full_data(event_type)
    set_path(data, path, 1.0)
    with pytest.raises(EventValidationError):
        service.validate(event_type, data)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_numbers_refuse_nan_and_infinity(service: EventService, value: float) -> None:
    data = full_data("system_status")
    data["health_score"] = value
    with pytest.raises(EventValidationError):
        service.validate("system_status", data)


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_success_is_a_json_boolean(service: EventService, value: Any) -> None:
    data = full_data("command_applied")
    data["result"]["success"] = value
    with pytest.raises(EventValidationError) as excinfo:
        service.validate("command_applied", data)
    assert list(fields_of(excinfo)) == ["data.result.success"]


TIMESTAMP_PATHS = [
    ("help_requested", "created_at"),
    ("help_status_updated", "updated_at"),
    ("command_applied", "command.issued_at"),
    ("command_applied", "result.timestamp"),
]


@pytest.mark.parametrize(("event_type", "path"), TIMESTAMP_PATHS)
@pytest.mark.parametrize(
    "value",
    [
        "2026-11-26T19:00:00",
        "2026-11-26",
        "19:00:00Z",
        "2026-11-26 19:00:00Z",
        "now",
        "",
        1700000000,
    ],
)
def test_timestamps_need_iso_8601_with_a_zone(
    service: EventService, event_type: str, path: str, value: Any
) -> None:
    data = full_data(event_type)
    set_path(data, path, value)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]


ID_PATHS = [
    ("locker_state_changed", "lockerId"),
    ("locker_state_changed", "kioskId"),
    ("locker_state_changed", "userId"),
    ("help_requested", "kiosk_id"),
    ("help_status_updated", "agent_id"),
    ("command_applied", "command.id"),
    ("command_applied", "command.issued_by"),
    ("command_applied", "command.lockerId"),
    ("command_applied", "command.kioskId"),
    ("connection", "connectionId"),
    ("connection", "sessionId"),
]


@pytest.mark.parametrize(("event_type", "path"), ID_PATHS)
@pytest.mark.parametrize("value", ["", 7, None])
def test_ids_are_non_empty_strings(
    service: EventService, event_type: str, path: str, value: Any
) -> None:
    data = full_data(event_type)
    set_path(data, path, value)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]


@pytest.mark.parametrize(
    ("event_type", "path"),
    [
        ("locker_state_changed", "metadata"),
        ("command_applied", "command.parameters"),
        ("command_applied", "result.response_data"),
        ("system_status", "details"),
        ("system_status", "metrics"),
    ],
)
@pytest.mark.parametrize("value", [[], "x", 1, None])
def test_objects_must_be_objects(
    service: EventService, event_type: str, path: str, value: Any
) -> None:
    data = full_data(event_type)
    set_path(data, path, value)
    with pytest.raises(EventValidationError) as excinfo:
        service.validate(event_type, data)
    assert list(fields_of(excinfo)) == [f"data.{path}"]


def test_validate_refuses_unknown_types_and_non_objects(service: EventService) -> None:
    with pytest.raises(UnknownEventTypeError):
        service.validate("locker_exploded", {})
    with pytest.raises(UnknownEventTypeError):
        service.validate(None, {})
    with pytest.raises(EventValidationError) as excinfo:
        service.validate("locker_state_changed", ["not", "an", "object"])
    assert list(fields_of(excinfo)) == ["data"]


def test_check_size() -> None:
    service = EventService(max_event_bytes=100)
    service.check_size({"note": "x" * 80})
    with pytest.raises(PayloadTooLargeError):
        service.check_size({"note": "x" * 100})
    with pytest.raises(BadRequestError):
        service.check_size({"tags": {1, 2}})  # a set is not JSON
    with pytest.raises(BadRequestError):
        service.check_size({1: "non-string key"})


# --------------------------------------------------------------------------
# envelope and versions


@pytest.fixture
def wire(service: EventService) -> dict[str, Any]:
    event = make_event(service, "command_applied", full_data("command_applied"))
    return orjson.loads(service.serialize(event))  # type: ignore[no-any-return]


def test_newer_minor_with_extra_fields_is_accepted(
    service: EventService, wire: dict[str, Any]
) -> None:
    expected = copy.deepcopy(wire)
    wire["version"] = "1.7"
    wire["trace_id"] = "abc"  # envelope
    wire["data"]["colour"] = "red"  # data
    wire["data"]["command"]["priority"] = 3  # nested data
    read = service.deserialize(orjson.dumps(wire))
    assert read == {**expected, "version": "1.7"}


def test_newer_minor_still_checks_known_fields(service: EventService, wire: dict[str, Any]) -> None:
    wire["version"] = "1.7"
    wire["data"]["command"]["type"] = "explode"
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert list(fields_of(excinfo)) == ["data.command.type"]


def test_this_minor_rejects_extra_fields(service: EventService, wire: dict[str, Any]) -> None:
    wire["trace_id"] = "abc"
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(dict(wire))
    assert fields_of(excinfo) == {"trace_id": ["Unknown field."]}
    del wire["trace_id"]
    wire["data"]["colour"] = "red"
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert fields_of(excinfo) == {"data.colour": ["Unknown field."]}


@pytest.mark.parametrize("version", ["2.0", "0.9", "3.1", "10.0"])
def test_another_major_raises_schema_version_error(
    service: EventService, wire: dict[str, Any], version: str
) -> None:
    wire["version"] = version
    with pytest.raises(SchemaVersionError) as excinfo:
        service.deserialize(orjson.dumps(wire))
    assert excinfo.value.code == "unsupported_version"
    assert version in excinfo.value.message


@pytest.mark.parametrize("version", [None, 1, 1.0, "1", "one", "1.0.1", "", "1.0\n"])
def test_bad_version_is_a_validation_error(
    service: EventService, wire: dict[str, Any], version: Any
) -> None:
    wire["version"] = version
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert list(fields_of(excinfo)) == ["version"]


def test_missing_version_is_named(service: EventService, wire: dict[str, Any]) -> None:
    del wire["version"]
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert list(fields_of(excinfo)) == ["version"]


@pytest.mark.parametrize("key", ["id", "type", "version", "namespace", "room", "timestamp", "data"])
def test_envelope_required_fields(service: EventService, wire: dict[str, Any], key: str) -> None:
    del wire[key]
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert key in fields_of(excinfo)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", "not-a-uuid"),
        ("id", str(uuid.uuid1())),
        ("id", "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b\n"),
        ("type", "locker_exploded"),
        ("namespace", "/ws/other"),
        ("namespace", "/ws/lockers"),  # not the namespace of command_applied
        ("room", ""),
        ("timestamp", "2026-11-26T19:00:00"),
        ("seq", 0),
        ("seq", True),
        ("seq", "1"),
        ("epoch", ""),
        ("replayed", "yes"),
        ("data", []),
    ],
)
def test_bad_envelope_values_are_named(
    service: EventService, wire: dict[str, Any], key: str, value: Any
) -> None:
    wire[key] = value
    with pytest.raises(EventValidationError) as excinfo:
        service.deserialize(wire)
    assert list(fields_of(excinfo)) == [key]


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", "not json", b"\xff\xfe", b"[]", b"null", b"42", b'"event"', "[{}]", b"{}"],
)
def test_garbage_is_a_validation_error(service: EventService, raw: str | bytes) -> None:
    with pytest.raises(EventValidationError):
        service.deserialize(raw)


# --------------------------------------------------------------------------
# properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(typed_data)
def test_generated_valid_events_round_trip(item: tuple[str, dict[str, Any]]) -> None:
    event_type, data = item
    service = EventService()
    event = service.create_event(event_type, data)
    assert event["data"] == data
    text = service.serialize(event)
    assert service.deserialize(text) == event
    assert service.deserialize(text.encode()) == event


@settings(max_examples=50)
@given(st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), DATA_STRATEGIES[t])))
def test_generated_valid_events_read_as_newer_minor(item: tuple[str, dict[str, Any]]) -> None:
    event_type, data = item
    service = EventService()
    event = service.create_event(event_type, data)
    newer = {**event, "version": "1.3", "added_later": {"x": 1}}
    newer["data"] = {**event["data"], "added_later": True}
    assert service.deserialize(orjson.dumps(newer)) == {**event, "version": "1.3"}


def _only_our_errors(service: EventService, raw: Any) -> None:
    with contextlib.suppress(EventValidationError, SchemaVersionError):
        service.deserialize(raw)


@settings(max_examples=400)
@given(json_values)
def test_arbitrary_json_raises_only_our_errors(value: Any) -> None:
    service = EventService()
    _only_our_errors(service, value)
    _only_our_errors(service, orjson.dumps(value))
    _only_our_errors(service, orjson.dumps(value).decode())


@settings(max_examples=200)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_garbage_bytes_and_text_raise_only_our_errors(raw: bytes | str) -> None:
    _only_our_errors(EventService(), raw)


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((*prefix, key))
            out.extend(_paths(child, (*prefix, key)))
    return out


wild_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["1.0", "1.9", "2.0", "", "open", "closed", "/ws/events", "kiosk"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(typed_data, st.data())
def test_mutated_valid_events_raise_only_our_errors(
    item: tuple[str, dict[str, Any]], draw: st.DataObject
) -> None:
    """Start from a valid event and break it somewhere: a value, a key, an extra key."""
    event_type, data = item
    service = EventService()
    event = service.create_event(event_type, data)
    for _ in range(draw.draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(event)
        if not paths:
            break
        path = draw.draw(st.sampled_from(paths))
        parent = event
        for key in path[:-1]:
            parent = parent[key]
        action = draw.draw(st.sampled_from(["replace", "delete", "add"]))
        if not isinstance(parent, dict):
            continue
        if action == "replace":
            parent[path[-1]] = draw.draw(wild_values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw.draw(st.text(max_size=8))] = draw.draw(wild_values)
    _only_our_errors(service, event)
    try:
        raw = orjson.dumps(event)
    except orjson.JSONEncodeError:
        return
    _only_our_errors(service, raw)
