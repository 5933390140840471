"""Client tunables, errors and the small pure helpers every client module shares."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..events import Event

log = logging.getLogger("lockerbus.client")

Handler = Callable[[Event], Awaitable[None] | None]
CommandHandler = Callable[[dict[str, Any]], Any]

#: refusals that retrying with the same token cannot fix
FATAL_REFUSALS: Final = frozenset({"unauthorized", "forbidden", "bad_request"})
#: publish errors worth retrying: the server, not the event, is the problem
TRANSIENT_ERRORS: Final = frozenset({"rate_limited", "store_unavailable", "internal_error"})
ANSWER_KEYS: Final = ("success", "message", "error", "response_data")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Tunables of a client; the defaults suit a kiosk on a flaky link."""

    reconnect_first_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    queue_size: int = 1000
    queue_path: str | None = None
    ack_timeout: float = 10.0
    connect_timeout: float = 10.0
    transient_retries: int = 5
    #: connection options passed through to python-socketio, for kiosks behind a
    #: private CA or a proxy: verify TLS (False: accept any certificate), a CA
    #: bundle to verify it with, extra HTTP headers, the Socket.IO path (behind a
    #: path prefix, e.g. "lockerbus/socket.io") and the transports to try
    ssl_verify: bool = True
    ca_file: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    socketio_path: str = "socket.io"
    transports: tuple[str, ...] = ("websocket",)

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_first_delay <= self.reconnect_max_delay:
            raise ValueError("need 0 < reconnect_first_delay <= reconnect_max_delay")
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.ack_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("ack_timeout and connect_timeout must be > 0")
        if not self.transports or set(self.transports) - {"websocket", "polling"}:
            raise ValueError("transports must be among websocket, polling")
        if self.ca_file is not None and not self.ssl_verify:
            raise ValueError("ca_file needs ssl_verify=True")


class ClientError(Exception):
    """Root of the client's errors."""


class PublishRejected(ClientError):
    """The server refused an event (``{ok: false, error}``); it is not retried."""

    def __init__(self, error: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
        self.code: str = str(error.get("code", "error"))
        self.message: str = str(error.get("message", ""))
        self.fields: dict[str, Any] = dict(error.get("fields") or {})
        self.payload = dict(payload)
        super().__init__(f"{self.code}: {self.message}")


class PublishDropped(ClientError):
    """The offline queue was full and this event, the oldest, was dropped."""


class ConnectionRefused(ClientError):
    """The server refused the connection with a code retrying cannot fix."""

    def __init__(self, namespace: str, code: str, message: str) -> None:
        self.namespace, self.code, self.message = namespace, code, message
        super().__init__(f"{namespace}: {code}: {message}")


class ClientClosed(ClientError):
    """The client was closed before the operation finished."""


def backoff_delay(attempt: int, first: float, maximum: float) -> float:
    """Exponential backoff with "equal jitter": between half and all of the step.

    The floor keeps a fleet from reconnecting in lock-step without ever
    hammering a server that is starting up.
    """
    step = min(maximum, first * 2.0 ** min(attempt, 32))
    return step / 2 + random.uniform(0, step / 2)


def command_answer(result: Any) -> dict[str, Any]:
    """A command handler's return value as the kiosk's ack (contract §5).

    None -> success; a bool -> success flag; a str -> success with message; a
    dict with ``success`` -> as given (known keys only); another dict ->
    success with it as ``response_data``.
    """
    if result is None:
        return {"success": True}
    if isinstance(result, bool):
        return {"success": result}
    if isinstance(result, str):
        return {"success": True, "message": result}
    if isinstance(result, Mapping):
        if "success" in result:
            answer = {k: result[k] for k in ANSWER_KEYS if k in result}
            answer["success"] = bool(answer["success"])
            return answer
        return {"success": True, "response_data": dict(result)}
    raise TypeError(
        f"a command handler returned {type(result).__name__}: return None/bool/str/dict"
    )


def put_optional(target: dict[str, Any], **optional: Any) -> None:
    """Set each given (not None) value; mappings copied."""
    for key, value in optional.items():
        if value is not None:
            target[key] = dict(value) if isinstance(value, Mapping) else value
