"""The default store: events in process memory, one log per namespace.

Each namespace's :class:`~lockerbus.store.memory_log.Log` holds its records in
seq order and owns their lifetime (the namespace's TTL, or a shorter per-event
one) and capacity (the namespace's ``max_events``), so no namespace's events
push another's out, and expiry and capacity eviction remove the oldest events
first.  Each event is held once, as compact JSON bytes beside its type, room
and tags; a socket replay hands those records out as they are (no decode).
(Until issue 21 a cachetools TTLCache per namespace did the lifetime: its
linked-list and LRU bookkeeping were half the cost of an append.)

Everything here runs on the event loop without awaiting, so each method is
atomic with respect to other coroutines; nothing touches disk or network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from ..events import Event
from ..recovery import decide
from .backend import BaseEventStore, Damaged
from .base import (
    EVICTION_REASONS,
    DuplicateEvent,
    NamespaceStats,
    ReplayResult,
    StateSnapshot,
    StoredReplay,
    StoreOptions,
    StoreStats,
)
from .codec import (
    check_append,
    checksum,
    decode_many,
    decode_one,
    encode,
    event_time,
    log_corrupt,
    new_epoch,
)
from .memory_log import Log, Record, failing_checksum
from .state import STATE_NAMESPACES, StateKind, StateTable, change_of

#: A record that failed its checks, and why.
_Suspect = tuple[Record, str]


class MemoryEventStore(BaseEventStore[_Suspect]):
    """Events in memory for one process; a new epoch on every start."""

    def __init__(
        self, options: StoreOptions | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__("the memory store", options, clock)
        self.epoch = new_epoch()
        self._logs: dict[str, Log] = {}
        #: event id -> its record while held (contract §12); dropped with the record
        self._ids: dict[str, Record] = {}
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._table = StateTable()

    # -- lifecycle (the rest is BaseEventStore's) -------------------------------

    async def _open(self) -> None:
        """Nothing to open: the store serves from start() until close()."""

    async def _release(self) -> None:
        """Drop every event (they die with the process anyway)."""
        self._logs.clear()
        self._ids.clear()
        self._table = StateTable()

    async def check(self) -> None:
        """A memory store can serve whenever it is open."""
        self._require_open()

    # -- writing ------------------------------------------------------------

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store ``event`` with the next seq of its namespace (see base.EventStore)."""
        namespace = check_append(event, ttl_seconds)
        self._require_open()
        at = event_time(event)
        event_id = str(event.get("id", ""))
        if event_id in self._ids:
            self._raise_if_held(event_id)  # a repeated id is decided before the state
        change = change_of(event)
        if change is not None:
            self._table.check(change)  # no await until it is applied: atomic
        log = self._logs.get(namespace)
        if log is None:
            retention = self._options.retention(namespace)
            log = self._logs[namespace] = Log(
                namespace, retention.max_events, retention.ttl_seconds
            )
        now = self._clock()
        self._dropped(log.expire(now), "ttl")
        seq = log.last_seq + 1
        stored = {**event, "seq": seq, "epoch": self.epoch}
        blob = encode(stored)
        record = Record(log, seq, blob, checksum(blob), ttl_seconds, event_id, stored)
        evicted = log.push(record, at, now)  # never this record: max_events >= 1
        if evicted is not None:
            self._dropped([evicted], "capacity")
        if event_id:
            self._ids[event_id] = record
        if change is not None:
            self._table.apply(change, seq)
        return stored

    def _raise_if_held(self, event_id: str) -> None:
        """Raise DuplicateEvent when the record holding ``event_id`` is still good."""
        self._expire(self._ids[event_id].log.namespace)  # an expired id must not answer
        record = self._ids.get(event_id)
        if record is None:
            return
        found = self._decode([record])
        if isinstance(found, Damaged):
            self._repair_now(found.suspects)
            return
        raise DuplicateEvent(found[0])

    # -- reading ------------------------------------------------------------
    # No read awaits anything real: each runs to its answer without yielding.

    async def _replay(
        self,
        namespace: str,
        after_seq: int | None,
        epoch: str | None,
        since_at: float | None,
        limit: int,
        *,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        self._require_open()

        async def read() -> ReplayResult | StoredReplay | Damaged[_Suspect]:
            self._expire(namespace)
            log = self._log(namespace)
            plan, recovered = decide(
                after_seq=after_seq,
                requested_epoch=epoch,
                epoch=self.epoch,
                last_seq=log.last_seq,
                limit=limit,
                count_held=log.count_held,
            )
            records, has_more = log.newest(plan.after_seq, plan.limit, since_at)
            return self._answer(records, stored, log.last_seq, recovered, has_more)

        return await self._read_repairing(read)

    async def _page(
        self,
        namespace: str,
        after_seq: int,
        since_at: float | None,
        limit: int,
        *,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        self._require_open()

        async def read() -> ReplayResult | StoredReplay | Damaged[_Suspect]:
            self._expire(namespace)
            log = self._log(namespace)
            records, has_more = log.oldest(after_seq, limit, since_at)
            last = log.last_seq
            if has_more:
                last = records[-1].seq if records else max(after_seq, 0)
            return self._answer(records, stored, last, None, has_more)

        return await self._read_repairing(read)

    def _answer(
        self,
        records: list[Record],
        stored: bool,
        last_seq: int,
        recovered: bool | None,
        has_more: bool,
    ) -> ReplayResult | StoredReplay | Damaged[_Suspect]:
        """Records as a read's answer: themselves (checksums verified, nothing decoded)
        or decoded; a damaged record makes the read decide again once it is removed."""
        if stored:
            bad = failing_checksum(records)
            if bad:
                return Damaged(bad)
            return StoredReplay(records, last_seq, self.epoch, recovered, has_more)
        events = self._decode(records)
        if isinstance(events, Damaged):
            return events
        return ReplayResult(events, last_seq, self.epoch, recovered, has_more)

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        self._require_open()
        log = self._logs.get(namespace)
        return log.last_seq if log else 0

    async def read_state(self, kind: StateKind) -> StateSnapshot:
        """The lockers or open help requests, with the position they reflect."""
        self._require_open()
        log = self._logs.get(STATE_NAMESPACES[kind])
        return StateSnapshot(self._table.listed(kind), log.last_seq if log else 0, self.epoch)

    async def _replace_state(self, table: StateTable, positions: dict[str, int]) -> bool:
        for kind, namespace in STATE_NAMESPACES.items():
            log = self._logs.get(namespace)
            if (log.last_seq if log else 0) != positions[kind]:
                return False
        self._table = table
        return True

    async def stats(self) -> StoreStats:
        """Counts per namespace, seq ranges and evictions by reason."""
        self._require_open()
        for namespace in self._logs:
            self._expire(namespace)
        namespaces = {}
        for name, log in self._logs.items():
            oldest, newest = log.seq_range()
            namespaces[name] = NamespaceStats(log.held, oldest, newest, log.last_seq)
        return StoreStats(
            backend="memory",
            epoch=self.epoch,
            events=sum(log.held for log in self._logs.values()),
            max_events=self._options.max_events,
            namespaces=namespaces,
            evictions=dict(self._evictions),
        )

    async def cleanup(self) -> int:
        """Drop expired events and verify every checksum; returns how many were removed."""
        self._require_open()
        removed = sum(self._expire(namespace) for namespace in list(self._logs))
        for log in list(self._logs.values()):
            bad = [r for r in log.held_records() if checksum(r.json) != r.crc]
            await self._repair([(record, "checksum mismatch") for record in bad])
            removed += len(bad)
        return removed

    # -- internals ----------------------------------------------------------

    def _expire(self, namespace: str) -> int:
        """Drop the namespace's expired records now; how many."""
        log = self._logs.get(namespace)
        if log is None:
            return 0
        gone = log.expire(self._clock())
        self._dropped(gone, "ttl")
        return len(gone)

    def _log(self, namespace: str) -> Log:
        return self._logs.get(namespace) or Log(namespace)

    def _dropped(self, records: list[Record], reason: str) -> None:
        """Count records the log removed (expired, evicted) and free their ids."""
        if records:
            self._evictions[reason] += len(records)
            for record in records:
                self._forget_id(record)

    def _forget_id(self, record: Record) -> None:
        if self._ids.get(record.id) is record:
            del self._ids[record.id]

    def _decode(self, records: list[Record]) -> list[Event] | Damaged[_Suspect]:
        """The records as events, or which of them fail their checks."""
        bad = failing_checksum(records)
        if bad:
            return Damaged(bad)
        events = (
            decode_many(
                [r.json for r in records], [r.seq for r in records], records[0].log.namespace
            )
            if records
            else []
        )
        if events is not None:
            return events
        one_by_one = [decode_one(r.json, r.seq, r.log.namespace) for r in records]
        bad = [
            (record, "does not deserialize")
            for record, event in zip(records, one_by_one, strict=True)
            if event is None
        ]
        if bad:
            return Damaged(bad)
        return cast("list[Event]", one_by_one)

    async def _repair(self, suspects: list[_Suspect]) -> None:
        """Remove records that failed their checks; each is counted and logged once."""
        self._repair_now(suspects)

    def _repair_now(self, suspects: list[_Suspect]) -> None:
        for record, why in suspects:
            self._forget_id(record)
            if record.log.remove(record):
                self._evictions["corrupt"] += 1
                log_corrupt(record.log.namespace, record.seq, why)
