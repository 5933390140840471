"""The figures of ``GET /api/stats``, read from the metrics, the hub and the store.

Counters come from the Prometheus metrics only (:func:`lockerbus.metrics.totals`),
so ``/api/stats`` and ``/metrics`` cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .commands import OUTCOMES
from .delivery import Hub
from .errors import StoreUnavailableError
from .events import NAMESPACES
from .metrics import Metrics, totals
from .store import EventStore

if TYPE_CHECKING:  # cluster mode only: presence needs redis, an optional extra
    from .cluster import ClusterRelay
    from .presence import Presence

#: which figures are this instance's own and which the whole cluster's
CLUSTER_SCOPE = {
    "connections": "instance",
    "broadcast_latency_ms": "instance",
    "fallback_broadcasts": "instance",
    "errors": "instance",
    "store": "cluster",
    "cluster": "cluster",
}


class Stats:
    """Builds the ``/api/stats`` body."""

    def __init__(
        self,
        hub: Hub,
        store: EventStore,
        metrics: Metrics,
        *,
        relay: ClusterRelay | None = None,
        presence: Presence | None = None,
    ) -> None:
        self._hub = hub
        self._store = store
        self._metrics = metrics
        self._relay = relay
        self._presence = presence

    async def __call__(self) -> dict[str, Any]:
        try:
            store: dict[str, Any] = dataclasses.asdict(await self._store.stats())
        except StoreUnavailableError as exc:
            store = {"error": exc.message}
        connections = self._hub.counts()
        metrics = self._metrics
        fallbacks, outcomes = totals(metrics.fallbacks), totals(metrics.commands)
        stats: dict[str, Any] = {
            "connections": connections,
            "broadcast_latency_ms": metrics.latency.summary(),
            "fallback_broadcasts": {ns: fallbacks.get(ns, 0) for ns in NAMESPACES},
            "store": store,
            "errors": totals(metrics.rejected),
            "commands": {outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        }
        if self._presence is not None and self._relay is not None:
            stats["instance"] = self._presence.instance_id
            stats["scope"] = dict(CLUSTER_SCOPE)
            cluster: dict[str, Any] = {"relay": self._relay.stats()}
            try:
                instances = await self._presence.instances()
                cluster["instances"] = instances
                cluster["connections"] = {
                    ns: sum(i.get("connections", {}).get(ns, 0) for i in instances.values())
                    for ns in connections
                }
            except Exception as exc:  # Redis down: the per-instance figures still stand
                cluster["error"] = str(exc)
            stats["cluster"] = cluster
        return stats
