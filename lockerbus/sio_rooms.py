"""A client manager that knows each connection's rooms, so a disconnect is O(its rooms).

python-socketio 5's ``BaseManager.basic_disconnect`` copies and scans every
room of the namespace to find the leaving sid's, and every connection has a
room of its own (its sid): 10,000 connections dropping at once cost
10,000 x 10,000 membership tests, tens of seconds of one core during which
the server answers nothing.  :class:`RoomIndex` keeps ``sid -> rooms`` beside
python-socketio's ``room -> sids`` (both change only through
``basic_enter_room``/``basic_leave_room``) and disconnects with it; what a
disconnect does is otherwise python-socketio's: leave every room, drop the
sid's pending callbacks, forget it as pending connect or disconnect.  Those
pending lists become counted dicts (:class:`_Sids`): every incoming event
asks whether its sid is pending, and a storm of connect handlers that await
(a kiosk's cluster presence) made that, and confirming each, O(pending).

Every python-socketio name used here is listed in :data:`ROOM_INTERNALS`
(checked by tests/test_sio_adapter.py with the rest of ``INTERNALS``).
"""

from __future__ import annotations

from typing import Any, Final

import socketio
from socketio.base_manager import BaseManager

#: (symbol, owner, name, kind, where) as :class:`lockerbus.sio_adapter.Internal` takes them
ROOM_INTERNALS: Final = (
    ("socketio.BaseManager.rooms", BaseManager, "rooms", "assigned", "__init__"),
    ("socketio.BaseManager.callbacks", BaseManager, "callbacks", "assigned", "__init__"),
    (
        "socketio.BaseManager.pending_connect",
        BaseManager,
        "pending_connect",
        "assigned",
        "__init__",
    ),
    (
        "socketio.BaseManager.pending_disconnect",
        BaseManager,
        "pending_disconnect",
        "assigned",
        "__init__",
    ),
    ("socketio.BaseManager.basic_enter_room", BaseManager, "basic_enter_room", "method", ""),
    ("socketio.BaseManager.basic_leave_room", BaseManager, "basic_leave_room", "method", ""),
    ("socketio.BaseManager.basic_disconnect", BaseManager, "basic_disconnect", "method", ""),
    ("socketio.BaseManager.get_rooms", BaseManager, "get_rooms", "method", ""),
)


class _Sids(dict[str, int]):
    """python-socketio's pending list (append, remove, in, len) as a counted dict:
    ``in``, ``remove`` and ``len`` O(1) where a list scans every sid pending."""

    total = 0

    def append(self, sid: str) -> None:
        self[sid] = self.get(sid, 0) + 1
        self.total += 1

    def remove(self, sid: str) -> None:
        left = self[sid] - 1  # KeyError where the list's raises ValueError: never reached
        if left:
            self[sid] = left
        else:
            del self[sid]
        self.total -= 1

    def __len__(self) -> int:
        return self.total


class _Pending(dict[str, _Sids]):
    """namespace -> pending sids; python-socketio stores a new ``[]``, this keeps a _Sids."""

    def __setitem__(self, namespace: str, sids: Any) -> None:
        if not isinstance(sids, _Sids):
            listed, sids = sids, _Sids()
            for sid in listed:
                sids.append(sid)
        super().__setitem__(namespace, sids)


class RoomIndex:
    """Mixin for a python-socketio manager: ``sid -> rooms`` kept beside ``room -> sids``."""

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, Any]
    pending_disconnect: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: namespace -> sid -> its rooms (None: the namespace itself, the sid's own room)
        self.rooms_of: dict[str, dict[str, dict[Any, None]]] = {}
        # sids between pre_connect and connect (the connect handler awaits: a kiosk's
        # presence in the cluster), between pre_disconnect and disconnect; every
        # incoming event asks whether its sid is one of them
        self.pending_connect = _Pending()
        self.pending_disconnect = _Pending()

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self.rooms_of.setdefault(namespace, {}).setdefault(sid, {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        self._forget(sid, namespace, room)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, leaving only the rooms ``sid`` is in."""
        if namespace not in self.rooms:
            return
        sids = self.rooms_of.get(namespace, {})
        for room in list(sids.get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms ``sid`` is in (its own included), as python-socketio's."""
        rooms = self.rooms_of.get(namespace, {}).get(sid, {})
        return [room for room in rooms if room is not None]

    def _forget(self, sid: str, namespace: str, room: Any) -> None:
        sids = self.rooms_of.get(namespace)
        rooms = sids.get(sid) if sids is not None else None
        if sids is None or rooms is None:
            return
        rooms.pop(room, None)
        if not rooms:
            del sids[sid]
            if not sids:
                del self.rooms_of[namespace]


class IndexedAsyncManager(RoomIndex, socketio.AsyncManager):  # type: ignore[misc]
    """The single-instance manager: python-socketio's, with :class:`RoomIndex`."""


__all__ = ["ROOM_INTERNALS", "IndexedAsyncManager", "RoomIndex"]
