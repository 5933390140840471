"""One set of connection options for every Redis client lockerbus makes (store,
presence, the cluster's pub/sub): each one must notice a partition within seconds.

Without them a connection whose peer vanished (packets dropped, no RST) waits
for the kernel's retransmission timeout, about 15 minutes: reads hang, and a
pub/sub listener goes deaf without knowing.  With them every read, connect and
idle connection is bounded: ``socket_timeout`` for commands, ``TCP_USER_TIMEOUT``
for data the peer never acknowledged, keepalive probes for idle sockets, a
health-check PING before reusing a connection idle for a while.  redis-py does
not retry on its own: the caller (the store answering ``store_unavailable``,
the listener's reconnect loop) decides what a failure means.

Imports redis, an optional extra: import this module only where redis is used.
"""

from __future__ import annotations

import socket
from typing import Any, Final

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CONNECT_TIMEOUT_SECONDS: Final = 2.0
COMMAND_TIMEOUT_SECONDS: Final = 5.0
HEALTH_CHECK_SECONDS: Final = 5
# Unacknowledged data older than this kills the connection (ETIMEDOUT).
USER_TIMEOUT_MS: Final = 6000
KEEPALIVE_IDLE_SECONDS: Final = 5
KEEPALIVE_INTERVAL_SECONDS: Final = 1
KEEPALIVE_PROBES: Final = 3


def keepalive_options() -> dict[int, int]:
    """TCP options of every Redis socket (the Linux ones where this platform has them)."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE_SECONDS,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_SECONDS,
        "TCP_KEEPCNT": KEEPALIVE_PROBES,
        "TCP_USER_TIMEOUT": USER_TIMEOUT_MS,
    }
    return {getattr(socket, k): v for k, v in wanted.items() if hasattr(socket, k)}


def client_options() -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url``/``ConnectionPool.from_url``."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": COMMAND_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
