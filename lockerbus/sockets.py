"""The Socket.IO side's lifecycle: start the slow-consumer reaper, close every client.

Closing is idempotent: the runner closes the sockets first in a graceful stop
(so clients reconnect elsewhere while HTTP requests finish), then the app's
cleanup context closes them again, harmlessly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .delivery import Background, Connection, Hub
from .server import LockerbusServer

if TYPE_CHECKING:  # cluster mode only
    from .cluster import ClusterRelay


class Sockets:
    """The started AsyncServer and the tasks working for it."""

    def __init__(
        self,
        sio: LockerbusServer,
        hub: Hub,
        tasks: Background,
        *,
        relay: ClusterRelay | None = None,
    ) -> None:
        self.sio = sio
        self.hub = hub
        self.sender = sio.sender
        #: the cluster relay in front of the hub (None with one instance)
        self.relay = relay
        self._tasks = tasks
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
            await self.sio.eio.disconnect()
        await self.sio.shutdown()
        await self._tasks.close()
