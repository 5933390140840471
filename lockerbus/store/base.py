"""The event store contract: every backend (memory, SQLite, Redis) keeps it.

This is where "no event lost" is decided, so the guarantees are stated here,
on the interface, and one shared test suite (tests/test_store_contract.py)
holds every backend to them.

Guarantees
----------
* ``append`` assigns ``seq`` (per namespace, 1, 2, 3, ... strictly increasing,
  never reused within an epoch) and the store's ``epoch`` atomically with the
  write: when it returns, the event is stored (durably, for a durable store)
  and will be returned by ``replay``/``page`` until it expires or is evicted.
  When it raises, nothing was stored and no seq was consumed.  (A caller
  cancelled while awaiting a durable append may find the event stored: the
  write, once queued, is not withdrawn.)
* Concurrent appends never produce duplicate or out-of-order seqs, and
  ``append`` calls resolve in seq order within a namespace: a caller that
  broadcasts right after ``await store.append(...)``, with no other await in
  between, broadcasts in seq order.
* Eviction (TTL, capacity, corruption) removes the oldest events first within
  a namespace, except where a per-event TTL is shorter; any hole it leaves is
  detected, never hidden: a replay across it answers ``recovered=False``.
  Retention holds per namespace (contract §11): capacity (``max_events``) and
  the TTL apply to each namespace on its own, so no namespace's events push
  another's out; :meth:`StoreOptions.retention` gives a namespace's limits.
  An expired event is never returned, whether or not cleanup has removed it
  yet; it is counted under ``ttl`` once removed.
* State (contract §11): each locker's latest state and the open help requests
  are kept beside the history (:mod:`lockerbus.store.state`), changed in the
  same atomic step as the append of the event that changes them, never
  expired or evicted with history, durable with a durable store.  ``append``
  refuses (``ConflictError``, nothing stored, no seq consumed) a
  ``help_requested`` whose id is open, and a ``help_status_updated`` whose
  request is not open or whose ``old_status`` is not its status; of two
  racing appends, exactly one passes.  :meth:`EventStore.read_state` reads one
  kind with the namespace position (``last_seq``, ``epoch``) it reflects.
* ``last_seq`` of a namespace outlives its events: after every event expired,
  the next append still continues the sequence.
* ``epoch`` names the sequence space.  It changes when the store is new (a
  memory store on every start); a durable store keeps it across restarts.
* Every stored record carries a checksum of its serialized form; a record that
  fails it, or no longer deserializes, is removed, counted as ``corrupt``,
  logged once, and makes a replay across it answer ``recovered=False``.
  Records are checked when read and by every ``cleanup()``.
* Event ids are unique while held (contract §12): ``append`` of an event whose
  ``id`` the store still holds stores nothing and raises :class:`DuplicateEvent`
  carrying the stored event.  The check is atomic with the write, so it holds
  for concurrent appends, across instances sharing a store and after a restart
  of a durable one.  An expired or evicted event's id is free again.
* Storage failures raise :class:`~lockerbus.errors.StoreUnavailableError`;
  ``check()`` raises it with the reason while the store cannot serve.
* No method blocks the event loop: file and network work runs off it.

Lifecycle: a store is *new* until ``start()`` opens it, *open* until
``close()``, then *closed* for good.  ``start()`` on an open store returns at
once; ``close()`` is idempotent and may be called while ``start()`` runs.

:class:`EventStore` is the contract, a Protocol: the layers that use a store
(service, delivery, HTTP) import it from here, and this module imports nothing
above :mod:`lockerbus.events`.  The backends share their skeleton through
:class:`lockerbus.store.backend.BaseEventStore`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, Protocol, Self

from ..events import Event

EVICTION_REASONS: Final = ("ttl", "capacity", "corrupt")


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of one namespace's history a store holds: at most ``max_events``
    events, each for at most ``ttl_seconds``."""

    max_events: int
    ttl_seconds: float


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What every backend is configured with (contract §1 and §11 settings).

    ``max_events`` and ``ttl_seconds`` hold for each namespace on its own;
    ``namespaces`` overrides them for the namespaces it names.
    """

    max_events: int = 10_000
    ttl_seconds: float = 24 * 3600
    cleanup_interval_seconds: float = 30 * 60
    namespaces: Mapping[str, Retention] = field(default_factory=lambda: MappingProxyType({}))

    def retention(self, namespace: str) -> Retention:
        """The limits of ``namespace``: its override, else the defaults."""
        found = self.namespaces.get(namespace)
        return found if found is not None else Retention(self.max_events, self.ttl_seconds)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay or a page returns (contract §6 and §7).

    ``events`` are oldest first.  ``last_seq`` is the newest seq the answer
    covers: for ``replay`` the namespace's latest assigned seq at the time of
    the call (0 when none), so live events after it have greater seqs; for
    ``page`` the seq of the last event returned when ``has_more``, else the
    namespace's latest.  ``recovered`` is True/False for a seq-based replay
    and None for a time-based one or a page.
    """

    events: list[Event]
    last_seq: int
    epoch: str
    recovered: bool | None
    has_more: bool


