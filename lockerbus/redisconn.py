"""Talking to Redis: URL parsing, the events channel's name, and one way to connect.

Shared by the Redis store and presence (and whatever else reaches the same
Redis), so a URL means the same prefix and the same timeouts everywhere.

The URL is ``redis://host:port/db`` (also ``rediss://``, ``unix://``); an
optional ``?prefix=name`` query (default ``lockerbus``) separates several
deployments sharing one Redis.  The ``redis`` package is an optional extra:
it is imported only by :func:`connect`, so parsing a URL needs no driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_PREFIX: Final = "lockerbus"
CONNECT_TIMEOUT_SECONDS: Final = 2.0
COMMAND_TIMEOUT_SECONDS: Final = 5.0


def split_url(url: str) -> tuple[str, str]:
    """``url`` without lockerbus's own ``prefix`` query parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    if not prefix:
        raise ValueError("the redis store prefix must not be empty")
    return urlunsplit(parts._replace(query=rest)), prefix


def channel_for(prefix: str) -> str:
    """The pub/sub channel every event appended under ``prefix`` is published on."""
    return f"{prefix}:events"


def events_channel(url: str) -> str:
    """The pub/sub channel a Redis store at ``url`` publishes every appended event on."""
    return channel_for(split_url(url)[1])


def where(url: str) -> str:
    """``host:port/db`` (or the socket path) of ``url``, for messages; never credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or parts.path}:{parts.port or ''}{parts.path if parts.port else ''}"


def connect(url: str, *, max_connections: int | None = None, retry: bool = True) -> Redis:
    """A client for ``url`` (without ``prefix``: see :func:`split_url`), not yet connected.

    With ``max_connections`` the pool is bounded and a command waits up to the
    command timeout for a free connection.  ``retry=False`` turns off the
    library's own retries: a store's append that in fact ran must not run twice.
    """
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio import Redis as Client
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": COMMAND_TIMEOUT_SECONDS,
    }
    if not retry:
        options["retry"] = Retry(NoBackoff(), 0)
    if max_connections is None:
        return Client.from_url(url, **options)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=COMMAND_TIMEOUT_SECONDS, **options
    )
    return Client.from_pool(pool)  # the client owns the pool and closes it
