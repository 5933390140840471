"""The receive fast path: a websocket client's EVENT taken where Engine.IO reads it.

python-engineio reads each frame in a new task under ``wait_for`` and hands it
to python-socketio in another task, which decodes it and starts a third.
:func:`take_events` offers each frame to a taker first
(``sio_adapter.HookedAsyncServer``), and :func:`read_event` decodes a
client's ``42/namespace,id[...]`` frame.  It reaches for two private names of
python-engineio (the driver table ``_async`` and ``WebSocket.handler``), listed
in ``sio_adapter.INTERNALS`` with the rest.  Anything this does not read
exactly as ``socketio.packet.Packet.decode`` would (no namespace, a query
in it, attachments, a long id, JSON that does not parse or is not a
non-empty array) returns None, and python-socketio's own path decides,
errors included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Final

from engineio import json as engineio_json

#: Engine.IO MESSAGE + Socket.IO EVENT, to a namespace
EVENT_PREFIX: Final = "42/"
#: The taker hands a frame back to Engine.IO at least this often, so its read
#: timeout (ping interval + ping timeout) still measures the client's silence.
TAKE_SECONDS: Final = 1.0
MAX_ID_DIGITS: Final = 100  # python-socketio refuses an id of more digits
_DIGITS: Final = frozenset("0123456789")
MAX_INT_DIGITS: Final = 100  # python-engineio's json refuses a longer integer


def _safe_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError("Integer is too large")
    return int(text)


def event_loads(json_module: Any) -> Callable[[str], Any]:
    """How to parse an EVENT's JSON as python-socketio's ``json`` module does.

    Its default (``engineio.json``) is the stdlib's with integers of at most
    100 digits, building a decoder per call; one decoder made once does the same.
    """
    if json_module is engineio_json:
        return json.JSONDecoder(parse_int=_safe_int).decode
    loads: Callable[[str], Any] = json_module.loads
    return loads


def read_event(text: str, loads: Any = json.loads) -> tuple[str, int | None, list[Any]] | None:
    """``(namespace, ack id, [name, *args])`` of an EVENT frame, or None: not the common case."""
    if not text.startswith(EVENT_PREFIX):
        return None
    comma = text.find(",", 3)
    if comma < 0:
        return None
    namespace = text[2:comma]
    if "?" in namespace:
        return None
    start = end = comma + 1
    size = len(text)
    while end < size and text[end] in _DIGITS:
        end += 1
    if end - start > MAX_ID_DIGITS or text[end : end + 1] != "[":
        return None
    try:
        data = loads(text[end:])
    except Exception:  # python-socketio's own decode raises it again, and reports it
        return None
    if not isinstance(data, list) or not data:
        return None
    return namespace, int(text[start:end]) if end > start else None, data


def take_events(eio: Any, take: Callable[[str, str], bool]) -> None:
    """Let ``take(eio_sid, frame)`` handle websocket text frames where they are read.

    Engine.IO reads each frame in a new task under ``wait_for`` and hands it to
    python-socketio in another task.  Here the websocket's ``wait`` offers every
    ``42/`` frame to ``take`` and reads on while it takes them (a whole buffer
    of frames in one go); a frame it declines goes to Engine.IO as before, and
    so does the first frame after TAKE_SECONDS.  A frame over Engine.IO's size
    limit always goes to Engine.IO, which refuses it.
    """
    drivers = getattr(eio, "_async", None)
    if not isinstance(drivers, dict) or drivers.get("websocket") is None:
        return
    base = drivers["websocket"]
    limit = eio.max_http_buffer_size

    class TakingWebSocket(base):  # type: ignore[misc, valid-type]
        async def wait(self) -> Any:
            socket = getattr(self.handler, "__self__", None)
            if socket is None or not socket.upgraded:  # an upgrade's probe and UPGRADE: as before
                return await super().wait()
            until = time.monotonic() + TAKE_SECONDS
            while True:
                data = await super().wait()
                if (
                    type(data) is not str
                    or not data.startswith(EVENT_PREFIX)
                    or len(data) > limit
                    or time.monotonic() > until
                    or not take(socket.sid, data)
                ):
                    return data

    # a copy: the driver's table is shared by every server in the process
    eio._async = {**drivers, "websocket": TakingWebSocket}
