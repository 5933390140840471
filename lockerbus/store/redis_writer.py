"""The Redis store's appends: queued, and sent in order over one pipeline per batch.

Appends queued while the previous batch was out go to Redis together, one
APPEND script call each, so they are numbered and resolved in call order.  An
append whose epoch Redis no longer has (Redis lost its data meanwhile) is
encoded again under the new epoch and sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from ..errors import StoreUnavailableError
from ..events import Event
from .base import Appended, DuplicateEvent, StoreOptions
from .codec import encode, new_epoch
from .redis_link import RedisLink
from .state import StateChange, change_of, refusal

_MAX_BATCH: Final = 256
_EPOCH_ROUNDS: Final = 3


@dataclass(slots=True)
class _Append:
    event: Event
    namespace: str
    at: float
    ttl: float
    epoch: str
    body: bytes
    future: asyncio.Future[Event]
    change: StateChange | None
    state_args: list[str | bytes]


def state_args(change: StateChange | None) -> list[str | bytes]:
    """The APPEND script's state arguments (contract §11): kind, key, record, status,
    expected status; all empty for an event that changes no state."""
    if change is None:
        return ["", "", "", "", ""]
    return [change.kind, change.key, encode(change.record), change.status, change.expected]


def body(event: Event, epoch: str) -> bytes:
    """The stored form without ``seq``: the APPEND script puts the seq in front."""
    unnumbered = {**event, "epoch": epoch}
    unnumbered.pop("seq", None)
    return encode(unnumbered)


class RedisWriter:
    """The queue of appends and the task that sends them."""

    def __init__(
        self,
        link: RedisLink,
        options: StoreOptions,
        clock: Callable[[], float],
        epoch: Callable[[], str],
        learn: Callable[[bytes | str], str],
    ) -> None:
        self._link = link
        self._options = options
        self._clock = clock
        self._epoch = epoch
        self._learn = learn
        #: groups of appends; a group (a batch publish) goes in one pipeline
        self._queue: asyncio.Queue[list[_Append]] = asyncio.Queue()
        self._task = asyncio.create_task(self._write_forever(), name="lockerbus-redis-writer")

    async def append(self, event: Event, namespace: str, at: float, ttl: float) -> Event:
        """Queue ``event`` and wait until Redis numbered and stored it."""
        job = self._job(event, namespace, at, ttl)  # a TypeError reaches the caller, no seq spent
        self._queue.put_nowait([job])
        return await job.future

    async def append_many(
        self, items: list[tuple[Event, str, float, float] | Exception]
    ) -> list[Appended]:
        """Queue the items as one group (one pipeline) and wait for each one's outcome;
        an item given as an exception is that item's outcome."""
        outcomes: list[Appended | _Append] = []
        for item in items:
            if isinstance(item, Exception):
                outcomes.append(item)
                continue
            try:
                outcomes.append(self._job(*item))
            except (TypeError, ValueError, KeyError) as exc:  # this item only
                outcomes.append(exc)
        jobs = [job for job in outcomes if isinstance(job, _Append)]
        if jobs:
            self._queue.put_nowait(jobs)
        done: list[Appended] = []
        for outcome in outcomes:
            if isinstance(outcome, _Append):
                try:
                    done.append(await outcome.future)
                except Exception as exc:
                    done.append(exc)
            else:
                done.append(outcome)
        return done

    def _job(self, event: Event, namespace: str, at: float, ttl: float) -> _Append:
        epoch = self._epoch()
        encoded = body(event, epoch)
        change = change_of(event)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        return _Append(
            event, namespace, at, ttl, epoch, encoded, future, change, state_args(change)
        )

    async def stop(self) -> None:
        """Stop sending; appends still queued fail as unavailable."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        while not self._queue.empty():
            for job in self._queue.get_nowait():
                if not job.future.done():
                    job.future.set_exception(StoreUnavailableError(f"{self._link.name} is closed"))

    async def _write_forever(self) -> None:
        queue = self._queue
        while True:
            jobs = await queue.get()
            while len(jobs) < _MAX_BATCH and not queue.empty():
                jobs += queue.get_nowait()
            retry: list[_Append] = []
            try:
                for _attempt in range(_EPOCH_ROUNDS):
                    retry = await self._append_batch(jobs)
                    if not retry:
                        break
                    jobs = retry  # the epoch changed under them: encoded again, sent again
                else:
                    error = StoreUnavailableError(f"{self._link.name}: the epoch keeps changing")
                    for job in retry:
                        if not job.future.done():
                            job.future.set_exception(error)
            except StoreUnavailableError as exc:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _append_batch(self, jobs: list[_Append]) -> list[_Append]:
        """Send ``jobs`` in one pipeline; settle them in order; return those to send again."""
        link = self._link
        script = link.script("APPEND")
        async with link.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                current = self._epoch()
                if job.epoch != current:
                    job.epoch = current
                    job.body = body(job.event, current)
                now = self._clock()
                await script(
                    args=[
                        link.prefix,
                        job.namespace,
                        job.body,
                        f"{zlib.crc32(job.body):08x}",
                        repr(job.at),
                        repr(now + job.ttl),
                        repr(now),
                        self._options.retention(job.namespace).max_events,
                        job.epoch,
                        new_epoch(),
                        link.channel,
                        str(job.event.get("id", "")),
                        int(job.ttl * 1000) + 1,
                        *job.state_args,
                    ],
                    client=pipe,
                )
            results = await link.call(pipe.execute(raise_on_error=False))
        retry: list[_Append] = []
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue  # the caller was cancelled; the event stands (see base)
            if isinstance(result, Exception):
                job.future.set_exception(link.unavailable(result))
                continue
            seq, current_epoch = result[0], result[1]
            self._learn(current_epoch)
            if seq == -1:  # the id is held (§12): decided before the state
                job.future.set_exception(_duplicate(result[2], job))
            elif seq == -2 and job.change is not None:  # the state refused it: no seq spent
                status = result[2].decode() if len(result) > 2 and result[2] else None
                job.future.set_exception(
                    refusal(job.change, status) or StoreUnavailableError("refused")
                )
            elif seq:
                job.future.set_result({**job.event, "seq": int(seq), "epoch": job.epoch})
            else:
                retry.append(job)
        return retry


def _duplicate(member: bytes, job: _Append) -> Exception:
    """The APPEND script found the id held: the stored event, from its member."""
    head, _, rest = member.partition(b":")
    crc, _, stored = rest.partition(b":")
    try:
        if int(crc, 16) == zlib.crc32(stored):
            event = orjson.loads(b'{"seq":' + head + b"," + stored[1:])
            if isinstance(event, dict):
                return DuplicateEvent(event)
    except (ValueError, orjson.JSONDecodeError):
        pass
    return StoreUnavailableError(f"the stored event {job.event.get('id')} does not decode")
