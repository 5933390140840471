"""Typed errors with the stable wire codes of the contract.

Every error a client can see derives from :class:`LockerbusError`; the wire
form (``{code, message, fields?}``) and the HTTP status are built here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LockerbusError(Exception):
    """Root of every lockerbus error; ``code`` is the contract's wire code."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, fields: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, list[str]] | None = dict(fields) if fields else None

    def to_wire(self) -> dict[str, Any]:
        """The ``{code, message, fields?}`` body used over Socket.IO and HTTP."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body


class EventValidationError(LockerbusError):
    """An event or payload broke its schema; ``fields`` maps paths to messages."""

    code = "validation_error"
    http_status = 422

    def __init__(self, fields: Mapping[str, list[str]], message: str | None = None) -> None:
        if message is None:
            shown = "; ".join(f"{path}: {' '.join(msgs)}" for path, msgs in sorted(fields.items()))
            message = f"invalid event: {shown}" if shown else "invalid event"
        super().__init__(message, fields=fields)


class SchemaVersionError(LockerbusError):
    """The event's schema major version is not one this server reads."""

    code = "unsupported_version"
    http_status = 422


class UnknownEventTypeError(LockerbusError):
    """The event type is not one of the contract's types."""

    code = "unknown_type"
    http_status = 422


class BadRequestError(LockerbusError):
    """The request is malformed (not an object, bad parameter, unknown room)."""

    code = "bad_request"
    http_status = 400


class UnauthorizedError(LockerbusError):
    """No token, or a token that is forged, expired or malformed."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(LockerbusError):
    """A valid principal asked for something its role may not do."""

    code = "forbidden"
    http_status = 403


class PayloadTooLargeError(LockerbusError):
    """The event's data is larger than ``max_event_bytes``."""

    code = "payload_too_large"
    http_status = 413


class ConflictError(LockerbusError):
    """The request contradicts what is stored: an event id held already by an event
    with other content or another scope (§12), or a help request opened twice or
    moved from a status it is not in (§11)."""

    code = "conflict"
    http_status = 409


class RateLimitedError(LockerbusError):
    """The connection or principal publishes faster than it may."""

    code = "rate_limited"
    http_status = 429


class StoreUnavailableError(LockerbusError):
    """The event store could not take or give events; nothing was half-written."""

    code = "store_unavailable"
    http_status = 503


class ConfigError(LockerbusError):
    """A setting is invalid; ``key`` names it so start-up can say which."""

    code = "config_error"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error dict into ``{"data.field": [msgs]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # a nested schema's own error ("Invalid input type.") is about the field itself
            if key == "_schema" and prefix:
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            for sub_path, msgs in flatten_messages(value, path).items():
                out.setdefault(sub_path, []).extend(msgs)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "_schema"] = list(messages)
    elif isinstance(messages, list):
        for item in messages:
            for sub_path, msgs in flatten_messages(item, prefix).items():
                out.setdefault(sub_path, []).extend(msgs)
    else:
        out[prefix or "_schema"] = [str(messages)]
    return out
