"""Encode an event once and hand it to many Engine.IO sockets without a task each.

python-socketio's ``AsyncManager.emit`` starts one asyncio task per recipient.
Here the Socket.IO packet text is built once per broadcast, wrapped in one
Engine.IO packet (which caches its own encoding), and put straight on each
recipient socket's send queue: per-recipient order is the order of the calls,
and a broadcast is synchronous, so nothing can interleave with it.

This reaches into python-engineio's socket (``sockets``, ``queue``,
``closed``).  It is isolated here, checked against the versions it was tested
with, and falls back to the public ``send_packet`` coroutine otherwise.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any, Final

import orjson
from engineio import packet as eio_packet

TESTED_ENGINEIO: Final = ("4.",)

_FAST = version("python-engineio").startswith(TESTED_ENGINEIO)


def encode_event(namespace: str, name: str, payload: Any) -> eio_packet.Packet:
    """One Engine.IO MESSAGE carrying Socket.IO EVENT ``name`` with ``payload``."""
    body = orjson.dumps([name, payload]).decode()
    text = f"2{namespace},{body}" if namespace != "/" else f"2{body}"
    return eio_packet.Packet(eio_packet.MESSAGE, data=text)


class Sender:
    """Puts ready packets on Engine.IO sockets, in call order."""

    def __init__(self, eio: Any, max_queue: int) -> None:
        self._eio = eio
        self._max_queue = max_queue
        self._pending: set[asyncio.Task[None]] = set()
        self.fast = _FAST and hasattr(eio, "sockets")

    def send(self, eio_sid: str, pkt: eio_packet.Packet) -> bool:
        """Queue ``pkt`` for ``eio_sid``; False when the socket is gone or over its limit."""
        if not self.fast:
            task = asyncio.ensure_future(self._eio.send_packet(eio_sid, pkt))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return True
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return False
        queue = socket.queue
        if queue.qsize() >= self._max_queue:
            return False
        queue.put_nowait(pkt)
        return True
