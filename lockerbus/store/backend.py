"""What every store backend shares: the lifecycle, the cleanup loop, the repair loop.

A backend supplies only its I/O (:meth:`BaseEventStore._open`,
:meth:`~BaseEventStore._release`, :meth:`~BaseEventStore._repair` and the
reads and writes of :class:`~lockerbus.store.base.EventStore`); the state
machine and the two loops live here once, so the backends cannot drift apart.

Lifecycle: ``new`` -> ``starting`` -> ``open`` -> ``closed``.  ``start()`` on
an open store returns at once, and a ``start()`` while another runs waits for
that one's outcome.  A failed start leaves the store ``new`` (the backend
released what it had opened), so it may be started again.  ``close()`` is
idempotent; called while a start runs, it waits for it and then releases
what it opened, and that ``start()`` raises StoreUnavailableError.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Generic, Literal, Self, TypeVar, cast

from ..errors import StoreUnavailableError
from ..events import Event
from ..log import store_logger
from .base import Appended, EventStore, ReplayResult, StoredReplay, StoreOptions
from .codec import check_limit, since_seconds
from .state import StateTable, fold_history

S = TypeVar("S")
R = TypeVar("R")  # what a read answers: a ReplayResult or a StoredReplay

State = Literal["new", "starting", "open", "closed"]


@dataclass(frozen=True, slots=True)
class Damaged(Generic[S]):
    """A read met records that failed their checks: ``suspects`` names them (by the
    backend's own key).  With no suspects the read only needs to run again."""

    suspects: list[S]


class BaseEventStore(abc.ABC, Generic[S]):
    """The skeleton of a store; ``S`` is how the backend names a suspect record."""

    #: Reads that meet corrupt records have them removed and read again, at most
    #: this often: more rounds mean records that fail for the reader but pass
    #: for whatever removes them, and the caller gets StoreUnavailableError.
    repair_attempts: ClassVar[int] = 5

    def __init__(
        self, name: str, options: StoreOptions | None, clock: Callable[[], float] | None
    ) -> None:
        self._options = options = options or StoreOptions()
        for retention in (options.retention(""), *options.namespaces.values()):
            if retention.max_events < 1:
                raise ValueError("max_events must be at least 1")
            if not retention.ttl_seconds > 0:
                raise ValueError("ttl_seconds must be > 0")
        self._name = name
        self._clock = clock or time.time
        self._state: State = "new"
        self._opening: asyncio.Future[None] | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self.epoch = ""

    # -- what a backend supplies ----------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the backend and set ``epoch``; on failure release what was opened, then raise."""

    @abc.abstractmethod
    async def _release(self) -> None:
        """Release the backend (whatever of it is open); called once, by close()."""

    @abc.abstractmethod
    async def _repair(self, suspects: list[S]) -> None:
        """Remove the records a read found failing their checks (and log and count them)."""

    @abc.abstractmethod
    async def _replace_state(self, table: StateTable, positions: dict[str, int]) -> bool:
        """Make ``table`` the state if the namespaces are still at ``positions``."""

    async def rebuild_state(self) -> int:
        """Rebuild the state from the history held (an admin operation: after a
        restore, or for a store written before the state existed); returns how
        many entries it holds.  Appends may go on meanwhile: a rebuild they
        overtake is folded again."""
        for _attempt in range(self.repair_attempts):
            table, positions = await fold_history(cast("EventStore", self))
            if await self._replace_state(table, positions):
                return sum(len(entries) for entries in table.entries.values())
        raise StoreUnavailableError(f"{self._name}: appends kept overtaking the state rebuild")

    @abc.abstractmethod
    async def cleanup(self) -> int:
        """Remove expired and corrupt records now; returns how many."""

    @abc.abstractmethod
    async def append(self, event: Event, *, ttl_seconds: float | None = None) -> Event:
        """Store one event (see base.EventStore.append)."""

    async def append_many(
        self, events: list[Event], *, ttl_seconds: float | None = None
    ) -> list[Appended]:
        """One append per item, in order (see base.EventStore.append_many); a backend that
        can write them together overrides this."""
        outcomes: list[Appended] = []
        for event in events:
            try:
                outcomes.append(await self.append(event, ttl_seconds=ttl_seconds))
            except Exception as exc:  # each item fails on its own
                outcomes.append(exc)
        return outcomes

    # -- reading: the public forms, each backend reads in _replay and _page -------

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
        result = await self._replay_checked(namespace, after_seq, epoch, since, limit, False)
        assert isinstance(result, ReplayResult)
        return result

    async def replay_stored(
        self,
        namespace: str,
        *,
        after_seq: int | None = None,
        epoch: str | None = None,
        since: datetime | None = None,
        limit: int,
    ) -> StoredReplay:
        """``replay`` as stored bytes (see base.EventStore.replay_stored)."""
        result = await self._replay_checked(namespace, after_seq, epoch, since, limit, True)
        assert isinstance(result, StoredReplay)
        return result

    async def page(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> ReplayResult:
        """The oldest ``limit`` events after ``after_seq`` (see base.EventStore.page)."""
        result = await self._page_checked(namespace, after_seq, since, limit, False)
        assert isinstance(result, ReplayResult)
        return result

    async def page_stored(
        self,
        namespace: str,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        limit: int,
    ) -> StoredReplay:
        """``page`` as stored bytes (see base.EventStore.page_stored)."""
        result = await self._page_checked(namespace, after_seq, since, limit, True)
        assert isinstance(result, StoredReplay)
        return result

    async def _replay_checked(
        self,
        namespace: str,
        after_seq: int | None,
        epoch: str | None,
        since: datetime | None,
        limit: int,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        check_limit(limit)
        since_at = since_seconds(since) if since is not None and after_seq is None else None
        return await self._replay(namespace, after_seq, epoch, since_at, limit, stored=stored)

    async def _page_checked(
        self, namespace: str, after_seq: int, since: datetime | None, limit: int, stored: bool
    ) -> ReplayResult | StoredReplay:
        check_limit(limit)
        since_at = since_seconds(since) if since is not None else None
        return await self._page(namespace, after_seq, since_at, limit, stored=stored)

    @abc.abstractmethod
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
        """The read behind ``replay`` (``since_at``: POSIX seconds, only without
        ``after_seq``); with ``stored``, the stored bytes (a backend that holds only
        decoded events answers :func:`codec.as_stored_replay` of them)."""

    @abc.abstractmethod
    async def _page(
        self,
        namespace: str,
        after_seq: int,
        since_at: float | None,
        limit: int,
        *,
        stored: bool,
    ) -> ReplayResult | StoredReplay:
        """The read behind ``page``, as ``_replay``."""

    # -- lifecycle --------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the store is in its lifecycle (read anew, never narrowed across an await)."""
        return self._state

    async def start(self) -> None:
        """Open the backend and start the periodic cleanup; returns at once when open."""
        while self._opening is not None:  # another start() is under way: share its outcome
            await asyncio.shield(self._opening)
        if self._state == "open":
            return
        if self._state == "closed":
            raise StoreUnavailableError(f"{self._name} is closed")
        self._state = "starting"
        self._opening = opening = asyncio.get_running_loop().create_future()
        try:
            await self._open()
        except BaseException:
            if self._state == "starting":
                self._state = "new"
            raise
        finally:
            self._opening = None
            opening.set_result(None)
        if self.state == "closed":  # close() came meanwhile; it releases what _open opened
            raise StoreUnavailableError(f"{self._name} was closed while starting")
        self._state = "open"
        self._cleaner = asyncio.create_task(self._cleanup_forever(), name="lockerbus-cleanup")
        await self._opened()

    async def _opened(self) -> None:
        """Once open: what a backend does before serving (nothing by default)."""

    async def close(self) -> None:
        """Stop the cleanup loop and release the backend. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._opening is not None:
            await asyncio.shield(self._opening)
        cleaner, self._cleaner = self._cleaner, None
        if cleaner is not None:
            cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleaner
        await self._release()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _require_open(self) -> None:
        """Raise StoreUnavailableError unless the store serves now."""
        if self._state != "open":
            state = "closed" if self._state == "closed" else "not started"
            raise StoreUnavailableError(f"{self._name} is {state}")

    # -- the two loops ----------------------------------------------------------

    async def _cleanup_forever(self) -> None:
        """Run cleanup() every interval until closed; a failed pass is logged, not fatal."""
        interval = self._options.cleanup_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleanup()
            except StoreUnavailableError as exc:
                if self._state != "open":
                    return
                store_logger.warning("%s: cleanup failed: %s", self._name, exc.message)
            except Exception:
                store_logger.exception("%s: cleanup failed", self._name)

    async def _read_repairing(self, read: Callable[[], Awaitable[R | Damaged[S]]]) -> R:
        """Run ``read``; when it meets corrupt records, have them removed and read again,
        so the answer reflects the hole they leave."""
        suspects: list[S] = []
        for _attempt in range(self.repair_attempts):
            outcome = await read()
            if not isinstance(outcome, Damaged):
                return outcome
            suspects = outcome.suspects
            if suspects:
                await self._repair(suspects)
        raise StoreUnavailableError(
            f"{self._name}: reads keep failing their checks (last: {len(suspects)} records)"
        )
