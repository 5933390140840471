"""The cluster relay's lag, readiness and Prometheus figures, on a real memory store
with the clock in the test's hands (the Redis side is in tests/test_cluster.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from lockerbus.cluster import LAG_BOUND_SECONDS, ChannelInbox, ClusterRelay
from lockerbus.metrics import RELAY_ERRORS, Metrics
from lockerbus.store import StoreOptions, open_store
from tests.metrics_support import samples
from tests.storekit import make_event

LOCKERS = "/ws/lockers"


class Delivered:
    """The local broadcaster: what the relay handed to this instance's sockets."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def broadcast(self, event: Any, accepted_at: float) -> None:
        self.seqs.append(event["seq"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_lag_grows_while_the_store_is_ahead_and_readiness_names_it() -> None:
    clock, delivered, metrics = Clock(), Delivered(), Metrics()
    async with open_store("memory", StoreOptions()) as store:
        relay = ClusterRelay(
            delivered,
            store,
            resync=lambda ns: None,
            inbox=ChannelInbox(),
            metrics=metrics,
            clock=clock,
        )
        await relay.start()
        assert relay.lag() == 0 and relay.problem() is None
        for _ in range(2):
            await store.append(make_event(LOCKERS))
        await relay.check()  # first sight of seq 2: nothing was heard on the channel
        clock.now += LAG_BOUND_SECONDS / 2
        assert relay.lag() == LAG_BOUND_SECONDS / 2
        assert relay.problem() is None
        found = samples(generate_latest(metrics.registry).decode())
        assert found[("lockerbus_relay_lag_seconds", ())] == LAG_BOUND_SECONDS / 2
        clock.now += LAG_BOUND_SECONDS
        problem = relay.problem()
        assert problem is not None and "behind the store" in problem
        await relay.check()  # fills what waited an interval from the store
        assert delivered.seqs == [1, 2]
        assert relay.lag() == 0 and relay.problem() is None
        found = samples(generate_latest(metrics.registry).decode())
        assert found[("lockerbus_relay_filled_events_total", ())] == 2
        assert relay.stats()["filled_from_store"] == 2
        for kind in RELAY_ERRORS:
            assert found[("lockerbus_relay_errors_total", (("kind", kind),))] == 0


async def test_a_relay_whose_checks_stopped_is_not_ready() -> None:
    clock = Clock()
    async with open_store("memory", StoreOptions()) as store:
        relay = ClusterRelay(
            Delivered(), store, resync=lambda ns: None, inbox=ChannelInbox(), clock=clock
        )
        await relay.start()
        clock.now += LAG_BOUND_SECONDS + 1
        problem = relay.problem()
        assert problem is not None and "has not checked the store" in problem
        await relay.check()
        assert relay.problem() is None


async def test_malformed_channel_messages_are_counted() -> None:
    metrics = Metrics()
    async with open_store("memory", StoreOptions()) as store:
        relay = ClusterRelay(
            Delivered(), store, resync=lambda ns: None, inbox=ChannelInbox(), metrics=metrics
        )
        await relay.start()
        await relay.receive(b'{"seq": 1}')
        await relay.receive(b"not json")
    found = samples(generate_latest(metrics.registry).decode())
    assert found[("lockerbus_relay_errors_total", (("kind", "malformed"),))] == 2
