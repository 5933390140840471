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
a replica that cannot write) raise :class:`StoreUnavailableError`; commands
are never retried by the client library, because a retried append that had
in fact run would store the event twice.

The URL is ``redis://host:port/db`` (also ``rediss://``, ``unix://``); an
optional ``?prefix=name`` query (default ``lockerbus``) separates several
deployments sharing one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from ..recovery import decide
from ..redisopts import COMMAND_TIMEOUT_SECONDS, client_options
from . import StoreOptions, redis_lua
from .base import EVICTION_REASONS, EventStore, NamespaceStats, ReplayResult, StoreStats
from .codec import (
    check_append,
    check_limit,
    decode_many,
    decode_one,
    encode,
    event_time,
    log_corrupt,
    new_epoch,
    since_seconds,
)

DEFAULT_PREFIX: Final = "lockerbus"
MAX_CONNECTIONS: Final = 16
# Appends queued while the previous batch was out go to Redis in one pipeline.
_MAX_BATCH: Final = 256
# A read that meets corrupt rows removes them and reads again, at most this often.
_REPAIR_ATTEMPTS: Final = 5
_SCAN_BATCH: Final = 1000

_SCRIPTS: Final = ("APPEND", "FACTS", "NEWEST", "OLDEST", "EXPIRE", "STATS", "REMOVE", "EPOCH")

Rows = list[tuple[bytes, int]]


@dataclass(slots=True)
class _Append:
    event: Event
    namespace: str
    at: float
    ttl: float
    epoch: str
    body: bytes
    future: asyncio.Future[Event]


