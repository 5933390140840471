"""Tokens and roles: who may connect, publish, subscribe and command (contract §2)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cachetools import TLRUCache

from .config import ROLE_NAMES
from .errors import BadRequestError, ForbiddenError, UnauthorizedError
from .events import KIOSK_ROOM_PREFIX, NAMESPACE_ROOMS, ROUTES, Event
from .filters import EVERYTHING, Filter, parse_filter
from .tags import command_tags, tags_of

ROLES: Final = ROLE_NAMES
ALGORITHM: Final = "HS256"
SERVER_ONLY_TYPES: Final = frozenset({"connection", "disconnection"})
COMMAND_ROLES: Final = frozenset({"panel", "gateway", "admin"})
STATS_ROLES: Final = frozenset({"panel", "gateway", "admin"})
ROOM_NAMING_ROLES: Final = frozenset({"gateway", "admin"})
MAX_TOKEN_CHARS: Final = 8192
#: verified tokens kept (each until it expires), so a reconnect storm costs no HMAC
TOKEN_CACHE_SIZE: Final = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated party behind a connection or request.

    ``scope`` is the token's ``scope`` claim (None: unscoped); ``reach`` is
    the scope the server enforces: the claim, narrowed for a kiosk to its own
    kiosk (contract §10).
    """

    sub: str
    role: str
    scope: Filter | None = None
    reach: Filter = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        reach = self.scope or EVERYTHING
        if self.role == "kiosk":
            reach = reach.narrow(Filter({"kiosk": frozenset((self.sub,))}))
        object.__setattr__(self, "reach", reach)

    def reads(self, event: Event) -> bool:
        """Whether this principal may receive ``event`` on any read path."""
        if self.role == "kiosk" and event["type"] in SERVER_ONLY_TYPES:
            return False
        return self.reach.matches(tags_of(event))

    def view(self, client_filter: Filter | None) -> Filter:
        """The scope narrowed by a client's own filter: what a connection receives."""
        return self.reach.narrow(client_filter)

    def may_publish(self, event: Event) -> bool:
        """Whether a tagged event lies inside this principal's scope."""
        return self.reach.matches(tags_of(event))

    def may_command(self, command: Mapping[str, Any]) -> bool:
        """Whether a command's ``command_applied`` could lie inside the scope."""
        tags = command_tags(command)
        return any(
            self.reach.matches({**tags, "status": status}) for status in ("success", "failure")
        )


def issue_token(
    secret: str,
    role: str,
    sub: str,
    ttl_seconds: float = 3600,
    *,
    scope: Filter | None = None,
) -> str:
    """A signed HS256 token for ``role``/``sub`` that expires in ``ttl_seconds``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not sub:
        raise ValueError("sub must not be empty")
    claims: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time() + ttl_seconds)}
    if scope is not None:
        claims["scope"] = scope.to_json()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies tokens against the current and previous secrets, caching the result.

    A token signed with any of the secrets is accepted (contract §2: a secret
    is rotated without re-issuing every token at once).  Verified tokens are
    cached by their text until they expire, at most ``cache_size`` of them.
    """

    def __init__(
        self,
        secret: str,
        previous: Sequence[str] = (),
        *,
        cache_size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets: tuple[str, ...] = (secret, *previous)
        self._clock = clock
        self._cache: TLRUCache[str, tuple[Principal, float]] = TLRUCache(
            maxsize=cache_size, ttu=lambda _token, value, _now: value[1], timer=clock
        )

    def verify(self, token: Any) -> Principal:
        """The principal of a valid token; :class:`UnauthorizedError` for anything else."""
        if isinstance(token, str):
            cached = self._cache.get(token)
            if cached is not None:
                return cached[0]
        principal, expires = _decode(self.secrets, token)
        if expires > self._clock():
            self._cache[token] = (principal, expires)
        return principal


def verify_token(secret: str, token: Any, previous: Sequence[str] = ()) -> Principal:
    """The principal of a valid token (no cache); :class:`UnauthorizedError` otherwise."""
    return _decode((secret, *previous), token)[0]


def _decode(secrets: Sequence[str], token: Any) -> tuple[Principal, float]:
    if not isinstance(token, str) or not token:
        raise UnauthorizedError("a token is required (auth.token or Authorization: Bearer)")
    if len(token) > MAX_TOKEN_CHARS:
        raise UnauthorizedError("token is too long")
    if not token.isascii():
        # a JWT is ASCII; PyJWT would fail on a lone surrogate with a UnicodeEncodeError
        raise UnauthorizedError("token is invalid: not a JWT")
    claims = _claims(secrets, token)
    role, sub = claims.get("role"), claims.get("sub")
    if role not in ROLES:
        raise UnauthorizedError(f"token role must be one of {', '.join(ROLES)}")
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedError("token sub must be a non-empty string")
    scope = None
    if "scope" in claims:
        try:
            scope = parse_filter(claims["scope"], "token scope")
        except BadRequestError as exc:
            raise UnauthorizedError(exc.message) from None
    return Principal(sub=sub, role=role, scope=scope), float(claims["exp"])


def _claims(secrets: Sequence[str], token: str) -> dict[str, Any]:
    """The claims of a token signed with one of ``secrets`` (current first)."""
    for secret in secrets:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role"]}
            )
        except jwt.InvalidSignatureError:
            continue  # maybe signed with a previous secret
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"token is invalid: {exc}") from None
        return claims
    raise UnauthorizedError("token signature is invalid")


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


def authorize_command(principal: Principal, command: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ForbiddenError` unless ``principal`` may issue ``command``.

    Without ``command`` only the role is checked (before the request is read).
    """
    if principal.role not in COMMAND_ROLES:
        raise ForbiddenError(f"role {principal.role} may not issue commands")
    if command is not None and not principal.may_command(command):
        raise ForbiddenError(f"the command is outside the scope of {principal.sub}")


def authorize_scope(principal: Principal, event: Event) -> None:
    """Raise :class:`ForbiddenError` unless a tagged event lies inside the scope (§10)."""
    if not principal.may_publish(event):
        raise ForbiddenError(f"the event is outside the scope of {principal.sub}")


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
