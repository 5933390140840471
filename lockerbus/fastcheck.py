"""A compiled happy path in front of marshmallow's ``Schema.load``.

marshmallow stays the single source of truth.  At import time
:func:`compile_schema` reads a schema's declared fields, validators and
``@validates_schema`` hooks and builds a plain function that, for input it is
*certain* about, returns exactly what ``schema.load`` would.  Whenever it is
not certain (a wrong type, a missing required field, an unknown key, a value a
validator refuses, anything it does not know how to check) it answers
:data:`UNSURE`, and :class:`Loader` asks marshmallow, so every error message
comes from marshmallow.  A schema using a feature the compiler does not know
(``pre_load``, ``data_key``, a field class it has not been told about...)
gets no fast path at all.

What the fast path may decide on its own is deliberately narrow:

* the input is a plain ``dict`` (nested: a plain ``dict``) with ``str`` keys;
* ``fields.String`` takes exactly ``str`` (marshmallow also decodes bytes:
  that case goes to marshmallow);
* field classes marked :func:`value_only` are run through their own
  ``_deserialize`` (their result depends on the value alone);
* ``fields.Dict`` with no value field and no key field or a plain
  ``fields.String`` key field;
* ``fields.Nested`` of a single schema, compiled the same way;
* validators are the field's own objects, called as marshmallow calls them;
* schema validators are the schema's own bound hooks, called with the
  arguments marshmallow passes.

A property test (tests/test_fastcheck.py) checks that it never accepts what
marshmallow rejects and that it returns exactly what marshmallow returns.

Two marshmallow private names are read, each behind one function here
(:func:`field_deserializer`, :func:`schema_hooks`) and listed in
:data:`MARSHMALLOW_INTERNALS`, which tests/test_sio_adapter.py checks against
the installed marshmallow (pyproject.toml caps it below 5).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, missing
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA
from marshmallow.validate import Length, OneOf, Range, Regexp, Validator

__all__ = ["UNSURE", "Loader", "compile_schema", "value_only"]


class _Unsure:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSURE"


UNSURE: Final[Any] = _Unsure()
"""What a compiled checker answers when only marshmallow can decide."""

Check = Callable[[Any], Any]
"""A compiled check: the loaded value, or :data:`UNSURE`."""

FastLoad = Callable[[Any], "dict[str, Any] | None"]
"""A compiled schema: the loaded dict, or None when marshmallow must decide."""

_VALUE_ONLY: set[type[fields.Field[Any]]] = set()
_F = TypeVar("_F", bound=type[fields.Field[Any]])


def value_only(cls: _F) -> _F:
    """Mark a field class whose ``_deserialize`` depends on the value alone.

    Such a field's ``_deserialize(value, None, None)`` is what the fast path
    runs; it must not look at ``attr``, ``data`` or keyword arguments.
    Subclasses are not marked by inheritance.
    """
    _VALUE_ONLY.add(cls)
    return cls


class Unsupported(Exception):
    """The compiler cannot prove a fast check equivalent; marshmallow does it all."""


def _check_plain_field(field: fields.Field[Any]) -> None:
    if field.data_key is not None or field.attribute is not None:
        raise Unsupported("data_key/attribute")
    if field.load_default is not missing:
        raise Unsupported("load_default")
    if field.allow_none or field.pre_load or field.post_load:
        raise Unsupported("allow_none/pre_load/post_load")


Predicate = Callable[[Any], bool]


def _predicate(validator: Callable[[Any], Any], *, str_values: bool) -> Predicate:
    """``validator`` as a yes/no test; marshmallow's common validators are inlined."""
    cls = type(validator)
    if cls is OneOf and isinstance(validator, OneOf):
        choices = validator.choices
        if str_values and all(type(choice) is str for choice in choices):
            # for str values and str choices, set membership is exactly tuple membership
            return frozenset(choices).__contains__
        return lambda value: _passes(validator, value)
    if cls is Length and isinstance(validator, Length):
        low, high, equal = validator.min, validator.max, validator.equal
        if equal is not None:
            return lambda value: len(value) == equal
        # a length is never below 0 nor above sys.maxsize: the open bounds are these
        shortest = 0 if low is None else low
        longest = sys.maxsize if high is None else high
        return lambda value: shortest <= len(value) <= longest
    if cls is Range and isinstance(validator, Range):
        low, high = validator.min, validator.max
        low_in, high_in = validator.min_inclusive, validator.max_inclusive

        def in_range(value: Any) -> bool:
            if low is not None and (value < low if low_in else value <= low):
                return False
            return not (high is not None and (value > high if high_in else value >= high))

        return in_range
    if cls is Regexp and isinstance(validator, Regexp):
        match = validator.regex.match
        return lambda value: match(value) is not None
    return lambda value: _passes(validator, value)


