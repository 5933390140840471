"""The Redis store's connection: the client, its Lua scripts, and how failures read.

Every failure of the client library becomes one :class:`StoreUnavailableError`
naming the server, each distinct problem logged once.  Commands are never
retried by the library (see :func:`lockerbus.redisconn.connect`), because a
retried append that had in fact run would store the event twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailableError
from ..log import store_logger
from ..redisconn import channel_for, connect, split_url, where
from . import redis_lua

MAX_CONNECTIONS: Final = 16
SCRIPTS: Final = (
    "APPEND",
    "FACTS",
    "NEWEST",
    "OLDEST",
    "EXPIRE",
    "STATS",
    "REMOVE",
    "EPOCH",
    "STATE",
    "REPLACE_STATE",
)


class RedisLink:
    """One Redis server under one key prefix, as the store talks to it."""

    def __init__(self, url: str) -> None:
        self.url, self.prefix = split_url(url)
        self.channel = channel_for(self.prefix)
        self.name = f"redis store {where(self.url)}"
        self._redis: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._problem: str | None = None

    def connect(self) -> None:
        """Make the client and register the scripts (nothing is sent yet)."""
        client = connect(self.url, max_connections=MAX_CONNECTIONS, retry=False)
        self._redis = client
        self._scripts = {name: client.register_script(getattr(redis_lua, name)) for name in SCRIPTS}

    async def close(self) -> None:
        """Close the client and its pool; a failure to is not worth an error."""
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    @property
    def client(self) -> Redis:
        """The client; StoreUnavailableError once closed."""
        if self._redis is None:
            raise StoreUnavailableError(f"{self.name} is closed")
        return self._redis

    def script(self, name: str) -> AsyncScript:
        """A registered script, to call with ``args`` (and a pipeline as ``client``)."""
        return self._scripts[name]

    async def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` with the prefix and ``args`` (its ARGV)."""
        if self._redis is None:
            raise StoreUnavailableError(f"{self.name} is closed")
        return await self.call(self._scripts[script](args=[self.prefix, *args]))

    async def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await a command (replies are untyped); a library failure becomes
        StoreUnavailableError."""
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) and self._redis:
                # After a Redis restart every idle pooled connection is stale: drop them
                # all now, so one failed call (not one per connection) finds it out.
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise self.unavailable(exc) from exc
        self._problem = None
        return result

    def unavailable(self, exc: BaseException) -> StoreUnavailableError:
        """The error callers see; each distinct problem is logged once."""
        message = f"{self.name}: {exc or type(exc).__name__}"
        if message != self._problem:
            store_logger.error("%s", message)
        self._problem = message
        return StoreUnavailableError(message)

    def learn(self, known: str, answered: bytes | str) -> str:
        """The epoch Redis answered with; logs when it is not the ``known`` one (Redis
        lost its data)."""
        current = answered.decode() if isinstance(answered, bytes) else answered
        if known and current != known:
            store_logger.warning(
                "%s: epoch changed %s -> %s (Redis lost its data)", self.name, known, current
            )
        return current
