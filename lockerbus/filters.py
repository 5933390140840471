"""Filters and scopes over event tags (contract §10).

A filter is a JSON object from tag name to a string or a list of strings; an
event matches when it has every named tag with one of the listed values.  It
is parsed once into a :class:`Filter`, whose :meth:`Filter.matches` is one
dictionary look-up and one set membership per key, so a recipient check in the
fan-out costs almost nothing.  A scope is a filter the server enforces;
:meth:`Filter.narrow` combines a scope with a client's filter (a filter never
widens a scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from .errors import BadRequestError

MAX_KEYS: Final = 16
MAX_VALUES: Final = 100
MAX_BYTES: Final = 4096
MAX_NAME: Final = 64


class Filter:
    """A compiled filter: every key's tag must be one of its values."""

    __slots__ = ("_hash", "items")

    def __init__(self, items: Mapping[str, frozenset[str]]) -> None:
        #: (tag name, allowed values) pairs, sorted by name; an empty set matches nothing
        self.items: tuple[tuple[str, frozenset[str]], ...] = tuple(sorted(items.items()))
        self._hash = hash(self.items)

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Whether an event with ``tags`` passes this filter."""
        for name, values in self.items:  # noqa: SIM110 - a loop is faster than all(genexpr)
            if tags.get(name) not in values:
                return False
        return True

    @property
    def everything(self) -> bool:
        """True for ``{}``: the filter lets every event through."""
        return not self.items

    def narrow(self, other: Filter | None) -> Filter:
        """The filter matching what both this and ``other`` match."""
        if other is None or other.everything:
            return self
        if self.everything:
            return other
        merged = dict(self.items)
        for name, values in other.items:
            merged[name] = merged[name] & values if name in merged else values
        return Filter(merged)

    def to_json(self) -> dict[str, list[str]]:
        """The filter as a JSON object (lists sorted), e.g. for a token claim."""
        return {name: sorted(values) for name, values in self.items}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and self.items == other.items

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Filter({self.to_json()!r})"


EVERYTHING: Final = Filter({})


def parse_filter(value: Any, what: str = "filter") -> Filter:
    """Validate a filter object; :class:`BadRequestError` naming the problem otherwise.

    ``what`` names the filter in errors (``filter``, ``auth.filter``, ``scope``).
    """
    if not isinstance(value, Mapping):
        raise BadRequestError(f"{what} must be an object from tag names to strings")
    if len(value) > MAX_KEYS:
        raise BadRequestError(f"{what} has {len(value)} keys; at most {MAX_KEYS}")
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:
        raise BadRequestError(f"{what} is not representable as JSON: {exc}") from None
    if size > MAX_BYTES:
        raise BadRequestError(f"{what} is {size} bytes as JSON; at most {MAX_BYTES}")
    items: dict[str, frozenset[str]] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise BadRequestError(f"{what} keys must be tag names of 1 to {MAX_NAME} characters")
        items[name] = _values(raw, f"{what}.{name}")
    return Filter(items)


def parse_filter_json(text: str, what: str = "filter") -> Filter:
    """A filter given as JSON text (``GET /api/events?filter=``, ``--scope``)."""
    if len(text.encode()) > MAX_BYTES:
        raise BadRequestError(f"{what} is over {MAX_BYTES} bytes")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}") from None
    return parse_filter(value, what)


def _values(raw: Any, path: str) -> frozenset[str]:
    if isinstance(raw, str):
        return frozenset((raw,))
    if not isinstance(raw, list):
        raise BadRequestError(f"{path} must be a string or a list of strings")
    if not 1 <= len(raw) <= MAX_VALUES:
        raise BadRequestError(f"{path} must list 1 to {MAX_VALUES} values, got {len(raw)}")
    if not all(isinstance(item, str) for item in raw):
        raise BadRequestError(f"{path} must list strings only")
    return frozenset(raw)
