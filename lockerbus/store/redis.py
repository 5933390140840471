"""The shared store: one Redis serves every lockerbus instance (contract §9).

Every operation is one Lua script (see :mod:`.redis_lua`), so Redis runs it
atomically: an append takes the namespace's next seq, writes the event and
PUBLISHes it on :attr:`RedisEventStore.channel` in one step.  Redis executes
scripts one at a time and delivers a channel's messages to each subscriber in
publish order, so every instance sees a namespace's events in seq order,
whichever instance appended them; that is what keeps seqs increasing per
connection across instances (the cluster relay delivers from that channel).

The epoch lives in Redis.  A Redis that lost its data (restarted without
persistence, flushed) has no epoch key: the next operation creates a new one,
the seqs start again at 1 under it, and clients naming the old epoch get
``recovered=False``.  Failures (refused connection, timeout, out of memory,
a replica that cannot write) raise :class:`StoreUnavailableError`.

The pieces: :mod:`.redis_link` (the connection and its scripts),
:mod:`.redis_writer` (the append queue), :mod:`lockerbus.redisconn` (the URL,
with its optional ``?prefix=name``).  This module ties them to the store
contract and holds the reads.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from ..recovery import decide
from ..redisconn import (
    COMMAND_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    DEFAULT_PREFIX,
    events_channel,
    split_url,
)
from .backend import BaseEventStore, Damaged
from .base import (
    EVICTION_REASONS,
    Appended,
    NamespaceStats,
    ReplayResult,
    StateSnapshot,
    StoredReplay,
    StoreOptions,
    StoreStats,
)
from .codec import (
    as_stored_replay,
    check_append,
    decode_many,
    decode_one,
    encode,
    event_time,
    log_corrupt,
    new_epoch,
)
from .redis_link import MAX_CONNECTIONS, RedisLink
from .redis_writer import RedisWriter
from .state import STATE_NAMESPACES, StateKind, StateTable, sort_entries

# Kept importable from here for callers written before lockerbus.redisconn.
__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_PREFIX",
    "MAX_CONNECTIONS",
    "RedisEventStore",
    "events_channel",
    "split_url",
]

_SCAN_BATCH: Final = 1000

Rows = list[tuple[bytes, int]]
#: How a suspect record is named: (namespace, member, seq).
Suspect = tuple[str, bytes, int]


def _record(member: bytes, seq: int) -> bytes | None:
    """A stored member as the event's JSON bytes, or None when it fails its checks."""
    head, _, rest = member.partition(b":")
    crc, _, body = rest.partition(b":")
    try:
        if int(head) != seq or int(crc, 16) != zlib.crc32(body) or body[:1] != b"{":
            return None
    except ValueError:
        return None
    return b'{"seq":' + head + b"," + body[1:]


def _prefetched(held: int, _lo: int, _hi: int) -> int:
    """count_held for recovery.decide: it only ever asks for (after_seq, last_seq], counted
    in the same script that read last_seq."""
    return held


def _rows(flat: Sequence[Any]) -> Rows:
    return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


def _decode(namespace: str, rows: Rows) -> tuple[list[Event], list[bytes]] | Damaged[Suspect]:
    """The rows as events and the JSON they were decoded from, or which fail their checks."""
    records = [_record(member, seq) for member, seq in rows]
    bad = [row for row, record in zip(rows, records, strict=True) if record is None]
    if not bad:
        blobs = [r for r in records if r is not None]
        seqs = [seq for _member, seq in rows]
        events = decode_many(blobs, seqs, namespace)
        if events is not None:
            return events, blobs
        one_by_one = [decode_one(b, s, namespace) for b, s in zip(blobs, seqs, strict=True)]
        bad = [row for row, ev in zip(rows, one_by_one, strict=True) if ev is None]
        if not bad:
            return [event for event in one_by_one if event is not None], blobs
    return Damaged([(namespace, member, seq) for member, seq in bad])


def _answer(
    decoded: tuple[list[Event], list[bytes]], stored: bool, *facts: Any
) -> ReplayResult | StoredReplay:
    """A read's answer: the events, or (``stored``) their bytes as Redis held them."""
    events, blobs = decoded
    result = ReplayResult(events, *facts)
    return as_stored_replay(result, blobs) if stored else result


def _stats(
    epoch: str, total: int, counters: Sequence[Any], flat: Sequence[Any], max_events: int
) -> StoreStats:
    """The STATS script's reply as StoreStats."""
    evictions = dict.fromkeys(EVICTION_REASONS, 0)
    for i in range(0, len(counters), 2):
        reason = counters[i].decode()
        if reason in evictions:
            evictions[reason] = int(counters[i + 1])
    namespaces = {}
    for i in range(0, len(flat), 5):
        oldest, newest = flat[i + 2], flat[i + 3]
        namespaces[flat[i].decode()] = NamespaceStats(
            int(flat[i + 1]),
            None if oldest is None else int(float(oldest)),
            None if newest is None else int(float(newest)),
            int(flat[i + 4]),
        )
    return StoreStats(
        backend="redis",
        epoch=epoch,
        events=total,
        max_events=max_events,
        namespaces=namespaces,
        evictions=evictions,
    )


