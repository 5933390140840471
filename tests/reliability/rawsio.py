"""Socket.IO over a bare websocket, handshake by hand (Engine.IO v4, Socket.IO v5).

For clients no library would be: one that stops reading, one that sends
malformed frames.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson

from tests.support import WAIT


class RawSocket:
    """One websocket to ``/socket.io/?EIO=4&transport=websocket``."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session, self.ws = session, ws
        self.eio_sid = ""

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        """Connect and read the Engine.IO OPEN packet."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                f"{url}/socket.io/?EIO=4&transport=websocket", timeout=aiohttp.ClientWSTimeout(WAIT)
            )
        except BaseException:
            await session.close()
            raise
        raw = cls(session, ws)
        opened = await raw.recv()
        assert opened.startswith("0"), opened
        raw.eio_sid = orjson.loads(opened[1:])["sid"]
        return raw

    async def recv(self, timeout: float = WAIT) -> str:
        """The next text frame; answers the server's pings on the way."""
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"websocket {msg.type.name}: {msg.data!r}")
            text: str = msg.data
            if text == "2":
                await self.ws.send_str("3")
                continue
            return text

    async def join(self, namespace: str, auth: dict[str, Any]) -> str:
        """Socket.IO CONNECT to ``namespace``; returns the server's answer (``40...`` or ``44...``)."""
        await self.ws.send_str(f"40{namespace},{json.dumps(auth)}")  # as python-socketio does
        return await self.recv()

    async def send(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_str(text)

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()