def _passes(validator: Callable[[Any], Any], value: Any) -> bool:
    """Whether ``validator`` accepts ``value``, judged as ``Field._validate`` judges it."""
    try:
        result = validator(value)
    except ValidationError:
        return False
    # a plain callable fails by returning False
    return not (result is False and not isinstance(validator, Validator))


def _with_validators(field: fields.Field[Any], check: Check, *, str_values: bool) -> Check:
    """Follow ``check`` with the field's own validators, in marshmallow's order."""
    tests = tuple(_predicate(v, str_values=str_values) for v in field.validators)
    if not tests:
        return check
    if len(tests) == 1:
        (test,) = tests
        if check is _string:
            return lambda value: value if type(value) is str and test(value) else UNSURE

        def one(value: Any) -> Any:
            out = check(value)
            return out if out is not UNSURE and test(out) else UNSURE

        return one

    def every(value: Any) -> Any:
        out = check(value)
        if out is UNSURE:
            return UNSURE
        for test in tests:
            if not test(out):
                return UNSURE
        return out

    return every


def _string(value: Any) -> Any:
    return value if type(value) is str else UNSURE


def _compile_field(field: fields.Field[Any]) -> Check:
    _check_plain_field(field)
    cls = type(field)
    check: Check
    if cls is fields.String:
        check = _string
    elif cls in _VALUE_ONLY:
        deserialize = field_deserializer(field)

        def check(value: Any) -> Any:
            if value is None:
                return UNSURE
            try:
                return deserialize(value, None, None)
            except ValidationError:
                return UNSURE

    elif cls is fields.Dict:
        check = _compile_dict(field)
    elif cls is fields.Nested:
        check = _compile_nested(field)
    else:
        raise Unsupported(f"field class {cls.__name__}")
    return _with_validators(field, check, str_values=cls is fields.String)


def _compile_dict(field: fields.Field[Any]) -> Check:
    if not isinstance(field, fields.Dict):
        raise Unsupported(f"not a Dict: {type(field).__name__}")
    if field.value_field is not None:
        raise Unsupported("Dict with a value field")
    key_field = field.key_field
    if key_field is None:

        def free(value: Any) -> Any:
            return dict(value) if type(value) is dict else UNSURE

        return free
    if type(key_field) is not fields.String or key_field.validators:
        raise Unsupported("Dict key field other than a plain String")
    _check_plain_field(key_field)

    def string_keys(value: Any) -> Any:
        if type(value) is not dict:
            return UNSURE
        for key in value:
            if type(key) is not str:
                return UNSURE
        return dict(value)

    return string_keys


def _compile_nested(field: fields.Field[Any]) -> Check:
    if not isinstance(field, fields.Nested):
        raise Unsupported(f"not a Nested: {type(field).__name__}")
    if field.many:
        raise Unsupported("Nested many")
    schema = field.schema
    load = compile_schema(schema, unknown=field.unknown)
    if load is None:
        raise Unsupported("nested schema")

    def nested(value: Any) -> Any:
        out = load(value)
        return UNSURE if out is None else out

    return nested


def compile_schema(schema: Schema, *, unknown: str | None = None) -> FastLoad | None:
    """A fast loader equivalent to ``schema.load`` on valid input, or None if unsupported.

    ``unknown`` overrides the schema's own setting, as ``load(unknown=...)`` does.
    """
    try:
        return _compile_schema(schema, unknown or schema.unknown)
    except Unsupported:
        return None


