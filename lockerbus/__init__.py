"""lockerbus: a validated, persistent, replaying real-time event server for smart-locker fleets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BadRequestError,
    ConfigError,
    EventValidationError,
    ForbiddenError,
    LockerbusError,
    PayloadTooLargeError,
    RateLimitedError,
    SchemaVersionError,
    StoreUnavailableError,
    UnauthorizedError,
    UnknownEventTypeError,
)
from .version import __version__

if TYPE_CHECKING:
    from .events import Event
    from .service import EventService


def __getattr__(name: str) -> Any:
    # Lazily, so that importing lockerbus.errors or lockerbus.events does not
    # pull in the service layer above them (tests/test_imports.py).
    if name == "Event":
        from . import events

        return events.Event
    if name == "EventService":
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BadRequestError",
    "ConfigError",
    "Event",
    "EventService",
    "EventValidationError",
    "ForbiddenError",
    "LockerbusError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "SchemaVersionError",
    "StoreUnavailableError",
    "UnauthorizedError",
    "UnknownEventTypeError",
    "__version__",
]
