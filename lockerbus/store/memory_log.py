"""The memory store's index: one record per held event, and each namespace's log of
them in seq order (see :mod:`lockerbus.store.memory`)."""

from __future__ import annotations

import heapq
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, cast

from ..events import Event

_NO_TAGS: Final[Mapping[str, str]] = MappingProxyType({})


class Record:
    """One stored event: its JSON bytes and checksum, where it lives, and what delivery
    decides on (type, room, tags), so a replay hands the record out as it is: a
    :class:`~lockerbus.store.base.StoredEvent`."""

    __slots__ = ("crc", "id", "json", "log", "room", "seq", "tags", "ttl", "type")

    def __init__(
        self,
        log: Log,
        seq: int,
        blob: bytes,
        crc: int,
        ttl: float | None,
        event_id: str,
        event: Event,
    ) -> None:
        self.id = event_id
        self.log = log
        self.seq = seq
        #: the stored envelope (StoredEvent.json)
        self.json = blob
        self.crc = crc
        self.ttl = ttl
        kind, room = event.get("type"), event.get("room")
        self.type: str = kind if isinstance(kind, str) else ""
        self.room: str = room if isinstance(room, str) else ""
        tags = event.get("tags")
        self.tags: Mapping[str, str] = dict(tags) if isinstance(tags, Mapping) else _NO_TAGS

    @property
    def blob(self) -> bytes:
        """The stored bytes (``json``), under the name the other backends use."""
        return self.json

    @blob.setter
    def blob(self, value: bytes) -> None:
        self.json = value


class Log:
    """One namespace's held records in seq order, found by position, and their lifetime.

    ``records[i]`` is seq ``base + i``, or None once that event is gone; every
    position below ``head`` is gone.  Seqs are assigned without holes, so a
    seq's position is arithmetic, and a hole in a range shows as a None.
    ``time_max[i]`` is the largest timestamp up to ``i``: timestamps are set
    before append and can be slightly out of seq order, and a running maximum
    is what ``bisect`` needs to find where ``since`` starts.

    Lifetime: every record expires ``ttl`` seconds (store clock) after its
    append, so expiry, like capacity eviction, takes records from the head, in
    append order (``expires[i]``, non-decreasing while the clock is); a record
    given a shorter TTL of its own is also in the ``short`` heap.  Checking the
    head is one comparison, which is what keeps an append cheap.
    """

    __slots__ = (
        "base",
        "expires",
        "head",
        "held",
        "last_seq",
        "max_events",
        "namespace",
        "records",
        "short",
        "time_max",
        "times",
        "ttl",
    )

    _COMPACT_AT = 1024

    def __init__(self, namespace: str, max_events: int = 1, ttl: float = 1.0) -> None:
        self.namespace = namespace
        self.max_events = max_events
        self.ttl = ttl
        self.base = 1
        self.head = 0
        self.held = 0
        self.last_seq = 0
        self.records: list[Record | None] = []
        self.times = array("d")
        self.time_max = array("d")
        self.expires = array("d")
        self.short: list[tuple[float, int, Record]] = []

    def push(self, record: Record, at: float, now: float) -> Record | None:
        """Add ``record`` (appended at store time ``now``); returns the oldest record
        when that made the log exceed ``max_events`` (it is removed: capacity)."""
        self.records.append(record)
        self.times.append(at)
        self.time_max.append(
            at if not self.time_max or at > self.time_max[-1] else self.time_max[-1]
        )
        self.expires.append(now + self.ttl)
        if record.ttl is not None and record.ttl < self.ttl:
            heapq.heappush(self.short, (now + record.ttl, record.seq, record))
        self.held += 1
        self.last_seq = record.seq
        if self.held > self.max_events:
            oldest = self.records[self.head]
            assert oldest is not None  # head is a held record while any is held
            self.remove(oldest)
            return oldest
        return None

    def expire(self, now: float) -> list[Record]:
        """Remove and return the records whose time is up at ``now``."""
        gone: list[Record] = []
        records, expires = self.records, self.expires
        while self.head < len(records) and not now < expires[self.head]:
            record = records[self.head]
            assert record is not None
            self.remove(record)
            gone.append(record)
        short = self.short
        while short and not now < short[0][0]:
            record = heapq.heappop(short)[2]
            if self.remove(record):
                gone.append(record)
        return gone

    def remove(self, record: Record) -> bool:
        pos = record.seq - self.base
        records = self.records
        if pos < self.head or pos >= len(records) or records[pos] is not record:
            return False
        records[pos] = None
        self.held -= 1
        if pos == self.head:
            head = pos
            while head < len(records) and records[head] is None:
                head += 1
            self.head = head
            # Dropping the front of a list is a memmove; do it rarely, in bulk.
            if head >= self._COMPACT_AT and head * 2 >= len(records):
                del records[:head], self.times[:head], self.time_max[:head], self.expires[:head]
                self.base += head
                self.head = 0
        return True

    def start(self, after_seq: int, since: float | None) -> int:
        """The first position that can hold a seq above ``after_seq`` at or after ``since``."""
        start = max(self.head, after_seq + 1 - self.base)
        if since is not None:
            start = max(start, bisect_left(self.time_max, since, start))
        return start

    def count_held(self, lo: int, hi: int) -> int:
        """How many records with ``lo < seq <= hi`` are held."""
        start = self.start(lo, None)
        end = min(len(self.records), hi + 1 - self.base)
        if start >= end:
            return 0
        chunk = self.records[start:end]
        return len(chunk) - chunk.count(None)

    def newest(self, after_seq: int, limit: int, since: float | None) -> tuple[list[Record], bool]:
        """The newest ``limit`` held records above ``after_seq`` (oldest first), and whether
        more matched."""
        records = self.records
        start = self.start(after_seq, since)
        if since is None:
            lo = max(start, len(records) - limit)
            chosen = records[lo:]
            if None not in chosen:  # the usual case: no holes, one slice
                older = records[start:lo]
                return cast("list[Record]", chosen), older.count(None) < len(older)
        times = self.times
        picked: list[Record] = []
        for pos in range(len(records) - 1, start - 1, -1):
            record = records[pos]
            if record is not None and (since is None or times[pos] >= since):
                if len(picked) == limit:
                    picked.reverse()
                    return picked, True
                picked.append(record)
        picked.reverse()
        return picked, False

    def oldest(self, after_seq: int, limit: int, since: float | None) -> tuple[list[Record], bool]:
        """The oldest ``limit`` held records above ``after_seq`` at or after ``since``, and
        whether more matched."""
        records = self.records
        times = self.times
        picked: list[Record] = []
        for pos in range(self.start(after_seq, since), len(records)):
            record = records[pos]
            if record is not None and (since is None or times[pos] >= since):
                if len(picked) == limit:
                    return picked, True
                picked.append(record)
        return picked, False

    def seq_range(self) -> tuple[int | None, int | None]:
        """The oldest and newest held seqs."""
        records = self.records
        oldest = records[self.head] if self.head < len(records) else None
        newest = next((r for r in reversed(records) if r is not None), None)
        return (oldest.seq if oldest else None), (newest.seq if newest else None)

    def held_records(self) -> list[Record]:
        return [r for r in self.records[self.head :] if r is not None]


def failing_checksum(records: list[Record]) -> list[tuple[Record, str]]:
    """The records whose bytes no longer match their checksum."""
    crc32 = zlib.crc32  # the same function as codec.checksum, without a call layer
    return [(r, "checksum mismatch") for r in records if crc32(r.json) != r.crc]
