"""Token buckets: how fast one connection or principal may publish, per role."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from cachetools import TTLCache

from .errors import RateLimitedError

PRINCIPAL_BUCKETS: Final = 10_000


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def check(self) -> None:
        """Spend one token or raise :class:`RateLimitedError`."""
        if not self.take():
            raise RateLimitedError(
                f"publishing faster than {self.rate:g} events/s (burst {self.burst})"
            )


class PrincipalLimits:
    """One bucket per principal for HTTP callers; idle buckets are forgotten."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        # a bucket idle for burst/rate seconds is full again: forgetting it changes nothing
        idle = max(burst / rate, 1.0)
        self._buckets: TTLCache[str, TokenBucket] = TTLCache(PRINCIPAL_BUCKETS, idle)

    def bucket(self, sub: str) -> TokenBucket:
        """``sub``'s bucket, made full when new."""
        bucket = self._buckets.get(sub)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self._clock)
        self._buckets[sub] = bucket  # refreshes its idle timer
        return bucket


class RoleLimits:
    """Per-principal buckets with each role's own rate (contract §2).

    ``rates`` maps a role to ``(events per second, burst)``, or None for a role
    that is not limited (gateway and admin unless configured).
    """

    def __init__(
        self,
        rates: Mapping[str, tuple[float, int] | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._roles: dict[str, PrincipalLimits | None] = {
            role: None if rate is None else PrincipalLimits(rate[0], rate[1], clock)
            for role, rate in rates.items()
        }

    def bucket(self, sub: str, role: str) -> TokenBucket | None:
        """The bucket of principal ``sub`` of ``role``; None when the role is not limited."""
        limits = self._roles.get(role)
        return None if limits is None else limits.bucket(sub)