def _item(
    options: StoreOptions, event: Event, ttl_seconds: float | None
) -> tuple[Event, str, float, float]:
    """``(event, namespace, at, ttl)`` for the writer; the TTL is the namespace's (§11)."""
    namespace = check_append(event, ttl_seconds)
    ttl = options.retention(namespace).ttl_seconds
    if ttl_seconds is not None:
        ttl = min(ttl, ttl_seconds)
    return event, namespace, event_time(event), ttl


async def _scan(link: RedisLink, key: str, after: int) -> Rows:
    """The next records of one log after seq ``after`` (cleanup's checksum pass)."""
    flat = await link.call(
        link.client.zrangebyscore(
            key, f"({after}", "+inf", start=0, num=_SCAN_BATCH, withscores=True
        )
    )
    return [(member, int(score)) for member, score in flat]


def _snapshot(
    kind: StateKind, entries: list[bytes], updates: list[bytes], last: int, epoch: str
) -> StateSnapshot:
    """The STATE script's flat answer as a snapshot (help updates merged over requests)."""
    changed = {updates[i]: json.loads(updates[i + 1]) for i in range(0, len(updates), 2)}
    listed = [
        {**json.loads(entries[i + 1]), **changed.get(entries[i], {})}
        for i in range(0, len(entries), 2)
    ]
    return StateSnapshot(sort_entries(kind, listed), last, epoch)


def _replace_args(table: StateTable, positions: dict[str, int], epoch: str) -> list[Any]:
    """REPLACE_STATE's arguments for a rebuilt ``table``."""
    lockers = table.entries["lockers"]
    args: list[Any] = [new_epoch(), epoch, positions["lockers"], positions["help"]]
    args.append(len(lockers))
    for key, entry in lockers.items():
        args += [key, encode(entry)]
    for key, entry in table.entries["help"].items():
        args += [key, encode(entry), str(entry.get("status", ""))]
    return args