def split_url(url: str) -> tuple[str, str]:
    """``url`` without lockerbus's own ``prefix`` query parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    if not prefix:
        raise ValueError("the redis store prefix must not be empty")
    return urlunsplit(parts._replace(query=rest)), prefix


def events_channel(url: str) -> str:
    """The pub/sub channel a Redis store at ``url`` publishes every appended event on."""
    return f"{split_url(url)[1]}:events"


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or parts.path}:{parts.port or ''}{parts.path if parts.port else ''}"


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


class RedisEventStore(EventStore):
    """Events in Redis, shared by every instance pointed at it."""

    def __init__(
        self,
        url: str,
        options: StoreOptions | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._options = options = options or StoreOptions()
        if options.max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._url, self._prefix = split_url(url)
        self.channel = f"{self._prefix}:events"
        self._where = f"redis store {_where(self._url)}"
        self._clock = clock or time.time
        self._redis: Redis | None = None
        self._state = "new"
        self._cleaner: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self.epoch = ""

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect, learn (or create) the epoch, start the periodic cleanup."""
        if self._state == "closed":
            raise StoreUnavailableError(f"{self._where} is closed")
        if self._state == "open":
            return
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=MAX_CONNECTIONS,
            timeout=COMMAND_TIMEOUT_SECONDS,
            **client_options(),
        )
        client = Redis.from_pool(pool)  # the client owns the pool and closes it
        self._redis = client
        self._scripts = {
            name: client.register_script(getattr(redis_lua, name))
            for name in (
                "APPEND",
                "FACTS",
                "NEWEST",
                "OLDEST",
                "EXPIRE",
                "STATS",
                "REMOVE",
                "EPOCH",
            )
        }
        try:
            self._learn(await self._run("EPOCH", new_epoch(), check_open=False))
        except BaseException:
            self._redis = None
            await client.aclose()
            raise
        self._state = "open"
        self._queue: asyncio.Queue[_Append] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_forever(), name="lockerbus-redis-writer")
        self._cleaner = asyncio.create_task(self._cleanup_forever(), name="lockerbus-cleanup")

    async def close(self) -> None:
        """Stop the cleanup and close the connections. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        cleaner, self._cleaner = self._cleaner, None
        for task in (cleaner, getattr(self, "_writer", None)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while hasattr(self, "_queue") and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(StoreUnavailableError(f"{self._where} is closed"))
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def check(self) -> None:
        """Return when Redis takes writes now; raise StoreUnavailableError saying why not."""
        self._learn(await self._run("EPOCH", new_epoch()))

    # -- writing ------------------------------------------------------------

    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store and publish ``event`` with the next seq of its namespace (see base.EventStore).

        Appends go to Redis in queue order over one connection, so they are
        numbered and resolved in call order.
        """
        namespace = check_append(event, ttl_seconds)
        at = event_time(event)
        self._check_open()
        ttl = self._options.ttl_seconds
        if ttl_seconds is not None:
            ttl = min(ttl, ttl_seconds)
        epoch = self.epoch
        body = self._body(event, epoch)  # here: a TypeError reaches the caller, no seq spent
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(event, namespace, at, ttl, epoch, body, future))
        return await future

    @staticmethod
    def _body(event: Event, epoch: str) -> bytes:
        unnumbered = {**event, "epoch": epoch}
        unnumbered.pop("seq", None)
        return encode(unnumbered)

    async def _write_forever(self) -> None:
        queue = self._queue
        while True:
            jobs = [await queue.get()]
            while len(jobs) < _MAX_BATCH and not queue.empty():
                jobs.append(queue.get_nowait())
            retry: list[_Append] = []
            try:
                for _attempt in range(3):
                    retry = await self._append_batch(jobs)
                    if not retry:
                        break
                    jobs = retry  # the epoch changed under them: encoded again, sent again
                else:
                    error = StoreUnavailableError(f"{self._where}: the epoch keeps changing")
                    for job in retry:
                        if not job.future.done():
                            job.future.set_exception(error)
            except StoreUnavailableError as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _append_batch(self, jobs: list[_Append]) -> list[_Append]:
        """Send ``jobs`` in one pipeline; settle them in order; return those to send again."""
        client = self._client()
        script = self._scripts["APPEND"]
        async with client.pipeline(transaction=False) as pipe:
            for job in jobs:
                if job.epoch != self.epoch:
                    job.epoch = self.epoch
                    job.body = self._body(job.event, job.epoch)
                now = self._clock()
                await script(
                    args=[
                        self._prefix,
                        job.namespace,
                        job.body,
                        f"{zlib.crc32(job.body):08x}",
                        repr(job.at),
                        repr(now + job.ttl),
                        repr(now),
                        self._options.max_events,
                        job.epoch,
                        new_epoch(),
                        self.channel,
                    ],
                    client=pipe,
                )
            results = await self._call(pipe.execute(raise_on_error=False))
        retry: list[_Append] = []
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue  # the caller was cancelled; the event stands (see base)
            if isinstance(result, Exception):
                job.future.set_exception(self._unavailable(result))
                continue
            seq, current = result
            self._learn(current)
            if seq:
                job.future.set_result({**job.event, "seq": int(seq), "epoch": job.epoch})
            else:
                retry.append(job)
        return retry

    # -- reading ------------------------------------------------------------

    async def replay(
        self,
        namespace: str,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """Events for a reconnecting client (see base.EventStore.replay)."""
        check_limit(limit)
        since_at = since_seconds(since) if since is not None and after_seq is None else None
        for _attempt in range(_REPAIR_ATTEMPTS):
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
                continue  # Redis lost its data between the two steps: decide again
            rows = _rows(reply[1:])
            has_more = len(rows) > plan.limit
            rows = rows[: plan.limit]
            rows.reverse()
            events = await self._decode(namespace, rows)
            if events is not None:
                return ReplayResult(events, last, store_epoch, recovered, has_more)
        raise StoreUnavailableError(f"{self._where}: reads keep failing their checks")

    async def page(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """The oldest ``limit`` events after ``after_seq`` (see base.EventStore.page)."""
        check_limit(limit)
        since_at = since_seconds(since) if since is not None else None
        for _attempt in range(_REPAIR_ATTEMPTS):
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
            events = await self._decode(namespace, rows)
            if events is None:
                continue
            if has_more:
                last = rows[-1][1] if rows else max(after_seq, 0)
            return ReplayResult(events, last, store_epoch, None, has_more)
        raise StoreUnavailableError(f"{self._where}: reads keep failing their checks")

    async def last_seq(self, namespace: str) -> int:
        """The latest seq assigned in ``namespace`` (0 when none)."""
        current, last, _held = await self._run(
            "FACTS", new_epoch(), repr(self._clock()), namespace, -1
        )
        self._learn(current)
        return int(last)

    async def stats(self) -> StoreStats:
        """Counts of unexpired events per namespace, seq ranges, evictions by reason."""
        current, total, counters, flat = await self._run("STATS", new_epoch(), repr(self._clock()))
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
            epoch=self._learn(current),
            events=int(total),
            max_events=self._options.max_events,
            namespaces=namespaces,
            evictions=evictions,
        )

    async def cleanup(self) -> int:
        """Remove expired events, then verify every record's checksum; returns how many."""
        current, removed = await self._run("EXPIRE", new_epoch(), repr(self._clock()))
        self._learn(current)
        removed = int(removed)
        client = self._client()
        for namespace in [ns.decode() for ns in await self._call(client.hkeys(self._seq_key))]:
            after = 0
            while True:
                flat = await self._call(
                    client.zrangebyscore(
                        f"{self._prefix}:log:{namespace}",
                        f"({after}",
                        "+inf",
                        start=0,
                        num=_SCAN_BATCH,
                        withscores=True,
                    )
                )
                rows = [(member, int(score)) for member, score in flat]
                if not rows:
                    break
                bad = [(m, seq) for m, seq in rows if _record(m, seq) is None]
                removed += await self._remove(namespace, bad)
                after = rows[-1][1]
        return removed

    # -- internals ----------------------------------------------------------

    @property
    def _seq_key(self) -> str:
        return f"{self._prefix}:seq"

    def _check_open(self) -> None:
        if self._state != "open":
            state = "not started" if self._state == "new" else "closed"
            raise StoreUnavailableError(f"{self._where} is {state}")

    def _client(self) -> Redis:
        self._check_open()
        assert self._redis is not None
        return self._redis

    def _learn(self, epoch: bytes | str) -> str:
        """Adopt the epoch Redis answered with; a change means Redis lost its data."""
        current = epoch.decode() if isinstance(epoch, bytes) else epoch
        if current != self.epoch:
            if self.epoch:
                store_logger.warning(
                    "%s: epoch changed %s -> %s (Redis lost its data)",
                    self._where,
                    self.epoch,
                    current,
                )
            self.epoch = current
        return current

    async def _run(self, script: str, *args: Any, check_open: bool = True) -> Any:
        if check_open:
            self._check_open()
        assert self._redis is not None
        return await self._call(self._scripts[script](args=[self._prefix, *args]))

    async def _call(self, awaitable: Any) -> Any:
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) and self._redis:
                # After a Redis restart every idle pooled connection is stale: drop them
                # all now, so one failed call (not one per connection) finds it out.
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise self._unavailable(exc) from exc
        self._problem = None
        return result

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        """The error callers see; each distinct problem is logged once."""
        message = f"{self._where}: {exc or type(exc).__name__}"
        if message != self._problem:
            store_logger.error("%s", message)
        self._problem = message
        return StoreUnavailableError(message)

    async def _decode(self, namespace: str, rows: Rows) -> list[Event] | None:
        """The rows as events, or None after removing any that failed their checks."""
        records = [_record(member, seq) for member, seq in rows]
        bad = [row for row, record in zip(rows, records, strict=True) if record is None]
        if not bad:
            blobs = [r for r in records if r is not None]
            seqs = [seq for _member, seq in rows]
            events = decode_many(blobs, seqs, namespace)
            if events is not None:
                return events
            one_by_one = [decode_one(b, s, namespace) for b, s in zip(blobs, seqs, strict=True)]
            bad = [row for row, ev in zip(rows, one_by_one, strict=True) if ev is None]
            if not bad:
                return [event for event in one_by_one if event is not None]
        await self._remove(namespace, bad)
        return None

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

    async def _cleanup_forever(self) -> None:
        interval = self._options.cleanup_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleanup()
            except StoreUnavailableError as exc:
                if self._state != "open":
                    return
                store_logger.warning("redis store cleanup failed: %s", exc.message)
            except Exception:
                store_logger.exception("redis store cleanup failed")
