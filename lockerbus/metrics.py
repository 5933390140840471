"""What the server counts: Prometheus metrics and a cheap latency window.

Every label value comes from a fixed set (event types, namespaces, error
codes, eviction reasons, command outcomes), never from a client, so the
number of series is bounded.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .events import NAMESPACES
from .version import __version__

LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

#: events per replay: a reconnect after a blip replays a few, a cold start up to the limit
REPLAY_BUCKETS: Final = (0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
#: why a replay ran: a client connecting with last_seq/since, or joining a room
REPLAY_KINDS: Final = ("connect", "subscribe")
#: what went wrong in the cluster relay (cluster.py), a fixed set
RELAY_ERRORS: Final = (
    "pubsub",  # the subscription failed or was lost; it subscribes again by itself
    "listener_restart",  # the listener stopped or went deaf and was restarted
    "resync",  # a gap could not be filled: a namespace's local clients were cut
    "malformed",  # a channel message that is not an event
    "delivery",  # delivering a channel message failed
    "check",  # a periodic check failed (other than the store being unavailable)
)

# log-spaced bucket edges in seconds (1 µs .. ~100 s, 10% apart) for the window
_EDGES: Final = tuple(1e-6 * (1.1**i) for i in range(194))


class LatencyWindow:
    """A sliding-window histogram: percentiles without sorting samples.

    Samples fall into log-spaced buckets (≤10% relative error) kept per
    time slice; slices older than the window are dropped as time moves on.
    """

    def __init__(
        self,
        window_seconds: float = 300.0,
        slices: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slice_seconds = window_seconds / slices
        self._slices: deque[tuple[int, list[int]]] = deque()
        self._max_slices = slices
        self._clock = clock

    def observe(self, seconds: float) -> None:
        """Record one latency sample."""
        now_slice = int(self._clock() / self._slice_seconds)
        if not self._slices or self._slices[-1][0] != now_slice:
            self._slices.append((now_slice, [0] * (len(_EDGES) + 1)))
            self._expire(now_slice)
        self._slices[-1][1][bisect.bisect_left(_EDGES, seconds)] += 1

    def _expire(self, now_slice: int) -> None:
        while self._slices and self._slices[0][0] <= now_slice - self._max_slices:
            self._slices.popleft()

    def summary(self) -> dict[str, float | int | None]:
        """``{p50, p95, p99, count}`` in milliseconds over the window."""
        self._expire(int(self._clock() / self._slice_seconds))
        totals = [0] * (len(_EDGES) + 1)
        for _, counts in self._slices:
            for i, c in enumerate(counts):
                if c:
                    totals[i] += c
        count = sum(totals)
        out: dict[str, float | int | None] = {"count": count}
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            out[name] = _quantile(totals, count, q)
        return out


def _quantile(totals: list[int], count: int, q: float) -> float | None:
    if count == 0:
        return None
    rank = q * count
    seen = 0
    for i, c in enumerate(totals):
        seen += c
        if seen >= rank and c:
            upper = _EDGES[i] if i < len(_EDGES) else _EDGES[-1]
            lower = _EDGES[i - 1] if i > 0 else 0.0
            return round((lower + upper) / 2 * 1000, 4)
    return None


class Metrics:
    """The server's counters, in their own registry (one per app).

    The registry also carries the process, platform and GC collectors (a
    custom registry has none of the default ones) and ``lockerbus_build_info``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        Info("lockerbus_build", "The running lockerbus", registry=r).info({"version": __version__})
        self.connections = Gauge(
            "lockerbus_connections", "Open connections", ["namespace"], registry=r
        )
        for namespace in NAMESPACES:  # every series from the start, at 0
            self.connections.labels(namespace)
        self.published = Counter(
            "lockerbus_events_published", "Events accepted and stored", ["type"], registry=r
        )
        self.rejected = Counter(
            "lockerbus_events_rejected", "Publishes refused", ["reason"], registry=r
        )
        self.broadcast_latency = Histogram(
            "lockerbus_broadcast_latency_seconds",
            "From an event being accepted to it being handed to every recipient's transport",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_events = Gauge("lockerbus_store_events", "Events held by the store", registry=r)
        self.replayed = Counter(
            "lockerbus_events_replayed", "Events replayed to connecting clients", registry=r
        )
        self.fallbacks = Counter(
            "lockerbus_fallback_broadcasts",
            "Broadcasts sent to a whole namespace because the room was empty",
            ["namespace"],
            registry=r,
        )
        self.refused = Counter(
            "lockerbus_connections_refused", "Refused connections", ["reason"], registry=r
        )
        self.commands = Counter(
            "lockerbus_commands", "Commands by outcome", ["outcome"], registry=r
        )
        self.evictions = _SnapshotCounter(
            "lockerbus_store_evictions", "Events the store dropped, by reason", "reason"
        )
        r.register(self.evictions)
        self.slow_consumers = Counter(
            "lockerbus_slow_consumer_disconnects",
            "Connections dropped because their send queue was full",
            ["namespace"],
            registry=r,
        )
        for namespace in NAMESPACES:
            self.slow_consumers.labels(namespace)
        self.replay_sizes = Histogram(
            "lockerbus_replay_events",
            "Events sent per replay (on connect, or filling a room's gap on subscribe)",
            ["kind"],
            buckets=REPLAY_BUCKETS,
            registry=r,
        )
        for kind in REPLAY_KINDS:
            self.replay_sizes.labels(kind)
        self.relay_errors = Counter(
            "lockerbus_relay_errors", "Cluster relay failures, by kind", ["kind"], registry=r
        )
        self.relay_filled = Counter(
            "lockerbus_relay_filled_events",
            "Events the cluster relay delivered from the store because the channel missed them",
            registry=r,
        )
        self.relay_lag = Gauge(
            "lockerbus_relay_lag_seconds",
            "How long the oldest event the store holds and this instance has not delivered "
            "has waited (0: caught up; measured at each relay check)",
            registry=r,
        )
        self.latency = LatencyWindow()
        self._published: dict[str, Any] = {}

    def observe_broadcast(self, seconds: float) -> None:
        """One broadcast handed to its recipients ``seconds`` after acceptance."""
        self.broadcast_latency.observe(seconds)
        self.latency.observe(seconds)

    def replay(self, kind: str, count: int) -> None:
        """One replay of ``count`` events (``kind``: one of REPLAY_KINDS) was sent."""
        self.replayed.inc(count)
        self.replay_sizes.labels(kind).observe(count)

    def reject(self, reason: str) -> None:
        """A publish refused with wire code ``reason``."""
        self.rejected.labels(reason).inc()

    def stored(self, event_type: str) -> None:
        """One event of ``event_type`` accepted and stored."""
        child = self._published.get(event_type)
        if child is None:  # labels() is a lock and a look-up: once per type
            child = self._published[event_type] = self.published.labels(event_type)
        child.inc()


def totals(counter: Counter) -> dict[str, int]:
    """A one-label counter's totals by label value, read from Prometheus (the one source)."""
    out: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels:
                out[next(iter(sample.labels.values()))] = int(sample.value)
    return out


def total(counter: Counter) -> int:
    """An unlabelled counter's total, read from Prometheus."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return int(sample.value)
    return 0


class _SnapshotCounter(Collector):
    """A counter whose totals are owned elsewhere (the store) and copied in at scrape."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self.values: dict[str, float] = {}

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, total in sorted(self.values.items()):
            family.add_metric([value], total)
        return [family]
