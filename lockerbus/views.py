"""What one connection may receive, and who in a room may read an event (contract §10).

Built for the socket delivery path, so that a recipient check stays a few
dictionary look-ups:

* :class:`ConnectionViews` holds one connection's compiled filters: its scope
  (``reach``), the scope narrowed by ``auth.filter`` (replay and fallback),
  and the scope narrowed by each room's ``subscribe`` filter (live room
  deliveries and gap-fill).
* :class:`Audience` indexes members by the kiosks their scope pins, so an
  event tagged ``kiosk=k`` visits the members pinned to ``k`` and the
  unpinned ones, not every kiosk of the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from .auth import Principal
from .filters import Filter, parse_filter
from .tags import tags_of

K = TypeVar("K")
M = TypeVar("M")


class _Tagged(Protocol):
    @property
    def tags(self) -> Mapping[str, str]: ...


T = TypeVar("T", bound=_Tagged)


class ConnectionViews:
    """One connection's compiled filters; every method is a few look-ups."""

    __slots__ = ("connect", "reach", "rooms")

    def __init__(self, principal: Principal, auth_filter: Filter | None = None) -> None:
        #: the scope the server enforces: decides room membership for the fallback
        self.reach: Filter = principal.reach
        #: scope AND auth.filter: the replay on connect and fallback deliveries
        self.connect: Filter = principal.view(auth_filter)
        #: room -> scope AND that room's subscribe filter (absent: the scope)
        self.rooms: dict[str, Filter] = {}

    @classmethod
    def from_auth(cls, principal: Principal, auth: Mapping[str, Any]) -> ConnectionViews:
        """Views for a connection whose ``auth`` may carry ``filter``; bad_request if malformed."""
        raw = auth.get("filter")
        return cls(principal, None if raw is None else parse_filter(raw, "auth.filter"))

    def subscribe(self, room: str, raw_filter: Any = None) -> None:
        """Record a room's ``subscribe`` filter (None: the scope alone); bad_request if bad."""
        if raw_filter is None:
            self.rooms.pop(room, None)
            return
        self.rooms[room] = self.reach.narrow(parse_filter(raw_filter, "filter"))

    def unsubscribe(self, room: str) -> None:
        """Forget a room's filter."""
        self.rooms.pop(room, None)

    def room(self, room: str, tags: Mapping[str, str]) -> bool:
        """Whether a live delivery to ``room`` (or its gap-fill) goes to this connection."""
        return self.rooms.get(room, self.reach).matches(tags)

    def fallback(self, tags: Mapping[str, str]) -> bool:
        """Whether a fallback delivery (the room had no reader) goes to this connection."""
        return self.connect.matches(tags)

    def replay(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The replayed events this connection receives; ``count`` is their number."""
        connect = self.connect
        if connect.everything:
            return list(events)
        return [event for event in events if connect.matches(tags_of(event))]

    def replay_stored(self, events: Sequence[T]) -> Sequence[T]:
        """:meth:`replay` for stored events (their ``tags`` kept beside their bytes)."""
        connect = self.connect
        if connect.everything:
            return events
        return [event for event in events if connect.matches(event.tags)]


class Audience(Generic[K, M]):
    """Members of a room (or namespace), indexed by the kiosks their scope pins.

    A member whose scope names ``kiosk`` values is filed under each of them;
    the others are "open".  :meth:`readers` yields the members whose scope
    matches an event's tags, visiting only the event's kiosk and the open ones.
    """

    __slots__ = ("_all", "_open", "_pinned", "_reach")

    def __init__(self) -> None:
        self._pinned: dict[str, dict[K, M]] = {}
        self._open: dict[K, M] = {}
        self._all: dict[K, M] = {}  # unscoped: every event, no check
        self._reach: dict[K, Filter] = {}

    def add(self, key: K, member: M, reach: Filter) -> None:
        """Add (or replace) ``member`` with its scope ``reach``."""
        self.discard(key)
        self._reach[key] = reach
        if reach.everything:
            self._all[key] = member
            return
        kiosks = dict(reach.items).get("kiosk")
        if kiosks is None:
            self._open[key] = member
            return
        for kiosk in kiosks:
            self._pinned.setdefault(kiosk, {})[key] = member

    def discard(self, key: K) -> None:
        """Remove a member if present."""
        reach = self._reach.pop(key, None)
        if reach is None:
            return
        if self._all.pop(key, None) is not None or self._open.pop(key, None) is not None:
            return
        for kiosk in dict(reach.items).get("kiosk", ()):
            bucket = self._pinned.get(kiosk)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self._pinned[kiosk]

    def __len__(self) -> int:
        return len(self._reach)

    def readers(self, tags: Mapping[str, str]) -> Iterator[M]:
        """Members whose scope matches ``tags`` (each once)."""
        reach = self._reach
        kiosk = tags.get("kiosk")
        if kiosk is not None:
            pinned = self._pinned.get(kiosk)
            if pinned:
                for key, member in pinned.items():
                    if reach[key].matches(tags):
                        yield member
        for key, member in self._open.items():
            if reach[key].matches(tags):
                yield member
        yield from self._all.values()

    def any_reader(self, tags: Mapping[str, str]) -> bool:
        """Whether some member may read ``tags`` (else the event falls back, §3)."""
        return next(self.readers(tags), None) is not None
