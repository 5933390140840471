"""Kiosk presence (contract §11): who is online, and the online/offline announcements.

Each instance tells :class:`KioskTracker` when a kiosk's connection (on any
namespace) opens or closes.  The facts live in a :class:`KioskBook`: in
process memory with one instance (:class:`LocalBook`), in Redis with several
(:class:`lockerbus.presence.Presence` is one), so every instance counts every
instance's connections.

* A kiosk's first connection ever, and its first after it was announced
  offline, publishes ``system_status {component: "kiosk", status: "online",
  health_score: 100, details: {kioskId}}`` as the server.
* When its last connection anywhere closes, the instance where it closed
  waits ``grace_seconds``; if the kiosk has no connection anywhere then, it
  publishes ``status: "offline", health_score: 0``.  It stays online meanwhile.
* Each announcement is *claimed* first (:meth:`KioskBook.claim`, atomic in the
  book), so with several instances it is published once, not once per instance.
* A connection can also end with no close seen: its instance crashed, or this
  one restarted (its in-memory book then starts from the store's history, see
  :meth:`KioskTracker.recover`).  A periodic sweep announces offline a kiosk
  announced online that no instance holds and no grace wait here is watching,
  once it has stayed so for the grace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from .bus import EventBus
from .delivery import Background
from .errors import LockerbusError
from .events import EVENTS_NS, Event
from .log import server_logger
from .store import EventStore

DEFAULT_GRACE_SECONDS: Final = 30.0
ONLINE: Final = "online"
OFFLINE: Final = "offline"


def iso(at: float) -> str:
    """POSIX seconds as the contract's timestamp form."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class KioskBook(Protocol):
    """Where presence facts are kept (this process, or Redis for a cluster)."""

    async def opened(self, kiosk_id: str, sid: str, at: float) -> None:
        """Record a connection of ``kiosk_id``."""

    async def closed(self, kiosk_id: str, sid: str, at: float) -> int:
        """Forget a connection; returns the kiosk's connections left, on every instance."""

    async def count(self, kiosk_id: str) -> int:
        """The kiosk's connections on every live instance."""

    async def claim(self, kiosk_id: str, status: str) -> bool:
        """Atomically make ``status`` the kiosk's announced status; True when it was not."""

    async def note_status(self, kiosk_id: str, status: str, health_score: float) -> None:
        """Keep the kiosk's latest ``system_status``."""

    async def listing(self) -> list[dict[str, Any]]:
        """``{kioskId, connections, last_seen (POSIX s), announced, status, health_score}``
        of every kiosk ever seen."""

    async def remember(
        self,
        kiosk_id: str,
        *,
        last_seen: float,
        announced: str | None,
        status: str | None,
        health_score: float | None,
    ) -> None:
        """Record a kiosk known from the store's history, unless the book knows it."""


@dataclass(frozen=True, slots=True)
class KnownKiosk:
    """What the store's history says of a kiosk: its latest status and announcement."""

    last_seen: float
    announced: str | None = None
    status: str | None = None
    health_score: float | None = None


def known_kiosks(history: Iterable[Event]) -> dict[str, KnownKiosk]:
    """Each kiosk's latest ``system_status`` (and latest server announcement), by kiosk id,
    from events oldest first."""
    known: dict[str, KnownKiosk] = {}
    for event in history:
        kiosk_id = (event.get("tags") or {}).get("kiosk")
        if event.get("type") != "system_status" or not isinstance(kiosk_id, str):
            continue
        data = event["data"]
        before = known.get(kiosk_id)
        announcement = (
            data["component"] == "kiosk" and (event.get("source") or {}).get("role") == "server"
        )
        known[kiosk_id] = KnownKiosk(
            last_seen=datetime.fromisoformat(event["timestamp"]).timestamp(),
            announced=data["status"] if announcement else (before.announced if before else None),
            status=data["status"],
            health_score=float(data["health_score"]),
        )
    return known


@dataclass(slots=True)
class _Kiosk:
    sids: set[str] = field(default_factory=set)
    last_seen: float = 0.0
    announced: str | None = None
    status: str | None = None
    health_score: float | None = None


