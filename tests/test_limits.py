"""Publish rate limits: token buckets per connection and per HTTP principal."""

from __future__ import annotations

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


async def test_socket_publish_is_rate_limited_per_connection(server_factory) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=3)
    first = await connect(server, "/ws/lockers", role="gateway")
    acks = [await first.call("publish", locker_event(n), "/ws/lockers") for n in range(4)]
    assert [a["ok"] for a in acks] == [True, True, True, False]
    assert acks[3]["error"]["code"] == "rate_limited"
    other = await connect(server, "/ws/lockers", role="gateway", sub="gateway-2")
    assert (await other.call("publish", locker_event(9), "/ws/lockers"))["ok"] is True


async def test_http_publish_is_rate_limited_per_principal(server_factory, http) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=2)
    statuses = [(await server.post_event(http, locker_event(n)))[0] for n in range(3)]
    assert statuses == [201, 201, 429]
    status, _ = await server.post_event(http, locker_event(0), sub="gateway-other")
    assert status == 201
