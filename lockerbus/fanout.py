"""Encode an event once and hand it to many Engine.IO sockets without a task each.

python-socketio's ``AsyncManager.emit`` starts one asyncio task per recipient,
and Engine.IO's per-socket writer task then wakes once per message (with a
``wait_for`` timer) to frame and write it.  Here a broadcast is encoded once,
into one Engine.IO packet and, when first needed, one ready websocket frame.
For each recipient whose Engine.IO writer is idle (nothing queued, waiting
for more) the frame is written straight to its TCP transport; otherwise the
packet goes on the socket's queue behind what is already there.  Either way
per-recipient order is the order of the calls, and a broadcast is
synchronous, so nothing can interleave with it.

This reaches into python-engineio's socket (``sockets``, ``queue``,
``closed``); the private names it needs are behind :mod:`lockerbus.sio_adapter`,
and with an untested python-engineio it falls back to the public
``send_packet`` coroutine.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

import orjson
from engineio import packet as eio_packet

from .sio_adapter import fast_path_available, track_websockets, writer_idle
from .store import StoredEvent

#: Turns of the event loop a direct write waits for others to join it: it goes
#: once QUIET_ROUNDS turns in a row brought no frame, at the latest after
#: FLUSH_ROUNDS turns or FLUSH_SECONDS (turns are long when the loop is busy).
FLUSH_ROUNDS = 64
QUIET_ROUNDS = 8
FLUSH_SECONDS = 0.003
#: Turns of the loop a replay waits at most for a connection's writer to be idle.
SETTLE_ROUNDS = 16
#: A broadcast to a connection written to less than this ago waits to share a write;
#: one to a quiet connection goes at once (a 1,000-client fan-out keeps its latency).
BUSY_SECONDS = 0.001


class Outgoing:
    """One encoded message: its Engine.IO packet and, made on first use, its websocket frame.

    Made from a packet, or from a ready frame (a replay built from stored bytes):
    then the Engine.IO packet is made from the frame only if it is queued.
    """

    __slots__ = ("_frame", "_packet", "_start", "coalesce")

    def __init__(
        self,
        packet: eio_packet.Packet | None = None,
        *,
        coalesce: bool = False,
        text: bytes | None = None,
    ) -> None:
        if (packet is None) == (text is None):
            raise ValueError("give a packet or its text, not both")
        self._packet = packet
        #: may wait a few loop turns to share a write (acks); a broadcast goes at once
        self.coalesce = coalesce
        self._frame: bytes | None = None
        self._start = 0  # where the Engine.IO packet's text starts in _frame
        if text is not None:  # b"4" + text: what Packet.encode() gives for a text MESSAGE
            self._frame, self._start = _framed((b"4", text), len(text) + 1)

    @property
    def packet(self) -> eio_packet.Packet:
        """The Engine.IO MESSAGE packet (for Engine.IO's queue: long-polling, a busy writer)."""
        if self._packet is None:
            assert self._frame is not None
            text = self._frame[self._start + 1 :].decode()  # after the MESSAGE type "4"
            self._packet = eio_packet.Packet(eio_packet.MESSAGE, data=text)
        return self._packet

    @property
    def frame(self) -> bytes:
        """The unmasked, uncompressed text frame a server sends (RFC 6455 §5.2)."""
        if self._frame is None:
            payload = self.packet.encode().encode()
            self._frame, self._start = _framed((payload,), len(payload))
        return self._frame


_HEADER_7 = struct.Struct("!BB").pack
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def _framed(parts: tuple[bytes | memoryview, ...], size: int) -> tuple[bytes, int]:
    """A text frame (FIN, no mask, no compression) carrying ``parts``, ``size`` bytes in
    all, joined in one copy; and the header's length."""
    if size < 126:
        header = _HEADER_7(0x81, size)
    elif size < 65536:
        header = _HEADER_16(0x81, 126, size)
    else:
        header = _HEADER_64(0x81, 127, size)
    return b"".join((header, *parts)), len(header)


def encode_event(namespace: str, name: str, payload: Any) -> Outgoing:
    """One Engine.IO MESSAGE carrying Socket.IO EVENT ``name`` with ``payload``."""
    body = orjson.dumps([name, payload]).decode()
    text = f"2{namespace},{body}" if namespace != "/" else f"2{body}"
    return Outgoing(eio_packet.Packet(eio_packet.MESSAGE, data=text))


_REPLAYED: Final = b'"replayed":'
_REPLAYED_TAIL: Final = b',"replayed":true}]'


def replayed_json(json: bytes) -> bytes:
    """A stored envelope's JSON with ``"replayed": true`` added: exactly the bytes
    ``orjson.dumps({**event, "replayed": True})`` gives, without decoding the event."""
    if _spliceable(json):
        return json[:-1] + b',"replayed":true}'
    # "replayed" somewhere in it (perhaps only inside data): do what a dict merge does
    return orjson.dumps({**orjson.loads(json), "replayed": True})


def _spliceable(json: bytes) -> bool:
    """Whether ``"replayed": true`` can go before the closing brace (no such key yet)."""
    return _REPLAYED not in json and json[-1:] == b"}" and len(json) > 2


@functools.lru_cache(maxsize=256)
def _event_head(namespace: str, name: str) -> bytes:
    """What precedes the payload in an Engine.IO MESSAGE carrying Socket.IO EVENT ``name``."""
    head = f"42{namespace}," if namespace != "/" else "42"
    return head.encode() + b"[" + orjson.dumps(name) + b","


class ReplayRun:
    """Stored events replayed to one connection, each marked ``replayed``, built from
    their bytes: all their frames joined, for one write; if they must be queued
    instead (long-polling, a busy writer), one Engine.IO packet each, made then."""

    __slots__ = ("_events", "_namespace", "count", "frames")

    def __init__(self, namespace: str, events: Sequence[StoredEvent]) -> None:
        self._namespace = namespace
        self._events = events
        self.count = len(events)
        parts: list[bytes | memoryview] = []
        heads: dict[str, bytes] = {}
        tail, tail_size = _REPLAYED_TAIL, len(_REPLAYED_TAIL)
        replayed = _REPLAYED
        for event in events:
            json = event.json
            if replayed in json or json[-1:] != b"}" or len(json) < 3:  # not _spliceable
                parts.append(_replayed_outgoing(namespace, event.type, json).frame)
                continue
            head = heads.get(event.type)
            if head is None:
                head = heads[event.type] = _event_head(namespace, event.type)
            size = len(head) + len(json) - 1 + tail_size
            if size < 126:
                parts.append(_HEADER_7(0x81, size))
            elif size < 65536:
                parts.append(_HEADER_16(0x81, 126, size))
            else:
                parts.append(_HEADER_64(0x81, 127, size))
            parts += (head, memoryview(json)[:-1], tail)
        #: every event's websocket frame, in order, in one bytes
        self.frames = b"".join(parts)

    def packets(self) -> list[eio_packet.Packet]:
        """One Engine.IO MESSAGE per event, for Engine.IO's queue."""
        return [
            _replayed_outgoing(self._namespace, event.type, event.json).packet
            for event in self._events
        ]


def encode_replayed(namespace: str, events: Sequence[StoredEvent]) -> ReplayRun:
    """The replay of ``events`` (stored, oldest first) to one connection, for
    :meth:`Sender.send_many`: byte for byte what :func:`encode_event` of each
    decoded event with ``"replayed": true`` gives."""
    return ReplayRun(namespace, events)


def _replayed_outgoing(namespace: str, name: str, json: bytes) -> Outgoing:
    """One replayed event as an :class:`Outgoing`."""
    text = b"2" + _event_head(namespace, name)[2:] + replayed_json(json) + b"]"
    return Outgoing(text=text)


def encode_ack(namespace: str, ack_id: Any, answer: Any) -> Outgoing | None:
    """One Engine.IO MESSAGE carrying Socket.IO ACK ``ack_id`` with ``answer``; None when
    orjson cannot encode it (python-socketio's own path then sends it)."""
    try:
        body = orjson.dumps([answer]).decode()
    except TypeError:
        return None
    text = f"3{namespace},{int(ack_id)}{body}" if namespace != "/" else f"3{int(ack_id)}{body}"
    return Outgoing(eio_packet.Packet(eio_packet.MESSAGE, data=text), coalesce=True)


class Sender:
    """Puts ready packets on Engine.IO sockets, in call order."""

    def __init__(self, eio: Any, max_queue: int, max_buffer_bytes: int = 4 << 20) -> None:
        self._eio = eio
        self._max_queue = max_queue
        self._max_buffer = max_buffer_bytes
        #: deliveries written straight to a transport / put on an Engine.IO queue
        self.direct = 0
        self.queued = 0
        #: transport writes made here (each queued packet is one more, by Engine.IO's writer)
        self.writes = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.fast = fast_path_available(eio)
        self._transports: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: frames written "now" during this turn of the loop, per transport: flushed at its
        #: end with one write each, so a burst of acks and broadcasts costs one syscall
        self._batched: dict[Any, list[bytes]] = {}
        self._rounds = 0
        #: when each socket was last written directly (busy ones coalesce)
        self._last: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._quiet = 0
        self._frames = 0  # frames batched since the last flush
        self._seen = 0  # ... as counted at the previous round
        self._due = 0.0  # loop time by which the batched frames go out
        if self.fast:
            track_websockets(eio, self._transports)

    @staticmethod
    def encode(namespace: str, name: str, payload: Any) -> Outgoing:
        """Encode once for any number of :meth:`send` calls."""
        return encode_event(namespace, name, payload)

    def abort(self, eio_sid: str) -> bool:
        """Cut a websocket client's TCP connection now, with whatever is queued for it.

        For a client that stopped reading; False when there is no websocket
        transport to cut (long-polling, or already gone).
        """
        socket = self._eio.sockets.get(eio_sid) if self.fast else None
        transport = self._transports.get(socket) if socket is not None else None
        if transport is None or transport.is_closing():
            return False
        transport.abort()
        return True

    def send(self, eio_sid: str, out: Outgoing) -> bool | None:
        """Send ``out`` to ``eio_sid``: True when sent or queued, False when the
        connection is over its limits (a slow consumer), None when it is already
        gone or closing (nothing to drop)."""
        if not self.fast:
            task = asyncio.ensure_future(self._eio.send_packet(eio_sid, out.packet))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return True
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return None
        queue = socket.queue
        transport = self._transports.get(socket)
        if transport is not None:
            if transport.is_closing():
                return None
            if transport.get_write_buffer_size() > self._max_buffer:
                return False
            # The writer waits in queue.get() only once it has written all it took,
            # so with nothing queued a frame written now is in order.
            if transport in self._batched:
                self._batched[transport].append(out.frame)  # behind what waits: in order
                self._frames += 1
                self.direct += 1
                return True
            if socket.upgraded and not socket.upgrading and writer_idle(queue):
                now = time.monotonic()
                if out.coalesce or now - self._last.get(socket, 0.0) < BUSY_SECONDS:
                    self._write(transport, out.frame)
                else:
                    transport.write(out.frame)
                    self.writes += 1
                self._last[socket] = now
                self.direct += 1
                return True
        if queue.qsize() >= self._max_queue:
            return False
        queue.put_nowait(out.packet)
        self.queued += 1
        return True

    async def settle(self, eio_sid: str) -> None:
        """Wait (a few turns of the loop at most) until ``eio_sid``'s websocket writer has
        written what it took, so :meth:`send_many` can write at once rather than queue.

        Just after the CONNECT answer is queued, the writer is still taking it (on
        Python 3.11 its ``wait_for`` spends a task and a few turns on each get).
        """
        for _ in range(SETTLE_ROUNDS):
            socket = self._eio.sockets.get(eio_sid) if self.fast else None
            if (
                socket is None
                or socket.closed
                or not socket.upgraded
                or socket.upgrading
                or writer_idle(socket.queue)
            ):
                return
            await asyncio.sleep(0)

    def send_many(self, eio_sid: str, outs: list[Outgoing | ReplayRun]) -> bool | None:
        """Send ``outs`` to ``eio_sid`` in order, in one transport write when its websocket
        writer is idle (a replay: N events, not N writes); answers as :meth:`send`."""
        if not self.fast:
            packets = [p for out in outs for p in _packets(out)]
            for packet in packets:
                task = asyncio.ensure_future(self._eio.send_packet(eio_sid, packet))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            return True
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return None
        queue = socket.queue
        transport = self._transports.get(socket)
        if transport is not None:
            if transport.is_closing():
                return None
            if transport.get_write_buffer_size() > self._max_buffer:
                return False
            count = sum(out.count if isinstance(out, ReplayRun) else 1 for out in outs)
            batched = self._batched.get(transport)
            if batched is not None:  # frames wait to share a write: these go behind them
                batched.extend(_frames(out) for out in outs)
                self._frames += count
                self.direct += count
                return True
            if socket.upgraded and not socket.upgrading and writer_idle(queue):
                transport.write(b"".join([_frames(out) for out in outs]))
                self._last[socket] = time.monotonic()
                self.direct += count
                self.writes += 1
                return True
        # long-polling sends what is queued in one response; a busy websocket writer
        # takes the queue in one batch
        for out in outs:
            for packet in _packets(out):
                if queue.qsize() >= self._max_queue:
                    return False
                queue.put_nowait(packet)
                self.queued += 1
        return True

    def _write(self, transport: Any, frame: bytes) -> None:
        """Write ``frame`` a few turns of the loop later, with the others for ``transport``.

        Still in order: while frames wait here, a packet Engine.IO's writer
        could take must wait too, so :meth:`send` queues nothing behind them.
        """
        self._frames += 1
        frames = self._batched.get(transport)
        if frames is not None:
            frames.append(frame)
            return
        if not self._batched:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + FLUSH_SECONDS
            loop.call_soon(self._flush)
        self._batched[transport] = [frame]

    def _flush(self) -> None:
        # Engine.IO reads one message per turn of the loop: waiting a few turns (each
        # a few µs when idle) lets a busy connection's acks and events share a write;
        # while frames keep coming it waits longer, when they stop it writes soon.
        self._quiet = self._quiet + 1 if self._frames == self._seen else 0
        self._seen = self._frames
        if self._rounds < FLUSH_ROUNDS and self._quiet < QUIET_ROUNDS:
            loop = asyncio.get_running_loop()
            if loop.time() < self._due:
                self._rounds += 1
                loop.call_soon(self._flush)
                return
        self._rounds = self._quiet = self._frames = self._seen = 0
        batched, self._batched = self._batched, {}
        for transport, frames in batched.items():
            if not transport.is_closing():
                transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
                self.writes += 1


def _frames(out: Outgoing | ReplayRun) -> bytes:
    return out.frames if isinstance(out, ReplayRun) else out.frame


def _packets(out: Outgoing | ReplayRun) -> list[eio_packet.Packet]:
    return out.packets() if isinstance(out, ReplayRun) else [out.packet]
