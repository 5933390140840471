"""The delivery core: who is subscribed to what, and replay -> replay_complete -> live.

Nothing here imports python-socketio or python-engineio: the transport comes in
as a :class:`~lockerbus.delivery.hub.Sender` (lockerbus.fanout on a server, a
fake in the unit tests), so the ordering guarantee is tested without sockets.
"""

from .catchup import CatchUp, Disconnect
from .connection import Connection, ReplayRequest, parse_replay_request
from .hub import Broadcaster, Hub, Sender
from .tasks import Background

__all__ = [
    "Background",
    "Broadcaster",
    "CatchUp",
    "Connection",
    "Disconnect",
    "Hub",
    "ReplayRequest",
    "Sender",
    "parse_replay_request",
]
