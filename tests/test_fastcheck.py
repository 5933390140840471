"""lockerbus.fastcheck: the compiled path never disagrees with marshmallow."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from lockerbus import events
from lockerbus.fastcheck import UNSURE, Loader, compile_schema
from lockerbus.service import EventService
from tests.eventdata import DATA_STRATEGIES, ENUMERATIONS, TYPES, full_data, typed_data

REJECTED = object()


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types and the same key order all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


def marshmallow_says(schema: Schema, data: Any) -> Any:
    try:
        return schema.load(copy.deepcopy(data))
    except ValidationError:
        return REJECTED


def assert_agrees(schema: Schema, data: Any) -> Any:
    """The fast path either declines or returns exactly marshmallow's result."""
    fast = compile_schema(schema)
    assert fast is not None
    expected = marshmallow_says(schema, data)
    try:
        got = fast(copy.deepcopy(data))
    except Exception:  # Loader treats a surprise as "not sure"
        got = None
    if got is not None:
        assert expected is not REJECTED, f"fast path accepted what marshmallow rejects: {data!r}"
        assert same(got, expected), (got, expected)
    # and the Loader as a whole always answers as marshmallow does
    loader = Loader(schema)
    if expected is REJECTED:
        with pytest.raises(ValidationError) as through_loader:
            loader.load(copy.deepcopy(data))
        with pytest.raises(ValidationError) as direct:
            schema.load(copy.deepcopy(data))
        assert through_loader.value.messages == direct.value.messages
    else:
        assert same(loader.load(copy.deepcopy(data)), expected)
    return got


def _all_schemas() -> list[tuple[str, Schema]]:
    out: list[tuple[str, Schema]] = []
    for label, table in (("strict", events.DATA_SCHEMAS), ("lenient", events.DATA_SCHEMAS_LENIENT)):
        for name, schema in table.items():
            out.append((f"{label}:{name}", schema))
    out.append(("strict:envelope", events.ENVELOPE_SCHEMA))
    out.append(("lenient:envelope", events.ENVELOPE_SCHEMA_LENIENT))
    return out


ALL_SCHEMAS = _all_schemas()


@pytest.mark.parametrize(("label", "schema"), ALL_SCHEMAS, ids=[x[0] for x in ALL_SCHEMAS])
def test_every_project_schema_compiles(label: str, schema: Schema) -> None:
    assert compile_schema(schema) is not None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(typed_data, st.booleans())
def test_valid_data_takes_the_fast_path_and_matches(
    item: tuple[str, dict[str, Any]], lenient: bool
) -> None:
    event_type, data = item
    schema = (events.DATA_SCHEMAS_LENIENT if lenient else events.DATA_SCHEMAS)[event_type]
    got = assert_agrees(schema, data)
    assert got is not None, "valid data should not need marshmallow"


@settings(max_examples=100)
@given(typed_data)
def test_valid_envelopes_take_the_fast_path_and_match(item: tuple[str, dict[str, Any]]) -> None:
    event_type, data = item
    event = EventService().create_event(event_type, data)
    event.update(seq=3, epoch="e", replayed=False)
    got = assert_agrees(events.ENVELOPE_SCHEMA, event)
    assert got is not None


class StrSubclass(str):
    __slots__ = ()


tricky_scalars = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        100,
        101,
        1.0,
        -0.0,
        100.0,
        100.5,
        float("nan"),
        float("inf"),
        2**80,
        "",
        "x",
        "open",
        "closed",
        "kiosk",
        "1.0",
        "2026-11-26T19:00:00Z",
        "2026-11-26T19:00:00",
        "/ws/events",
        b"open",
        b"\xff",
        bytearray(b"x"),
        StrSubclass("open"),
        (),
        ("a",),
        [],
        {},
        {"a": 1},
        {1: "int key"},
        OrderedDict(a=1),
    ]
)
wild_values = st.recursive(
    tricky_scalars | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=3)
    ),
    max_leaves=8,
)


_ENUM_VALUES = sorted(
    {v for _, _, choices in ENUMERATIONS for v in choices} | {"/ws/lockers", "/ws/help"}
)
near_strings = st.text(max_size=8) | st.sampled_from(_ENUM_VALUES).flatmap(
    lambda v: st.sampled_from([v, v.upper(), f" {v}", f"{v}\n", v[:-1], f"{v}x"])
)
edge_numbers = st.sampled_from(
    [-1, -0.5, -0.0, 0, 0.0, 1e-9, -1e-9, 99.999, 100, 100.0, 100.0001, 100.5, 101, 2**63, True]
)
replacements = wild_values | st.text(max_size=12) | near_strings | edge_numbers


def _dict_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out.extend(_dict_paths(child, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    data = draw(DATA_STRATEGIES[event_type])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_dict_paths(data)))
        target: Any = data
        for key in path:
            target = target[key]
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["wild", "string", "number", "delete", "add", "same-state"]))
        keys = list(target)
        if action in ("wild", "string", "number") and keys:
            value = {"wild": wild_values, "string": near_strings, "number": edge_numbers}[action]
            target[draw(st.sampled_from(keys))] = draw(value)
        elif action == "delete" and keys:
            del target[draw(st.sampled_from(keys))]
        elif action == "add":
            target[draw(st.text(max_size=8) | st.integers())] = draw(wild_values)
        elif action == "same-state":
            for old, new in (("oldState", "newState"), ("old_status", "new_status")):
                if old in target:
                    target[new] = target[old]
    return data