class LocalBook:
    """Presence facts in process memory: one instance sees every connection."""

    def __init__(self) -> None:
        self._kiosks: dict[str, _Kiosk] = {}

    def _get(self, kiosk_id: str) -> _Kiosk:
        return self._kiosks.setdefault(kiosk_id, _Kiosk())

    async def opened(self, kiosk_id: str, sid: str, at: float) -> None:
        kiosk = self._get(kiosk_id)
        kiosk.sids.add(sid)
        kiosk.last_seen = at

    async def closed(self, kiosk_id: str, sid: str, at: float) -> int:
        kiosk = self._get(kiosk_id)
        kiosk.sids.discard(sid)
        kiosk.last_seen = at
        return len(kiosk.sids)

    async def count(self, kiosk_id: str) -> int:
        kiosk = self._kiosks.get(kiosk_id)
        return len(kiosk.sids) if kiosk else 0

    async def claim(self, kiosk_id: str, status: str) -> bool:
        kiosk = self._get(kiosk_id)
        if kiosk.announced == status:
            return False
        kiosk.announced = status
        return True

    async def note_status(self, kiosk_id: str, status: str, health_score: float) -> None:
        kiosk = self._get(kiosk_id)
        kiosk.status, kiosk.health_score = status, health_score

    async def remember(
        self,
        kiosk_id: str,
        *,
        last_seen: float,
        announced: str | None,
        status: str | None,
        health_score: float | None,
    ) -> None:
        if kiosk_id not in self._kiosks:
            self._kiosks[kiosk_id] = _Kiosk(set(), last_seen, announced, status, health_score)

    async def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "kioskId": kiosk_id,
                "connections": len(k.sids),
                "last_seen": k.last_seen,
                "announced": k.announced,
                "status": k.status,
                "health_score": k.health_score,
            }
            for kiosk_id, k in self._kiosks.items()
        ]


def status_listener(book: KioskBook, tasks: Background) -> Callable[[Event], None]:
    """A bus ``on_stored`` listener keeping each kiosk's latest ``system_status``
    (the kiosk's own, or the server's announcement) in ``book``."""

    def stored(event: Event) -> None:
        if event.get("type") != "system_status":
            return
        kiosk_id = (event.get("tags") or {}).get("kiosk")
        if isinstance(kiosk_id, str):
            data = event["data"]
            tasks.spawn(_quietly(book.note_status(kiosk_id, data["status"], data["health_score"])))

    return stored


async def _quietly(work: Awaitable[Any]) -> None:
    """Run presence bookkeeping; a failure (Redis away) is logged, never raised."""
    try:
        await work
    except Exception as exc:  # PresenceError in cluster mode; redis is an optional extra
        server_logger.warning("kiosk presence: %s", exc)


