"""Publish rate limits: token buckets per principal, by role (contract §2)."""

from __future__ import annotations

import asyncio

from lockerbus.limits import PrincipalLimits, TokenBucket
from tests.storekit import FakeClock
from tests.support import connect, locker_event


def test_bucket_trips_and_recovers() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back at 2/s
    assert bucket.take() is True
    assert bucket.take() is False
    clock.now += 60  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_principal_buckets_are_separate() -> None:
    clock = FakeClock()
    limits = PrincipalLimits(rate=1, burst=1, clock=clock)
    assert limits.bucket("a").take() is True
    assert limits.bucket("a").take() is False
    assert limits.bucket("b").take() is True


async def test_socket_publish_is_rate_limited_per_principal(server_factory) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=3)
    first = await connect(server, "/ws/lockers", role="kiosk", sub="kiosk-1")
    second = await connect(server, "/ws/lockers", role="kiosk", sub="kiosk-1")
    acks = [await first.call("publish", locker_event(n), "/ws/lockers") for n in range(2)]
    acks += [await second.call("publish", locker_event(n), "/ws/lockers") for n in range(2, 4)]
    # both connections of one principal draw on one bucket
    assert [a["ok"] for a in acks] == [True, True, True, False]
    assert acks[3]["error"]["code"] == "rate_limited"
    other = await connect(server, "/ws/lockers", role="kiosk", sub="kiosk-2")
    assert (await other.call("publish", locker_event(9, "kiosk-2"), "/ws/lockers"))["ok"] is True


async def test_http_publish_is_rate_limited_per_principal(server_factory, http) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=2)
    statuses = [(await server.post_event(http, locker_event(n), "panel"))[0] for n in range(3)]
    # a panel may not publish locker events, but rate_limited is answered first
    assert statuses == [403, 403, 429]
    status, _ = await server.post_event(http, locker_event(0), "kiosk", "kiosk-1")
    assert status == 201


async def test_gateway_is_not_limited_unless_configured(server_factory, http) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=2)
    gateway = await connect(server, "/ws/lockers", role="gateway")
    acks = await asyncio.gather(
        *(gateway.call("publish", locker_event(n), "/ws/lockers") for n in range(300))
    )
    assert [a for a in acks if not a["ok"]] == []
    statuses = [(await server.post_event(http, locker_event(n)))[0] for n in range(20)]
    assert set(statuses) == {201}


async def test_a_configured_role_limit_applies(server_factory, http) -> None:
    server = await server_factory(rate_limit_gateway_per_second=0.001, rate_limit_gateway_burst=2)
    statuses = [(await server.post_event(http, locker_event(n)))[0] for n in range(3)]
    assert statuses == [201, 201, 429]
    # admin stays exempt; kiosk keeps the general default (burst 100)
    statuses = [(await server.post_event(http, locker_event(n), "admin"))[0] for n in range(5)]
    assert set(statuses) == {201}
