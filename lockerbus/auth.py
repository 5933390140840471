"""Tokens and roles: who may connect, publish, subscribe and command (contract §2)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from .errors import BadRequestError, ForbiddenError, UnauthorizedError
from .events import KIOSK_ROOM_PREFIX, NAMESPACE_ROOMS, ROUTES

ROLES: Final = ("kiosk", "panel", "gateway", "admin")
ALGORITHM: Final = "HS256"
SERVER_ONLY_TYPES: Final = frozenset({"connection", "disconnection"})
COMMAND_ROLES: Final = frozenset({"panel", "gateway", "admin"})
STATS_ROLES: Final = frozenset({"panel", "gateway", "admin"})
ROOM_NAMING_ROLES: Final = frozenset({"gateway", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated party behind a connection or request."""

    sub: str
    role: str


def issue_token(secret: str, role: str, sub: str, ttl_seconds: float = 3600) -> str:
    """A signed HS256 token for ``role``/``sub`` that expires in ``ttl_seconds``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not sub:
        raise ValueError("sub must not be empty")
    claims = {"sub": sub, "role": role, "exp": int(time.time() + ttl_seconds)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: Any) -> Principal:
    """The principal of a valid token; :class:`UnauthorizedError` for anything else."""
    if not isinstance(token, str) or not token:
        raise UnauthorizedError("a token is required (auth.token or Authorization: Bearer)")
    if len(token) > 8192:
        raise UnauthorizedError("token is too long")
    if not token.isascii():
        # a JWT is ASCII; PyJWT would fail on a lone surrogate with a UnicodeEncodeError
        raise UnauthorizedError("token is invalid: not a JWT")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role"]}
        )
    except jwt.ExpiredSignatureError:
        raise UnauthorizedError("token has expired") from None
    except jwt.InvalidSignatureError:
        raise UnauthorizedError("token signature is invalid") from None
    except jwt.InvalidTokenError as exc:
        raise UnauthorizedError(f"token is invalid: {exc}") from None
    role, sub = claims.get("role"), claims.get("sub")
    if role not in ROLES:
        raise UnauthorizedError(f"token role must be one of {', '.join(ROLES)}")
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedError("token sub must be a non-empty string")
    return Principal(sub=sub, role=role)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <jwt>`` header, if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authorize_publish(principal: Principal, event_type: str, data: Any, room: str | None) -> None:
    """Raise :class:`ForbiddenError` unless ``principal`` may publish this event."""
    role = principal.role
    if event_type in SERVER_ONLY_TYPES:
        raise ForbiddenError(f"{event_type} events are published by the server only")
    if room is not None and role not in ROOM_NAMING_ROLES:
        raise ForbiddenError(f"role {role} may not name a room")
    if role in ("gateway", "admin"):
        return
    if role == "kiosk":
        if event_type == "locker_state_changed":
            _own_kiosk(principal, data, "kioskId")
            return
        if event_type == "help_requested":
            _own_kiosk(principal, data, "kiosk_id")
            return
        if event_type == "system_status":
            if isinstance(data, Mapping) and data.get("component") != "kiosk":
                raise ForbiddenError("a kiosk may publish system_status for component kiosk only")
            return
    if role == "panel" and event_type == "help_status_updated":
        return
    raise ForbiddenError(f"role {role} may not publish {event_type}")


def _own_kiosk(principal: Principal, data: Any, field: str) -> None:
    # any Mapping: validation takes every Mapping, so ownership must be checked on all
    if isinstance(data, Mapping) and field in data and data[field] != principal.sub:
        raise ForbiddenError(f"a kiosk may publish for its own kiosk id only (data.{field})")


def authorize_command(principal: Principal) -> None:
    """Raise :class:`ForbiddenError` unless ``principal`` may issue commands."""
    if principal.role not in COMMAND_ROLES:
        raise ForbiddenError(f"role {principal.role} may not issue commands")


def check_publish_room(event_type: str, room: Any) -> str | None:
    """Validate a publisher-named room for the type's namespace (None: the default room)."""
    if room is None:
        return None
    if not isinstance(room, str) or not room or len(room) > 256:
        raise BadRequestError("room must be a non-empty string of at most 256 characters")
    namespace = ROUTES[event_type]
    if room == NAMESPACE_ROOMS[namespace]:
        return room
    if room.startswith(KIOSK_ROOM_PREFIX) and len(room) > len(KIOSK_ROOM_PREFIX):
        return room
    raise BadRequestError(f"unknown room {room!r} for {namespace}")


def check_subscribe_room(namespace: str, room: Any) -> str:
    """The room a client may join in ``namespace``; raises for others (contract §2)."""
    if not isinstance(room, str) or not room:
        raise BadRequestError("room must be a non-empty string")
    if room == NAMESPACE_ROOMS.get(namespace):
        return room
    if room.startswith(KIOSK_ROOM_PREFIX):
        raise ForbiddenError("kiosk rooms are assigned by the server")
    raise BadRequestError(f"unknown room {room[:64]!r} in {namespace}")
