"""One client's connection to one namespace, and the replay it asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ..auth import Principal
from ..errors import BadRequestError
from ..events import Event
from ..service import parse_since
from ..views import ConnectionViews


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What a connecting client asked to be replayed (contract §6)."""

    mode: str  # "seq" | "since" | "none"
    after_seq: int | None = None
    epoch: str | None = None
    since: datetime | None = None


def parse_replay_request(auth: Mapping[str, Any], window_minutes: float) -> ReplayRequest:
    """Read ``last_seq``/``epoch``, ``since`` or ``replay: false`` from the auth object."""
    replay = auth.get("replay", True)
    if not isinstance(replay, bool):
        raise BadRequestError("auth.replay must be true or false")
    has_seq, has_since = "last_seq" in auth, "since" in auth
    if not replay:
        return ReplayRequest("none")
    if has_seq and has_since:
        raise BadRequestError("give auth.last_seq or auth.since, not both")
    if has_seq:
        last_seq = auth["last_seq"]
        if type(last_seq) is not int or last_seq < 0:
            raise BadRequestError("auth.last_seq must be an integer >= 0")
        epoch = auth.get("epoch")
        if epoch is not None and (not isinstance(epoch, str) or len(epoch) > 128):
            raise BadRequestError("auth.epoch must be a string")
        return ReplayRequest("seq", after_seq=last_seq, epoch=epoch)
    if has_since:
        return ReplayRequest("since", since=parse_since(auth["since"], "auth.since"))
    since = datetime.now(UTC) - timedelta(minutes=window_minutes)
    return ReplayRequest("since", since=since)


#: what a connection holds once its connect replay is done (the request is not needed again)
REPLAYED: Final = ReplayRequest("none")


@dataclass(eq=False, slots=True)
class Connection:
    """One client's connection to one namespace.

    ``replaying`` is True from the connect handler until the catch-up goes
    live; meanwhile broadcasts for it are held in ``pending``, each only if
    the connection's views (scope and filters) let it through.  Thousands sit
    idle, so what is not always needed is made on first use or dropped after
    use (``pending``, the lock, the event, the replay request) and the rooms
    are a tuple (one or two, rarely changed).
    """

    sid: str
    eio_sid: str
    namespace: str
    principal: Principal
    #: what the connect replay is to send; REPLAYED once it ran
    replay: ReplayRequest
    #: what it may receive: its scope, auth.filter and subscribe filters (contract §10)
    views: ConnectionViews
    rooms: tuple[str, ...] = ()
    replaying: bool = True
    #: events held while replaying (None: none held)
    pending: list[Event] | None = None
    #: every event of the namespace up to here that was meant for this connection was sent
    last_seq: int = 0
    gone: bool = False
    # made on first use: a thousand idle connections should not carry them
    _closed: asyncio.Event | None = None
    _catching_up: asyncio.Lock | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is gone (a command waiting on its kiosk stops)."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.gone:
                self._closed.set()
        return self._closed

    @property
    def catching_up(self) -> asyncio.Lock:
        """Held while the connection is caught up (connect replay, subscribe gap-fill)."""
        if self._catching_up is None:
            self._catching_up = asyncio.Lock()
        return self._catching_up

    def hold(self, event: Event) -> int:
        """Hold a live event while replaying; how many are held."""
        if self.pending is None:
            self.pending = []
        self.pending.append(event)
        return len(self.pending)

    def mark_gone(self) -> None:
        """The connection left: anything waiting on :attr:`closed` stops."""
        self.gone = True
        if self._closed is not None:
            self._closed.set()
