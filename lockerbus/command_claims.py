"""Command idempotency across instances (contract §13), kept in the shared Redis.

``P:command:<sub>:<key>`` holds ``running:<token>`` while one instance runs a
command, expiring after the command's timeout and a margin (a crashed instance
does not block the key for long), then the stored ``command_applied`` event for
five minutes: a retry with the same key by the same principal, on any instance,
gets that event instead of running the command again; a retry while it runs
waits for it.  One ``SET NX GET`` decides who runs it, so two instances asked
at once cannot both win.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, Final

import orjson
from redis.exceptions import RedisError

from .commands import IDEMPOTENCY_SECONDS, Claim
from .errors import StoreUnavailableError
from .events import Event
from .log import command_logger
from .redisconn import connect, split_url, where

RUNNING: Final = b"running:"
# Delete the claim only while it is still this instance's (its hold may have expired).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisCommandClaims:
    """The :class:`~lockerbus.commands.CommandClaims` of a cluster."""

    def __init__(self, url: str) -> None:
        plain_url, self._prefix = split_url(url)
        self._name = f"command claims {where(plain_url)}"
        self._redis = connect(plain_url, retry=False)  # one attempt: a claim must not run twice
        self._release = self._redis.register_script(_RELEASE)

    def _key(self, owner: str, key: str) -> str:
        return f"{self._prefix}:command:{owner}:{key}"

    async def claim(self, owner: str, key: str, hold_seconds: float) -> Claim:
        token = RUNNING + uuid.uuid4().hex.encode()
        try:
            before: Any = await self._redis.set(
                self._key(owner, key), token, nx=True, px=int(hold_seconds * 1000), get=True
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        if before is None:
            return Claim(token=token.decode())
        if before.startswith(RUNNING):
            return Claim()
        event: Event = orjson.loads(before)
        return Claim(event=event)

    async def finish(self, owner: str, key: str, event: Event) -> None:
        try:
            await self._redis.set(
                self._key(owner, key), orjson.dumps(event), ex=int(IDEMPOTENCY_SECONDS)
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def release(self, owner: str, key: str, token: str) -> None:
        try:
            await self._release(keys=[self._key(owner, key)], args=[token])
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        command_logger.warning("%s: %s", self._name, exc)
        return StoreUnavailableError(f"{self._name}: {exc or type(exc).__name__}")
