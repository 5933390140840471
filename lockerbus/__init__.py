"""lockerbus: a validated, persistent, replaying real-time event server for smart-locker fleets."""

from __future__ import annotations

__version__ = "0.1.0"

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
from .service import Event, EventService

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
