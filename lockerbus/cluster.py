"""Several instances, one stream: deliver the shared store's events to this
instance's sockets once each, in seq order (contract §9).

The Redis store publishes every event in the same atomic step that numbers
it, so the channel carries each namespace's events in seq order.  Every
instance, the publishing one included, delivers from that channel and never
straight from its own publish: two instances publishing at once cannot then
deliver 42 before 41 anywhere.

Pub/sub is at-most-once: a subscription that drops (Redis restarting, the
connection killed, a listener that silently stopped) loses what was published
meanwhile.  So this relay keeps, per namespace, the last seq it delivered:

* an event at or below it is a duplicate and is dropped;
* an event beyond the next one means a gap: the missing events are read from
  the store and delivered first;
* a periodic check compares the store's last seq with it, and fills what has
  waited longer than one interval (a quiet system still catches up), and a
  ping through the channel proves the listener hears; a deaf or dead listener
  is restarted;
* when a gap cannot be filled (the events expired, the store is down) or the
  epoch changed (Redis lost its data), the namespace's local connections are
  closed, so their clients reconnect and replay with an honest ``recovered``.

:class:`ClusterRedisManager` (python-socketio's Redis manager) drops what it
hears of the store's events into a :class:`ChannelInbox`; the relay reads the
inbox.  Neither needs the other to be built, so app.py passes each its
collaborators through the constructor.

A store that does not publish its events itself (PostgreSQL) gets a
:class:`ChannelPublisher`: each instance publishes its own appends on the
channel after they committed.  Two instances' publishes may then cross, 42
before 41; the relay treats that as a gap and reads 41 from the store (it was
committed before 42 was numbered: the store numbers under the namespace's
lock), then drops 41 when it arrives.  A publish lost with its instance (a
crash between commit and publish) is found by the periodic check.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from .delivery import Broadcaster
from .errors import StoreUnavailableError
from .events import NAMESPACES, Event
from .log import server_logger
from .metrics import RELAY_ERRORS, Metrics, total, totals
from .redisconn import client_options
from .sio_adapter import HookedRedisManager
from .store import EventStore

CHECK_INTERVAL_SECONDS: Final = 1.0
_MAX_ACCEPTED: Final = 10_000
EVENT_PREFIX: Final = b'{"seq":'
INBOX_SIZE: Final = 10_000
#: /readyz answers 503 once the oldest undelivered event has waited this long
LAG_BOUND_SECONDS: Final = 10.0


class ChannelInbox:
    """The store's events as the listener heard them, in order, and the last ping heard."""

    def __init__(self, maxsize: int = INBOX_SIZE) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        #: the highest ping token this instance's listener heard
        self.heard = 0

    async def put(self, raw: bytes) -> None:
        """Hand one event message on; waits while the relay is a full inbox behind."""
        await self._queue.put(raw)

    async def get(self) -> bytes:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()

    def pong(self, token: int) -> None:
        """The listener heard this instance's ping ``token``."""
        self.heard = max(self.heard, token)


class ChannelPublisher:
    """Publishes this instance's appended events on the shared channel, in the order
    appended, for a store that does not (see the module docstring)."""

    def __init__(self, url: str, channel: str, maxsize: int = INBOX_SIZE) -> None:
        from .redisconn import connect, split_url

        self._redis = connect(split_url(url)[0], retry=False)
        self._channel = channel
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: Event) -> None:
        """Queue ``event`` (no await: the bus broadcasts synchronously); a full queue
        drops it, for the periodic check to fill from the store."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Background task: publish what was queued, oldest first."""
        while True:
            event = await self._queue.get()
            # seq first: the listener tells events from python-socketio's own messages by it
            raw = orjson.dumps({"seq": event["seq"], **event})
            try:
                await self._redis.publish(self._channel, raw)
            except Exception as exc:  # the relays fill from the store
                self.dropped += 1
                server_logger.warning("cluster: publishing an event failed: %s", exc)

    async def close(self) -> None:
        await self._redis.aclose()


class Listener(Protocol):
    """The pub/sub listener filling the inbox (the Socket.IO manager)."""

    def alive(self) -> bool: ...

    async def ping(self, token: int) -> None: ...

    def restart(self) -> None: ...

    def problem(self) -> str | None: ...


