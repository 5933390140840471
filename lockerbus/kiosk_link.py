"""The Socket.IO side of commands: reach a kiosk's connection and await its ack.

Implements :class:`~lockerbus.commands.KioskLink`: the newest local connection
of the kiosk when this instance holds one, else (cluster mode) one another
instance holds, through python-socketio's cross-host callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import socketio

from .commands import KioskDisconnected, KioskOffline
from .delivery import Hub
from .events import EVENTS_NS, KIOSK_ROOM_PREFIX
from .log import server_logger

if TYPE_CHECKING:  # presence needs redis, an optional extra: imported only in cluster mode
    from .presence import Presence


class SocketKioskLink:
    """Sends a command to one connection of a kiosk (the newest) and returns its ack."""

    def __init__(
        self, sio: socketio.AsyncServer, hub: Hub, presence: Presence | None = None
    ) -> None:
        self._sio = sio
        self._hub = hub
        self._presence = presence

    async def send_command(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any:
        members = self._hub.rooms[EVENTS_NS].get(KIOSK_ROOM_PREFIX + kiosk_id)
        if not members:
            return await self._send_remote(kiosk_id, command, timeout_seconds)
        conn = next(reversed(members.values()))
        call = asyncio.ensure_future(
            self._sio.call(
                "command",
                dict(command),
                to=conn.sid,
                namespace=EVENTS_NS,
                timeout=timeout_seconds,
                ignore_queue=True,
            )
        )
        gone = asyncio.ensure_future(conn.closed.wait())
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not call.done():
            call.cancel()
            raise KioskDisconnected(kiosk_id)
        try:
            return call.result()
        except socketio.exceptions.TimeoutError:
            raise TimeoutError from None
        except socketio.exceptions.DisconnectedError:
            raise KioskDisconnected(kiosk_id) from None

    async def _send_remote(
        self, kiosk_id: str, command: Mapping[str, Any], timeout_seconds: float
    ) -> Any:
        """A kiosk held by another instance: the message queue carries the command
        and its ack (python-socketio's cross-host callbacks)."""
        if self._presence is None:
            raise KioskOffline(kiosk_id)
        from .presence import PresenceError  # set only in cluster mode, where redis is installed

        try:
            holders = await self._presence.find(kiosk_id)
        except PresenceError as exc:
            server_logger.warning("command: cannot look kiosk %s up: %s", kiosk_id, exc)
            raise KioskOffline(kiosk_id) from None
        remote = [sid for host, sid in holders if host != self._presence.instance_id]
        if not remote:
            raise KioskOffline(kiosk_id)
        try:
            return await self._sio.call(
                "command",
                dict(command),
                to=remote[-1],
                namespace=EVENTS_NS,
                timeout=timeout_seconds,
            )
        except socketio.exceptions.TimeoutError:
            raise TimeoutError from None