class KioskTracker:
    """Turns kiosk connections into presence and announcements; answers ``/api/kiosks``."""

    def __init__(
        self,
        bus: EventBus,
        book: KioskBook,
        tasks: Background,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._book = book
        self._tasks = tasks
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        #: bumped by every connection and disconnection: a grace wait that sees it
        #: changed knows the kiosk came back meanwhile
        self._generation: dict[str, int] = {}
        self._waiting: dict[str, int] = {}  # kiosk -> grace waits running here
        self._orphaned: dict[str, float] = {}  # kiosk -> when a sweep first saw it unheld

    # -- the edges call these (no await: they spawn) --------------------------------

    def connected(self, kiosk_id: str, sid: str) -> None:
        """A connection of ``kiosk_id`` opened on this instance."""
        self._bump(kiosk_id)
        self._tasks.spawn(_quietly(self._opened(kiosk_id, sid)))

    def disconnected(self, kiosk_id: str, sid: str) -> None:
        """A connection of ``kiosk_id`` closed on this instance."""
        generation = self._bump(kiosk_id)
        self._tasks.spawn(_quietly(self._closed(kiosk_id, sid, generation)))

    async def listing(self) -> list[dict[str, Any]]:
        """The ``kiosks`` of ``GET /api/kiosks``, by kioskId."""
        now = self._clock()
        kiosks = []
        for entry in sorted(await self._book.listing(), key=lambda e: str(e["kioskId"])):
            connections = int(entry["connections"])
            kiosks.append(
                {
                    "kioskId": entry["kioskId"],
                    "online": connections > 0 or entry["announced"] == ONLINE,
                    "connections": connections,
                    "last_seen": iso(now if connections else float(entry["last_seen"])),
                    "status": entry["status"],
                    "health_score": entry["health_score"],
                }
            )
        return kiosks

    async def recover(self, store: EventStore, page_size: int = 1000) -> int:
        """Seed the book with the kiosks the store's /ws/events history knows; how many.

        A single instance's book lives in memory: after a restart it would
        forget every kiosk, and one that never comes back would stay
        announced online.  Kiosks the book already knows are left as they are.
        """
        history: list[Event] = []
        after = 0
        while True:
            page = await store.page(EVENTS_NS, after_seq=after, limit=page_size)
            history.extend(page.events)
            if not page.has_more or not page.events:
                break
            after = int(page.events[-1]["seq"])
        known = known_kiosks(history)
        for kiosk_id, kiosk in known.items():
            await self._book.remember(
                kiosk_id,
                last_seen=kiosk.last_seen,
                announced=kiosk.announced,
                status=kiosk.status,
                health_score=kiosk.health_score,
            )
        return len(known)

    async def sweep(self) -> None:
        """Announce offline each kiosk announced online that no instance holds and no
        grace wait here watches, once a sweep has seen it so for ``grace_seconds``."""
        now = self._clock()
        for entry in await self._book.listing():
            kiosk_id = str(entry["kioskId"])
            if entry["connections"] or entry["announced"] != ONLINE or self._waiting.get(kiosk_id):
                self._orphaned.pop(kiosk_id, None)
                continue
            if now - self._orphaned.setdefault(kiosk_id, now) < self.grace_seconds:
                continue
            self._orphaned.pop(kiosk_id, None)
            await self._offline_unless_held(kiosk_id)

    async def sweep_forever(self) -> None:
        """Background task: :meth:`sweep` every half grace (at most every 5 s)."""
        period = max(0.05, min(self.grace_seconds / 2, 5.0))
        while True:
            await asyncio.sleep(period)
            await _quietly(self.sweep())

    # -- internals ----------------------------------------------------------------

    def _bump(self, kiosk_id: str) -> int:
        generation = self._generation.get(kiosk_id, 0) + 1
        self._generation[kiosk_id] = generation
        return generation

    def _lock(self, kiosk_id: str) -> asyncio.Lock:
        return self._locks.setdefault(kiosk_id, asyncio.Lock())

    async def _opened(self, kiosk_id: str, sid: str) -> None:
        async with self._lock(kiosk_id):
            await self._book.opened(kiosk_id, sid, self._clock())
            if await self._book.claim(kiosk_id, ONLINE):
                await self._announce(kiosk_id, ONLINE, 100)

    async def _closed(self, kiosk_id: str, sid: str, generation: int) -> None:
        async with self._lock(kiosk_id):
            left = await self._book.closed(kiosk_id, sid, self._clock())
        if left:
            return
        self._waiting[kiosk_id] = self._waiting.get(kiosk_id, 0) + 1
        try:
            await asyncio.sleep(self.grace_seconds)
        finally:
            self._waiting[kiosk_id] -= 1
            if not self._waiting[kiosk_id]:
                del self._waiting[kiosk_id]
        if self._generation.get(kiosk_id) != generation:
            return  # it came back (or went again) here meanwhile: that one decides
        await self._offline_unless_held(kiosk_id)

    async def _offline_unless_held(self, kiosk_id: str) -> None:
        async with self._lock(kiosk_id):
            if await self._book.count(kiosk_id) == 0 and await self._book.claim(kiosk_id, OFFLINE):
                await self._announce(kiosk_id, OFFLINE, 0)

    async def _announce(self, kiosk_id: str, status: str, health_score: float) -> None:
        event = self._bus.service.create_system_status_event(
            "kiosk", status, health_score, details={"kioskId": kiosk_id}
        )
        try:
            await self._bus.emit(event)
        except LockerbusError as exc:
            server_logger.warning("could not announce kiosk %s %s: %s", kiosk_id, status, exc)