@pytest.mark.parametrize("event_type", TYPES)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data(), lenient=st.booleans())
def test_fast_path_never_accepts_what_marshmallow_rejects(
    event_type: str, draw: st.DataObject, lenient: bool
) -> None:
    data = draw.draw(mutated(event_type))
    schema = (events.DATA_SCHEMAS_LENIENT if lenient else events.DATA_SCHEMAS)[event_type]
    assert_agrees(schema, data)


@settings(max_examples=300)
@given(wild_values)
def test_wild_input_agrees(value: Any) -> None:
    for _, schema in ALL_SCHEMAS:
        assert_agrees(schema, value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(typed_data, st.data())
def test_mutated_envelopes_agree(item: tuple[str, dict[str, Any]], draw: st.DataObject) -> None:
    event_type, data = item
    event = EventService().create_event(event_type, data)
    key = draw.draw(
        st.sampled_from(["id", "type", "version", "namespace", "room", "timestamp", "data", "seq"])
    )
    if draw.draw(st.booleans()):
        event.pop(key, None)
    else:
        event[key] = draw.draw(replacements)
    for schema in (events.ENVELOPE_SCHEMA, events.ENVELOPE_SCHEMA_LENIENT):
        assert_agrees(schema, event)


# --------------------------------------------------------------------------
# what the compiler declines, and the edges it must leave to marshmallow


def test_bytes_and_str_subclasses_go_to_marshmallow() -> None:
    schema = events.DATA_SCHEMAS["locker_state_changed"]
    fast = compile_schema(schema)
    assert fast is not None
    data = full_data("locker_state_changed")
    data["lockerId"] = b"locker-1"  # marshmallow's String decodes bytes
    assert fast(data) is None
    assert Loader(schema).load(data)["lockerId"] == "locker-1"


def test_states_differ_is_checked_on_the_fast_path() -> None:
    schema = events.DATA_SCHEMAS["locker_state_changed"]
    fast = compile_schema(schema)
    assert fast is not None
    data = full_data("locker_state_changed")
    data["newState"] = data["oldState"]
    assert fast(data) is None
    with pytest.raises(ValidationError) as excinfo:
        Loader(schema).load(data)
    assert excinfo.value.messages == {"newState": ["Must differ from oldState."]}


class WithPreLoad(Schema):
    name = fields.String()

    @pre_load
    def _strip(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v.strip() for k, v in data.items()}


class WithDataKey(Schema):
    name = fields.String(data_key="Name")


class WithDefault(Schema):
    name = fields.String(load_default="x")


class WithAllowNone(Schema):
    name = fields.String(allow_none=True)


class WithBuiltinInteger(Schema):
    count = fields.Integer()  # takes "1" and 1.0: not ours to second-guess


class WithDictValues(Schema):
    tags = fields.Dict(keys=fields.String(), values=fields.Integer())


class WithNestedMany(Schema):
    items = fields.Nested(WithDataKey, many=True)


class WithPassOriginal(Schema):
    name = fields.String()

    @validates_schema(pass_original=True)
    def _look(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("schema", "data"),
    [
        (WithPreLoad(), {"name": " a "}),
        (WithDataKey(), {"Name": "a"}),
        (WithDefault(), {}),
        (WithAllowNone(), {"name": None}),
        (WithBuiltinInteger(), {"count": "1"}),
        (WithDictValues(), {"tags": {"a": "1"}}),
        (WithNestedMany(), {"items": [{"Name": "a"}]}),
        (WithPassOriginal(), {"name": "a"}),
    ],
)
def test_unsupported_features_leave_it_all_to_marshmallow(schema: Schema, data: Any) -> None:
    assert compile_schema(schema) is None
    loader = Loader(schema)
    assert loader.fast is None
    assert loader.load(data) == schema.load(data)


class Validated(Schema):
    word = fields.String(validate=[validate.Length(min=2), lambda v: v != "no"])
    size = events.Number(validate=validate.Range(min=0, max=10, min_inclusive=False))
    code = fields.String(validate=validate.Regexp(r"[a-z]+\Z"))
    pick = events.Integer(validate=validate.OneOf([1, 2, True]))
    exact = fields.String(validate=validate.Length(equal=3))


@pytest.mark.parametrize(
    "data",
    [
        {"word": "ok"},
        {"word": "no"},
        {"word": "n"},
        {"size": 0},
        {"size": 0.0001},
        {"size": 10},
        {"size": 10.5},
        {"code": "abc"},
        {"code": "abc\n"},
        {"code": "ABC"},
        {"pick": 1},
        {"pick": 3},
        {"exact": "abc"},
        {"exact": "ab"},
    ],
)
def test_validators_agree(data: dict[str, Any]) -> None:
    assert compile_schema(Validated()) is not None
    assert_agrees(Validated(), data)


def test_unknown_exclude_override_and_unsure_repr() -> None:
    schema = events.DATA_SCHEMAS["connection"]
    fast = compile_schema(schema, unknown=EXCLUDE)
    assert fast is not None
    data = full_data("connection")
    assert fast({**data, "extra": 1}) == data
    assert repr(UNSURE) == "UNSURE"
