"""Baseline for scripts/bench: a plain python-socketio AsyncServer on aiohttp.

It speaks just enough of the lockerbus contract for the load generator:
``connect`` accepts any auth, ``subscribe {room}`` joins the room and acks
``{ok: true}``, ``publish {type, data, room?}`` wraps ``data`` in an envelope
shaped like lockerbus's (so both servers put the same bytes on the wire),
emits it to the room under the event's type and acks ``{ok: true, event}``.
``POST /api/events`` does the same over HTTP (201 and the envelope) and
``POST /api/events/batch {events: [...]}`` for many (200 ``{results}``).
No auth, validation, store or replay: that is the point of a baseline.

permessage-deflate is refused, as lockerbus does by default: python-engineio
4.15 has no option for it on aiohttp (its ``WebSocketResponse`` keeps aiohttp's
``compress=True``), so a middleware drops the client's
``Sec-WebSocket-Extensions`` offer before the handshake.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import socketio
from aiohttp import web

NAMESPACE_ROOMS = {
    "/ws/lockers": "locker_updates",
    "/ws/help": "help_requests",
    "/ws/events": "system_events",
}
ROUTES = {
    "locker_state_changed": "/ws/lockers",
    "help_requested": "/ws/help",
    "help_status_updated": "/ws/help",
    "command_applied": "/ws/events",
    "system_status": "/ws/events",
}
EPOCH = uuid.uuid4().hex


@web.middleware
async def refuse_ws_compression(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Hide the client's permessage-deflate offer so aiohttp never negotiates it."""
    if "Sec-WebSocket-Extensions" in request.headers:
        headers = request.headers.copy()
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return await handler(request)


class PlainNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """One namespace: subscribe joins a room, publish broadcasts to it."""

    def __init__(self, namespace: str, seqs: dict[str, itertools.count[int]]) -> None:
        super().__init__(namespace)
        self._seqs = seqs

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        return True

    async def on_subscribe(self, sid: str, message: Any) -> dict[str, Any]:
        room = message.get("room") if isinstance(message, dict) else None
        if not isinstance(room, str) or not room:
            return {"ok": False, "error": {"code": "bad_request", "message": "room required"}}
        await self.enter_room(sid, room)
        return {"ok": True}

    async def on_unsubscribe(self, sid: str, message: Any) -> dict[str, Any]:
        room = message.get("room") if isinstance(message, dict) else None
        if isinstance(room, str):
            await self.leave_room(sid, room)
        return {"ok": True}

    async def on_publish(self, sid: str, message: Any) -> dict[str, Any]:
        return await publish(self.server, self._seqs, message)


async def publish(
    sio: socketio.AsyncServer, seqs: dict[str, itertools.count[int]], message: Any
) -> dict[str, Any]:
    """Wrap ``message`` in an envelope, emit it to its room, answer like lockerbus's ack."""
    if not isinstance(message, dict) or message.get("type") not in ROUTES:
        return {"ok": False, "error": {"code": "bad_request", "message": "type required"}}
    event_type = message["type"]
    namespace = ROUTES[event_type]
    room = message.get("room") or NAMESPACE_ROOMS[namespace]
    envelope = {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": "1.0",
        "seq": next(seqs[namespace]),
        "epoch": EPOCH,
        "namespace": namespace,
        "room": room,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "data": message.get("data"),
    }
    await sio.emit(event_type, envelope, to=room, namespace=namespace)
    return {"ok": True, "event": envelope}


def create_app() -> web.Application:
    """The aiohttp application with the socket.io server attached at /socket.io/."""
    sio = socketio.AsyncServer(async_mode="aiohttp")
    seqs = {namespace: itertools.count(1) for namespace in NAMESPACE_ROOMS}
    for namespace in NAMESPACE_ROOMS:
        sio.register_namespace(PlainNamespace(namespace, seqs))
    app = web.Application(middlewares=[refuse_ws_compression])
    sio.attach(app)

    async def post_event(request: web.Request) -> web.Response:
        answer = await publish(sio, seqs, await request.json())
        if not answer["ok"]:
            return web.json_response({"error": answer["error"]}, status=400)
        return web.json_response(answer["event"], status=201)

    async def post_batch(request: web.Request) -> web.Response:
        body = await request.json()
        results = [await publish(sio, seqs, item) for item in body.get("events", [])]
        return web.json_response({"results": results})

    app.router.add_post("/api/events", post_event)
    app.router.add_post("/api/events/batch", post_batch)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark server listens on the loopback interface only")
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        print=lambda _: print(f"plain python-socketio serving on {args.port}", flush=True),
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
