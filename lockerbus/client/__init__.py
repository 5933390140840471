"""LockerbusClient / KioskClient: python-socketio clients that stay correct across drops.

What this adds to ``socketio.AsyncClient`` (docs/client.md has the detail):

* one Socket.IO client per namespace, because python-socketio sends the same
  ``auth`` to every namespace of a client while replay positions are per
  namespace; each reconnect sends ``{token, last_seq, epoch}`` of the last
  event seen there, so the server replays exactly what was missed (§6);
* events already seen (same epoch, seq not above the last) are dropped;
  ``recovered`` mirrors each namespace's latest ``replay_complete``;
* its own reconnect loop (exponential backoff with jitter) that also covers
  the first connect and server-side disconnects, and stops on a refused token;
* an ordered, bounded offline queue (optionally on disk) for publishes, each
  sent after the previous one was acked;
* ``@client.on_command``: the handler's return value becomes the kiosk's ack;
* after ``recovered: false`` on ``/ws/lockers`` or ``/ws/help``, the server's
  state (``/api/lockers``, ``/api/help``) goes to ``@client.on("state")``
  handlers, to rebuild from instead of the lost history (contract §11).

It imports no server code: only socketio, aiohttp, the event vocabulary and errors.
"""

from __future__ import annotations

from .core import LockerbusClient
from .kiosk import KioskClient
from .options import (
    ClientClosed,
    ClientError,
    ClientOptions,
    ConnectionRefused,
    PublishDropped,
    PublishRejected,
    backoff_delay,
    command_answer,
)
from .state import fetch_state

__all__ = [
    "ClientClosed",
    "ClientError",
    "ClientOptions",
    "ConnectionRefused",
    "KioskClient",
    "LockerbusClient",
    "PublishDropped",
    "PublishRejected",
    "backoff_delay",
    "command_answer",
    "fetch_state",
]
