"""The Socket.IO side's lifecycle: start the slow-consumer reaper, close every client.

Closing is idempotent: the runner closes the sockets first in a graceful stop
(so clients reconnect elsewhere while HTTP requests finish), then the app's
cleanup context closes them again, harmlessly.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

from .delivery import Background, Connection, Hub
from .server import LockerbusServer
from .sio_adapter import drop_unsent

if TYPE_CHECKING:  # cluster mode only
    from .cluster import ClusterRelay

#: how long a graceful stop waits for clients to take their close packet
CLOSE_TIMEOUT_SECONDS: Final = 2.0


class Sockets:
    """The started AsyncServer and the tasks working for it."""

    def __init__(
        self,
        sio: LockerbusServer,
        hub: Hub,
        tasks: Background,
        *,
        relay: ClusterRelay | None = None,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
    ) -> None:
        self.sio = sio
        self.hub = hub
        self.sender = sio.sender
        #: the cluster relay in front of the hub (None with one instance)
        self.relay = relay
        self._tasks = tasks
        self._close_timeout = close_timeout
        self._closed = False

    async def start(self) -> None:
        self._tasks.spawn(self.hub.reap_overflowed(self._disconnect))

    async def _disconnect(self, conn: Connection) -> None:
        await self.sio.disconnect(conn.sid, namespace=conn.namespace)

    async def close(self) -> None:
        """Disconnect every client so it reconnects elsewhere; stop background tasks."""
        if self._closed:
            return
        self._closed = True
        if self.sio.eio.sockets:
            # closing the transports disconnects every namespace too; closing
            # namespaces one by one first leaves clients half-closed for seconds
            await self._close_transports()
        await self.sio.shutdown()
        await self._tasks.close()

    async def _close_transports(self) -> None:
        """Close every Engine.IO socket, waiting a bounded time for the close packets.

        Engine.IO waits until each socket's queue is taken; a long-polling client
        that never polls again (a bare handshake, a client that vanished) would
        hold the stop forever, so what is still queued after the timeout is dropped.
        """
        closing = asyncio.create_task(self.sio.eio.disconnect())
        done, _ = await asyncio.wait({closing}, timeout=self._close_timeout)
        if not done:
            drop_unsent(self.sio.eio)
        with contextlib.suppress(Exception):
            await closing