class RedisEventStore(BaseEventStore[Suspect]):
    """Events in Redis, shared by every instance pointed at it."""

    def __init__(
        self,
        url: str,
        options: StoreOptions | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._link = link = RedisLink(url)
        super().__init__(link.name, options, clock)
        self._url, self._prefix = link.url, link.prefix
        #: The pub/sub channel every appended event is published on.
        self.channel = link.channel
        self._writer: RedisWriter | None = None

    # -- lifecycle (the rest is BaseEventStore's) -------------------------------

    async def _open(self) -> None:
        """Connect, learn (or create) the epoch, start the append queue."""
        self._link.connect()
        try:
            self._learn(await self._link.run("EPOCH", new_epoch()))
        except BaseException:
            await self._link.close()
            raise
        self._writer = RedisWriter(
            self._link, self._options, self._clock, lambda: self.epoch, self._learn
        )

    async def _opened(self) -> None:
        """A Redis store written before the state existed gets it from its history, once."""
        link = self._link
        try:
            if await link.call(link.client.exists(f"{self._prefix}:state:built")):
                return
            entries = await self.rebuild_state()
        except StoreUnavailableError as exc:
            store_logger.warning("%s: state not built from history yet: %s", link.name, exc.message)
            return
        store_logger.info("%s: state built from the history held (%d entries)", link.name, entries)

    async def _release(self) -> None:
        """Stop the append queue (failing what is still queued), close the connections."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        await self._link.close()

    async def check(self) -> None:
        """Return when Redis takes writes now; raise StoreUnavailableError saying why not."""
        self._learn(await self._run("EPOCH", new_epoch()))

    # -- writing ------------------------------------------------------------

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store and publish ``event`` with the next seq of its namespace (see base.EventStore).

        Appends go to Redis in queue order over one connection, so they are
        numbered and resolved in call order.
        """
        item = _item(self._options, event, ttl_seconds)
        self._require_open()
        if self._writer is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        return await self._writer.append(*item)

    async def append_many(
        self, events: list[Event], *, ttl_seconds: float | None = None
    ) -> list[Appended]:
        """Append ``events`` in one pipeline (see base.EventStore.append_many)."""
        self._require_open()
        if self._writer is None:
            raise StoreUnavailableError(f"{self._name} is closed")
        items: list[tuple[Event, str, float, float] | Exception] = []
        for event in events:
            try:
                items.append(_item(self._options, event, ttl_seconds))
            except ValueError as exc:
                items.append(exc)
        return await self._writer.append_many(items)

    # -- reading ------------------------------------------------------------

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

        async def read() -> ReplayResult | StoredReplay | Damaged[Suspect]:
            current, last, held = await self._run(
                "FACTS",
                new_epoch(),
                repr(self._clock()),
                namespace,
                -1 if after_seq is None else after_seq,
            )
            store_epoch = self._learn(current)
            last, held = int(last), int(held)
            plan, recovered = decide(
                after_seq=after_seq,
                requested_epoch=epoch,
                epoch=store_epoch,
                last_seq=last,
                limit=limit,
                count_held=functools.partial(_prefetched, held),
            )
            reply = await self._run(
                "NEWEST",
                new_epoch(),
                repr(self._clock()),
                namespace,
                plan.after_seq,
                last,
                plan.limit,
                "" if since_at is None else repr(since_at),
            )
            if self._learn(reply[0]) != store_epoch:
                return Damaged([])  # Redis lost its data between the two steps: decide again
            rows = _rows(reply[1:])
            has_more = len(rows) > plan.limit
            rows = rows[: plan.limit]
            rows.reverse()
            decoded = _decode(namespace, rows)
            if isinstance(decoded, Damaged):
                return decoded
            return _answer(decoded, stored, last, store_epoch, recovered, has_more)

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

        async def read() -> ReplayResult | StoredReplay | Damaged[Suspect]:
            reply = await self._run(
                "OLDEST",
                new_epoch(),
                repr(self._clock()),
                namespace,
                after_seq,
                limit,
                "" if since_at is None else repr(since_at),
            )
            store_epoch = self._learn(reply[0])
            last = int(reply[1])
            rows = _rows(reply[2:])
            has_more = len(rows) > limit
            rows = rows[:limit]
            decoded = _decode(namespace, rows)
            if isinstance(decoded, Damaged):
                return decoded
            if has_more:
                last = rows[-1][1] if rows else max(after_seq, 0)
            return _answer(decoded, stored, last, store_epoch, None, has_more)

        return await self._read_repairing(read)

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        current, last, _held = await self._run(
            "FACTS", new_epoch(), repr(self._clock()), namespace, -1
        )
        self._learn(current)
        return int(last)

    async def read_state(self, kind: StateKind) -> StateSnapshot:
        """The lockers or open help requests, with the position they reflect (one script)."""
        current, last, entries, updates = await self._run(
            "STATE", new_epoch(), kind, STATE_NAMESPACES[kind]
        )
        return _snapshot(kind, entries, updates, int(last), self._learn(current))

    async def _replace_state(self, table: StateTable, positions: dict[str, int]) -> bool:
        args = _replace_args(table, positions, self.epoch)
        return bool(await self._run("REPLACE_STATE", *args))

    async def stats(self) -> StoreStats:
        """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
        current, total, counters, flat = await self._run("STATS", new_epoch(), repr(self._clock()))
        return _stats(self._learn(current), int(total), counters, flat, self._options.max_events)

    async def cleanup(self) -> int:
        """Remove expired events, then verify every record's checksum; returns how many."""
        current, removed = await self._run("EXPIRE", new_epoch(), repr(self._clock()))
        self._learn(current)
        removed = int(removed)
        link = self._link
        for namespace in [ns.decode() for ns in await link.call(link.client.hkeys(self._seq_key))]:
            after = 0
            while rows := await _scan(link, f"{self._prefix}:log:{namespace}", after):
                removed += await self._remove(namespace, [r for r in rows if _record(*r) is None])
                after = rows[-1][1]
        return removed

    # -- internals ----------------------------------------------------------

    @property
    def _seq_key(self) -> str:
        return f"{self._prefix}:seq"

    def _learn(self, epoch: bytes | str) -> str:
        """Adopt the epoch Redis answered with (a change means Redis lost its data)."""
        self.epoch = self._link.learn(self.epoch, epoch)
        return self.epoch

    async def _run(self, script: str, *args: Any) -> Any:
        self._require_open()
        return await self._link.run(script, *args)

    async def _repair(self, suspects: list[Suspect]) -> None:
        by_namespace: dict[str, Rows] = {}
        for namespace, member, seq in suspects:
            by_namespace.setdefault(namespace, []).append((member, seq))
        for namespace, rows in by_namespace.items():
            await self._remove(namespace, rows)

    async def _remove(self, namespace: str, bad: Rows) -> int:
        if not bad:
            return 0
        args: list[Any] = [namespace]
        for member, seq in bad:
            args += [member, seq]
        removed = [int(seq) for seq in await self._run("REMOVE", *args)]
        for seq in removed:  # only the instance that removed a record logs it
            log_corrupt(namespace, seq, "checksum mismatch or does not deserialize")
        return len(removed)
