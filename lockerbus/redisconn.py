"""Talking to Redis: URL parsing, the events channel's name, and one way to connect.

Shared by the Redis store, presence and the cluster's pub/sub (whatever
reaches the same Redis), so a URL means the same prefix and the same timeouts
everywhere, and every client notices a partition within seconds
(:func:`client_options`).

The URL is ``redis://host:port/db`` (also ``rediss://``, ``unix://``); an
optional ``?prefix=name`` query (default ``lockerbus``) separates several
deployments sharing one Redis.  The ``redis`` package is an optional extra:
it is imported only by :func:`connect`, so parsing a URL needs no driver.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_PREFIX: Final = "lockerbus"
CONNECT_TIMEOUT_SECONDS: Final = 2.0
COMMAND_TIMEOUT_SECONDS: Final = 5.0
HEALTH_CHECK_SECONDS: Final = 5
# Unacknowledged data older than this kills the connection (ETIMEDOUT).
USER_TIMEOUT_MS: Final = 6000
KEEPALIVE_IDLE_SECONDS: Final = 5
KEEPALIVE_INTERVAL_SECONDS: Final = 1
KEEPALIVE_PROBES: Final = 3


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


def keepalive_options() -> dict[int, int]:
    """TCP options of every Redis socket (the Linux ones where this platform has them)."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE_SECONDS,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_SECONDS,
        "TCP_KEEPCNT": KEEPALIVE_PROBES,
        "TCP_USER_TIMEOUT": USER_TIMEOUT_MS,
    }
    return {getattr(socket, k): v for k, v in wanted.items() if hasattr(socket, k)}


def client_options(*, retry: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url``/``ConnectionPool.from_url``.

    Without them a connection whose peer vanished (packets dropped, no RST)
    waits for the kernel's retransmission timeout, about 15 minutes: reads
    hang, and a pub/sub listener goes deaf without knowing.  With them every
    read, connect and idle connection is bounded: ``socket_timeout`` for
    commands, ``TCP_USER_TIMEOUT`` for data the peer never acknowledged,
    keepalive probes for idle sockets, a health-check PING before reusing a
    connection idle for a while.  Unless ``retry``, redis-py does not retry on
    its own: the caller (the store answering ``store_unavailable``, the
    listener's reconnect loop) decides what a failure means.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": COMMAND_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }
    if not retry:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options["retry"] = Retry(NoBackoff(), 0)
    return options


def connect(url: str, *, max_connections: int | None = None, retry: bool = True) -> Redis:
    """A client for ``url`` (without ``prefix``: see :func:`split_url`), not yet connected,
    with :func:`client_options`.

    With ``max_connections`` the pool is bounded and a command waits up to the
    command timeout for a free connection.  ``retry=False`` turns off the
    library's own retries: a store's append that in fact ran must not run twice.
    """
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio import Redis as Client

    options = client_options(retry=retry)
    if max_connections is None:
        return Client.from_url(url, **options)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=COMMAND_TIMEOUT_SECONDS, **options
    )
    return Client.from_pool(pool)  # the client owns the pool and closes it