def _compile_schema(schema: Schema, unknown: str) -> FastLoad:
    if schema.many or schema.partial or schema.dict_class is not dict:
        raise Unsupported("many/partial/dict_class")
    if unknown not in (RAISE, EXCLUDE):
        raise Unsupported(f"unknown={unknown}")
    hooks = schema_hooks(schema)
    if hooks[PRE_LOAD] or hooks[POST_LOAD] or hooks[VALIDATES]:
        raise Unsupported("pre_load/post_load/validates hooks")
    schema_validators: list[Callable[..., Any]] = []
    # marshmallow runs pass_many validators first, then the others
    for pass_many in (True, False):
        for attr_name, hook_many, hook_kwargs in hooks[VALIDATES_SCHEMA]:
            if hook_many != pass_many:
                continue
            if hook_kwargs.get("pass_original"):
                raise Unsupported("pass_original")
            schema_validators.append(getattr(schema, attr_name))
    specs: list[tuple[str, bool, Check]] = []
    for name, field in schema.load_fields.items():
        if "." in name:
            raise Unsupported("dotted attribute")
        specs.append((name, bool(field.required), _compile_field(field)))
    frozen_specs = tuple(specs)
    strict = unknown == RAISE
    partial = schema.partial
    validators = tuple(schema_validators)
    absent: Any = missing

    def load(data: Any) -> dict[str, Any] | None:
        if type(data) is not dict:
            return None
        out: dict[str, Any] = {}
        found = 0
        for name, required, check in frozen_specs:
            value = data.get(name, absent)
            if value is absent:
                if required:
                    return None
                continue
            loaded = check(value)
            if loaded is UNSURE:
                return None
            out[name] = loaded
            found += 1
        if strict and found != len(data):
            return None
        for validator in validators:
            try:
                validator(out, partial=partial, many=False, unknown=unknown)
            except ValidationError:
                return None
        return out

    return load


class Loader:
    """``schema.load`` with a compiled fast path for input that is certainly valid."""

    __slots__ = ("fast", "schema")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.fast = compile_schema(schema)

    def load(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """What ``schema.load(data)`` returns; raises its ``ValidationError`` when invalid."""
        fast = self.fast
        if fast is not None:
            try:
                out = fast(data)
            except Exception:
                out = None  # never decide on a surprise: marshmallow will say what it is
            if out is not None:
                return out
        loaded: dict[str, Any] = self.schema.load(data)
        return loaded


# -- marshmallow private names ------------------------------------------------------


def field_deserializer(field: fields.Field[Any]) -> Callable[..., Any]:
    """The field's own value conversion (``Field._deserialize``), without its checks."""
    return field._deserialize


def schema_hooks(schema: Schema) -> Mapping[str, Any]:
    """The schema's registered decorator hooks (``Schema._hooks``), by hook kind."""
    return schema._hooks


def _hooks_hold() -> bool:
    """``_hooks`` maps each kind to a list of ``(attr_name, pass_many, kwargs)``."""
    from marshmallow import validates_schema

    class Probe(Schema):
        @validates_schema
        def check(self, data: Any, **kwargs: Any) -> None:
            """A hook to find in ``_hooks``."""

    hooks = schema_hooks(Probe())
    if not all(isinstance(hooks[kind], list) for kind in (PRE_LOAD, POST_LOAD, VALIDATES)):
        return False
    entries = hooks[VALIDATES_SCHEMA]
    return (
        len(entries) == 1
        and len(entries[0]) == 3
        and entries[0][0] == "check"
        and entries[0][1] is False
        and isinstance(entries[0][2], dict)
    )


#: (symbol, check): each check is True while marshmallow still has it as used here
MARSHMALLOW_INTERNALS: Final[tuple[tuple[str, Callable[[], bool]], ...]] = (
    (
        "marshmallow.fields.Field._deserialize",
        lambda: callable(getattr(fields.Field, "_deserialize", None)),
    ),
    ("marshmallow.Schema._hooks", _hooks_hold),
)