class _Waiting:
    """Store positions the relay's checks saw and this instance has not delivered yet,
    with when each was first seen: how far behind the relay is, in seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: dict[str, deque[tuple[float, int]]] = {}

    def note(self, ns: str, last: int, delivered: int) -> None:
        """The store holds up to ``last`` in ``ns`` now; this instance delivered up to
        ``delivered``."""
        seen = self._seen.setdefault(ns, deque())
        if last > delivered and (not seen or seen[-1][1] < last):
            seen.append((self._clock(), last))

    def forget(self, ns: str) -> None:
        self._seen.pop(ns, None)

    def lag(self, delivered: dict[str, int]) -> float:
        oldest = None
        for ns, seen in self._seen.items():
            while seen and seen[0][1] <= delivered.get(ns, -1):
                seen.popleft()
            if seen and (oldest is None or seen[0][0] < oldest):
                oldest = seen[0][0]
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)


@dataclass(slots=True)
class _Cursor:
    epoch: str
    seq: int


class ClusterRelay:
    """Turns the store's event channel into in-order, once-only local broadcasts."""

    def __init__(
        self,
        local: Broadcaster,
        store: EventStore,
        *,
        resync: Callable[[str], None],
        inbox: ChannelInbox,
        listener: Listener | None = None,
        publisher: ChannelPublisher | None = None,
        metrics: Metrics | None = None,
        interval_seconds: float = CHECK_INTERVAL_SECONDS,
        lag_bound_seconds: float = LAG_BOUND_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._local = local
        self._store = store
        self._resync = resync
        self._inbox = inbox
        self.listener = listener
        self.publisher = publisher
        self._interval = interval_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cursors: dict[str, _Cursor] = {}
        self._seen_last: dict[str, tuple[str, int]] = {}
        self._accepted: OrderedDict[str, float] = OrderedDict()
        self._ping_sent = 0
        # per namespace: (when, store's last seq) seen by a check and not yet delivered
        self._waiting = _Waiting(clock)
        self._lag_bound = lag_bound_seconds
        self._checked: float | None = None  # when the last check went through the store
        self.metrics = metrics = metrics or Metrics()
        for kind in RELAY_ERRORS:  # every series from the start, at 0
            metrics.relay_errors.labels(kind)
        metrics.relay_lag.set_function(self.lag)

    def _error(self, kind: str) -> None:
        self.metrics.relay_errors.labels(kind).inc()

    @property
    def filled(self) -> int:
        """Events delivered from the store because the channel missed them."""
        return total(self.metrics.relay_filled)

    @property
    def restarts(self) -> int:
        return totals(self.metrics.relay_errors).get("listener_restart", 0)

    @property
    def resyncs(self) -> int:
        return totals(self.metrics.relay_errors).get("resync", 0)

    # -- the bus side: this instance published an event ----------------------

    def broadcast(self, event: Event, accepted_at: float) -> None:
        """Remember when a local publish was accepted; delivery comes from the channel."""
        accepted = self._accepted
        accepted[event["id"]] = accepted_at
        if len(accepted) > _MAX_ACCEPTED:
            accepted.popitem(last=False)
        if self.publisher is not None:
            self.publisher.put(event)

    # -- the channel side ------------------------------------------------------

    async def consume(self) -> None:
        """Background task: deliver what the listener put in the inbox, in order."""
        while True:
            raw = await self._inbox.get()
            try:
                await self.receive(raw)
            except Exception:  # one bad message must not stop delivery for good
                self._error("delivery")
                server_logger.exception("cluster: delivering a channel message failed")

    async def receive(self, raw: bytes) -> None:
        """One event from the channel (bytes as the store published them)."""
        try:
            event = orjson.loads(raw)
            if not all(key in event for key in ("seq", "namespace", "epoch", "id")):
                raise KeyError("seq")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._error("malformed")
            server_logger.warning("cluster: dropped a malformed event message")
            return
        async with self._lock:
            await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        ns, seq, epoch = event["namespace"], event["seq"], event["epoch"]
        cursor = self._cursors.get(ns)
        if cursor is not None and cursor.epoch != epoch:
            server_logger.warning("cluster: %s moved to epoch %s: resyncing clients", ns, epoch)
            self._resync_ns(ns)
            cursor = None
        if cursor is not None:
            if seq <= cursor.seq:
                return
            if seq > cursor.seq + 1 and not await self._fill(ns, cursor, seq - 1):
                return
        self._send(event)

    def _send(self, event: Event) -> None:
        now = self._clock()
        accepted_at = self._accepted.pop(event["id"], now)
        self._cursors[event["namespace"]] = _Cursor(event["epoch"], event["seq"])
        self._local.broadcast(event, accepted_at)

    async def _fill(self, ns: str, cursor: _Cursor, upto: int) -> bool:
        """Deliver seqs cursor+1..upto from the store; False (after a resync) if impossible."""
        want = upto - cursor.seq
        try:
            page = await self._store.page(ns, after_seq=cursor.seq, limit=want)
        except StoreUnavailableError as exc:
            server_logger.warning("cluster: cannot fill a gap in %s: %s", ns, exc.message)
            page = None
        events = [] if page is None else [e for e in page.events if e["seq"] <= upto]
        complete = (
            page is not None
            and page.epoch == cursor.epoch
            and [e["seq"] for e in events] == list(range(cursor.seq + 1, upto + 1))
        )
        if not complete:
            self._resync_ns(ns)
            return page is not None and page.epoch != cursor.epoch
        self.metrics.relay_filled.inc(len(events))
        for event in events:
            self._send(event)
        return True

    def _resync_ns(self, ns: str) -> None:
        self._error("resync")
        self._cursors.pop(ns, None)
        self._waiting.forget(ns)
        self._resync(ns)

    # -- the periodic check ----------------------------------------------------

    async def start(self) -> None:
        """Take each namespace's position before any local client can connect: from
        here on, every event not heard on the channel is noticed as a gap."""
        for ns in NAMESPACES:
            last = await self._store.last_seq(ns)
            self._cursors[ns] = _Cursor(self._store.epoch, last)
        self._checked = self._clock()

    async def run(self) -> None:
        """Background task: catch up with the store and keep the listener honest."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except StoreUnavailableError:
                pass  # readiness reports it; the next round tries again
            except Exception:
                self._error("check")
                server_logger.exception("cluster check failed")

    async def check(self) -> None:
        """One round of the periodic check (public for tests).

        Store first: while Redis is down this raises and nothing is restarted,
        since no listener could hear anything then.
        """
        behind = False
        for ns in NAMESPACES:
            last = await self._store.last_seq(ns)
            epoch = self._store.epoch
            before, self._seen_last[ns] = self._seen_last.get(ns), (epoch, last)
            if before is None or before[0] != epoch:
                self._note_waiting(ns, epoch, last)
                continue
            async with self._lock:
                cursor = self._cursors.get(ns)
                if cursor is None:
                    # Whatever was published an interval ago has been heard or is lost.
                    self._cursors[ns] = _Cursor(epoch, before[1])
                elif cursor.epoch == epoch and cursor.seq < before[1]:
                    behind = True
                    await self._fill(ns, cursor, before[1])
                self._note_waiting(ns, epoch, last)
        self._checked = self._clock()
        listener = self.listener
        if listener is None:
            return
        if behind:
            server_logger.error("cluster: events reached this instance only from the store")
        if listener.alive() and listener.problem() is not None:
            # It knows it is cut off and is subscribing again on its own: no ping
            # (none could be heard), no restart (it would only start that over).
            self._inbox.pong(self._ping_sent)
            return
        if not listener.alive():
            server_logger.error("cluster: the pub/sub listener stopped")
        elif self._inbox.heard < self._ping_sent:
            server_logger.error("cluster: the pub/sub listener did not hear its ping")
        elif not behind:
            self._ping_sent += 1
            await listener.ping(self._ping_sent)
            return
        server_logger.error("cluster: restarting the pub/sub listener")
        self._error("listener_restart")
        listener.restart()
        # No ping this round: the new listener may not have subscribed yet.
        self._inbox.pong(self._ping_sent)

    def _note_waiting(self, ns: str, epoch: str, last: int) -> None:
        cursor = self._cursors.get(ns)
        if cursor is None or cursor.epoch != epoch:
            self._waiting.forget(ns)  # a resync is under way: nothing to wait for
        else:
            self._waiting.note(ns, last, cursor.seq)

    def lag(self) -> float:
        """Seconds the oldest event a check saw in the store has waited undelivered here."""
        return self._waiting.lag({ns: cursor.seq for ns, cursor in self._cursors.items()})

    def problem(self) -> str | None:
        """Why live delivery is not working now (for /readyz), or None."""
        heard = None if self.listener is None else self.listener.problem()
        if heard is not None:
            return heard
        lag = self.lag()
        if lag > self._lag_bound:
            return f"cluster relay {lag:.0f} s behind the store (bound {self._lag_bound:g} s)"
        if self._checked is not None and self._clock() - self._checked > self._lag_bound:
            quiet = self._clock() - self._checked
            return f"cluster relay has not checked the store for {quiet:.0f} s"
        return None

    def stats(self) -> dict[str, Any]:
        """Figures for /api/stats."""
        return {
            "filled_from_store": self.filled,
            "listener_restarts": self.restarts,
            "resyncs": self.resyncs,
            "lag_seconds": round(self.lag(), 3),
            "inbox": self._inbox.qsize(),
        }


class ClusterRedisManager(HookedRedisManager):
    """python-socketio's Redis manager, whose channel also carries the store's events.

    The Redis store publishes each appended event on this channel; they are
    taken out of the stream here and put in the inbox in the order received,
    and everything else (cross-host acks, disconnects) goes on to
    python-socketio.
    """

    PING: Final = "lockerbus_ping"

    def __init__(
        self, url: str, *, channel: str, inbox: ChannelInbox, metrics: Metrics | None = None
    ) -> None:
        super().__init__(url, channel=channel, redis_options=client_options())
        self._inbox = inbox
        self._metrics = metrics or Metrics()

    def subscription_lost(self, failure: str) -> None:
        self._metrics.relay_errors.labels("pubsub").inc()

    async def intercept(self, message: Any) -> bool:
        if isinstance(message, bytes) and message.startswith(EVENT_PREFIX):
            await self._inbox.put(message)
            return True
        if isinstance(message, bytes) and self.PING.encode() in message[:40]:
            data = self.json.loads(message)
            if data.get("host_id") == self.host_id:
                self._inbox.pong(int(data.get("token", 0)))
            return True
        return False

    async def ping(self, token: int) -> None:
        """Publish a ping this instance's own listener should hear."""
        await self.publish({"method": self.PING, "host_id": self.host_id, "token": token})