class StoredEvent(Protocol):
    """One held event as the store keeps it, for delivery without a decode.

    ``json`` is the envelope exactly as :func:`lockerbus.store.codec.encode`
    gives it (what ``orjson.dumps`` of the event returns), checksum verified;
    ``type``, ``room`` and ``tags`` are what delivery decides on (the frame's
    event name, gap-fill's room, contract §10 matching) without decoding it.
    """

    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def room(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def json(self) -> bytes: ...


class StoredRow(NamedTuple):
    """A :class:`StoredEvent` a backend builds from a row (the memory store hands out
    its own records)."""

    seq: int
    type: str
    room: str
    tags: Mapping[str, str]
    json: bytes


@dataclass(frozen=True, slots=True)
class StoredReplay:
    """A replay or page (see :class:`ReplayResult`) of stored events, not decoded."""

    events: Sequence[StoredEvent]
    last_seq: int
    epoch: str
    recovered: bool | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    """Figures for one namespace."""

    count: int
    oldest_seq: int | None
    newest_seq: int | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Figures for ``/api/stats`` and ``/metrics``."""

    backend: str
    epoch: str
    events: int
    #: the default per-namespace capacity (``StoreOptions.max_events``)
    max_events: int
    namespaces: dict[str, NamespaceStats]
    evictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVICTION_REASONS, 0))


class DuplicateEvent(Exception):
    """``append`` found the event's ``id`` held already: nothing was stored.

    ``event`` is the stored one (with its seq and epoch), for the idempotent
    answer of contract §12.
    """

    def __init__(self, event: Event) -> None:
        super().__init__(f"event {event.get('id')} is stored already")
        self.event = event


#: One item's outcome in ``append_many``: the stored event, or why it was not stored
#: (DuplicateEvent, ConflictError, ValueError, TypeError, StoreUnavailableError).
Appended = Event | Exception


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """One kind of state (``lockers`` or ``help``) as of its namespace's ``last_seq``.

    ``entries`` reflect exactly the events up to ``last_seq`` of that
    namespace in ``epoch``: a client that loads them and then resumes from
    ``last_seq`` misses nothing and gets nothing twice.
    """

    entries: list[dict[str, Any]]
    last_seq: int
    epoch: str


class EventStore(Protocol):
    """A per-namespace, seq-numbered, expiring event log."""

    #: The name of the sequence space; set by :meth:`start`.
    epoch: str

    async def start(self) -> None:
        """Open the backend and start background cleanup; call once before use."""

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store a validated event; returns it with ``seq`` and ``epoch`` set.

        ``event["namespace"]`` picks the sequence; ``ttl_seconds`` shortens
        the store's TTL for this event (it never extends it: the store's TTL
        is the retention limit).  The argument is not mutated, and must not
        be mutated by others until this returns.  Raises ValueError for an
        event without namespace or timestamp, TypeError for one JSON cannot
        carry, ConflictError for a help event the state refuses (see above),
        StoreUnavailableError when storage fails.
        """

    async def append_many(
        self, events: list[Event], *, ttl_seconds: float | None = None
    ) -> list[Appended]:
        """Append ``events`` in order, in one write where the backend can.

        Each item succeeds or fails on its own, as one ``append`` would (its
        outcome is in the same position); seqs follow item order within a
        namespace.  Raises only for an error before anything was written.
        """

    async def replay(
        self,
        namespace: str,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """Events for a reconnecting client (contract §6).

        With ``after_seq``: every held event with a greater seq, oldest first,
        and ``recovered=True`` when all of them are still held, at most
        ``limit`` of them, and ``epoch`` (None counts as the current one)
        matches; otherwise the newest ``limit`` events of the namespace and
        ``recovered=False``.  With ``since`` (an aware datetime): the newest
        ``limit`` events whose timestamp is at or after it, oldest first,
        ``recovered=None``.  With neither: the newest ``limit`` events,
        ``recovered=None``.  ``after_seq`` takes precedence over ``since``.
        ``has_more`` says whether matching events were left out (for the
        ``recovered=False`` fallback: whether the namespace holds more).
        The decision itself is :func:`lockerbus.recovery.decide`.
        """

    async def page(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """Read forward through history: the oldest ``limit`` events after
        ``after_seq`` (and at or after ``since``), for paging and projections."""

    async def replay_stored(
        self,
        namespace: str,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> StoredReplay:
        """:meth:`replay`, answering the stored bytes (what the socket replay sends)."""

    async def page_stored(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> StoredReplay:
        """:meth:`page`, answering the stored bytes (what the subscribe gap-fill sends)."""

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` in this epoch (0 when none)."""

    async def read_state(self, kind: Literal["lockers", "help"]) -> StateSnapshot:
        """The lockers (by kioskId, lockerId) or the open help requests (by id), each
        entry with the ``seq`` that last changed it, read atomically with the
        position of ``/ws/lockers`` or ``/ws/help`` they reflect."""

    async def rebuild_state(self) -> int:
        """Rebuild the state from the history held, atomically with appends (an admin
        operation, ``lockerbus state rebuild``: after a restore); returns how many
        entries it holds.  What history no longer holds is lost from the state."""

    async def stats(self) -> StoreStats:
        """Counts, seq ranges and evictions by reason."""

    async def cleanup(self) -> int:
        """Remove expired events now; returns how many were removed."""

    async def check(self) -> None:
        """Return when the store can serve; raise StoreUnavailableError with the reason.

        A durable store proves its write path here, so readiness follows
        whether appends would work.
        """

    async def close(self) -> None:
        """Stop background work, flush and release the backend. Idempotent."""

    async def __aenter__(self) -> Self:
        """``start()``, then the store itself."""

    async def __aexit__(self, *exc_info: object) -> None:
        """``close()``."""
