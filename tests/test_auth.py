"""Tokens and the role table of contract §2."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jwt
import pytest

from lockerbus.auth import (
    ROLES,
    Principal,
    authorize_command,
    authorize_publish,
    bearer_token,
    check_publish_room,
    check_subscribe_room,
    issue_token,
    verify_token,
)
from lockerbus.errors import BadRequestError, ForbiddenError, UnauthorizedError
from tests.eventdata import full_data

SECRET = "a-test-secret-that-is-long-enough-0123456789"
OTHER_SECRET = "another-secret-that-is-long-enough-987654321"


@pytest.mark.parametrize("role", ROLES)
def test_issue_and_verify(role: str) -> None:
    token = issue_token(SECRET, role, "who-1", ttl_seconds=60)
    assert verify_token(SECRET, token) == Principal(sub="who-1", role=role)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "role", "exp"}
    assert time.time() < claims["exp"] <= time.time() + 61


def test_roles_are_the_contracts() -> None:
    assert set(ROLES) == {"kiosk", "panel", "gateway", "admin"}


def test_expired_token() -> None:
    token = issue_token(SECRET, "panel", "p1", ttl_seconds=-10)
    with pytest.raises(UnauthorizedError, match="expired"):
        verify_token(SECRET, token)


def test_bad_signature() -> None:
    token = issue_token(OTHER_SECRET, "admin", "a1")
    with pytest.raises(UnauthorizedError, match="signature"):
        verify_token(SECRET, token)
    head, _payload, signature = issue_token(SECRET, "kiosk", "k1").split(".")
    forged_payload = jwt.encode(
        {"sub": "k1", "role": "admin", "exp": int(time.time()) + 60}, OTHER_SECRET
    ).split(".")[1]
    with pytest.raises(UnauthorizedError):
        verify_token(SECRET, f"{head}.{forged_payload}.{signature}")


def _raw(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def test_unknown_role() -> None:
    token = _raw({"sub": "x", "role": "root", "exp": int(time.time()) + 60})
    with pytest.raises(UnauthorizedError, match="role"):
        verify_token(SECRET, token)
    with pytest.raises(ValueError, match="unknown role"):
        issue_token(SECRET, "root", "x")


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "panel", "exp": int(time.time()) + 60},  # no sub
        {"sub": "p", "exp": int(time.time()) + 60},  # no role
        {"sub": "p", "role": "panel"},  # no exp
        {"sub": "", "role": "panel", "exp": int(time.time()) + 60},
        {"sub": 5, "role": "panel", "exp": int(time.time()) + 60},
        {"sub": "p", "role": ["admin"], "exp": int(time.time()) + 60},
    ],
)
def test_incomplete_claims(claims: dict[str, Any]) -> None:
    with pytest.raises(UnauthorizedError):
        verify_token(SECRET, _raw(claims))


def test_unsigned_and_other_algorithms_are_refused() -> None:
    claims = {"sub": "a", "role": "admin", "exp": int(time.time()) + 60}
    with pytest.raises(UnauthorizedError):
        verify_token(SECRET, jwt.encode(claims, None, algorithm="none"))
    long_secret = "L" * 64  # long enough for HS512: refused for the algorithm alone
    with pytest.raises(UnauthorizedError, match="alg value is not allowed"):
        verify_token(long_secret, _raw(claims, long_secret, algorithm="HS512"))


@pytest.mark.parametrize("token", [None, "", 42, "garbage", "a.b.c", "x" * 9000, b"bytes"])
def test_malformed_tokens(token: Any) -> None:
    with pytest.raises(UnauthorizedError):
        verify_token(SECRET, token)


def test_issue_token_needs_a_sub() -> None:
    with pytest.raises(ValueError, match="sub"):
        issue_token(SECRET, "panel", "")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# --------------------------------------------------------------------------
# who may publish what (contract §2)

KIOSK = Principal("kiosk-1", "kiosk")
PANEL = Principal("panel-1", "panel")
GATEWAY = Principal("gateway-1", "gateway")
ADMIN = Principal("admin", "admin")
EVERYONE = (KIOSK, PANEL, GATEWAY, ADMIN)

PUBLISHABLE = ("locker_state_changed", "help_requested", "help_status_updated")
PUBLISHABLE += ("command_applied", "system_status")

# role -> the types it may publish (with data about itself, no room named)
MAY_PUBLISH = {
    "kiosk": {"locker_state_changed", "help_requested", "system_status"},
    "panel": {"help_status_updated"},
    "gateway": set(PUBLISHABLE),
    "admin": set(PUBLISHABLE),
}


def _own_data(principal: Principal, event_type: str) -> dict[str, Any]:
    data = full_data(event_type)
    if event_type == "locker_state_changed":
        data["kioskId"] = principal.sub
    if event_type == "help_requested":
        data["kiosk_id"] = principal.sub
    if event_type == "system_status":
        data["component"] = "kiosk"
    return data


@pytest.mark.parametrize("principal", EVERYONE, ids=lambda p: p.role)
@pytest.mark.parametrize("event_type", PUBLISHABLE)
def test_publish_table(principal: Principal, event_type: str) -> None:
    data = _own_data(principal, event_type)
    if event_type in MAY_PUBLISH[principal.role]:
        authorize_publish(principal, event_type, data, None)
    else:
        with pytest.raises(ForbiddenError):
            authorize_publish(principal, event_type, data, None)


@pytest.mark.parametrize("principal", EVERYONE, ids=lambda p: p.role)
@pytest.mark.parametrize("event_type", ["connection", "disconnection"])
def test_connection_events_are_the_servers_alone(principal: Principal, event_type: str) -> None:
    with pytest.raises(ForbiddenError):
        authorize_publish(principal, event_type, full_data(event_type), None)


@pytest.mark.parametrize(("event_type", "field"), [("locker_state_changed", "kioskId")])
def test_kiosk_publishes_for_its_own_id_only(event_type: str, field: str) -> None:
    data = full_data(event_type)
    data[field] = "kiosk-2"
    with pytest.raises(ForbiddenError, match="own kiosk id"):
        authorize_publish(KIOSK, event_type, data, None)


def test_kiosk_help_request_for_another_kiosk() -> None:
    data = full_data("help_requested")
    data["kiosk_id"] = "kiosk-2"
    with pytest.raises(ForbiddenError):
        authorize_publish(KIOSK, "help_requested", data, None)
    authorize_publish(GATEWAY, "help_requested", data, None)


@pytest.mark.parametrize("component", ["gateway", "panel", "database", "websocket"])
def test_kiosk_system_status_is_for_component_kiosk(component: str) -> None:
    data = full_data("system_status")
    data["component"] = component
    with pytest.raises(ForbiddenError):
        authorize_publish(KIOSK, "system_status", data, None)
    authorize_publish(ADMIN, "system_status", data, None)


def test_ownership_is_checked_on_any_mapping() -> None:
    data: Mapping[str, Any] = MappingProxyType({**full_data("system_status"), "component": "db"})
    with pytest.raises(ForbiddenError):
        authorize_publish(KIOSK, "system_status", data, None)
    other: Mapping[str, Any] = MappingProxyType(
        {**full_data("locker_state_changed"), "kioskId": "kiosk-2"}
    )
    with pytest.raises(ForbiddenError):
        authorize_publish(KIOSK, "locker_state_changed", other, None)


@pytest.mark.parametrize(
    ("principal", "allowed"), [(KIOSK, False), (PANEL, False), (GATEWAY, True), (ADMIN, True)]
)
def test_only_gateway_and_admin_name_a_room(principal: Principal, allowed: bool) -> None:
    event_type = "help_status_updated" if principal.role == "panel" else "system_status"
    data = _own_data(principal, event_type)
    if allowed:
        authorize_publish(principal, event_type, data, "kiosk:k9")
    else:
        with pytest.raises(ForbiddenError, match="room"):
            authorize_publish(principal, event_type, data, "system_events")


@pytest.mark.parametrize(
    ("principal", "allowed"), [(KIOSK, False), (PANEL, True), (GATEWAY, True), (ADMIN, True)]
)
def test_command_roles(principal: Principal, allowed: bool) -> None:
    if allowed:
        authorize_command(principal)
    else:
        with pytest.raises(ForbiddenError):
            authorize_command(principal)


@pytest.mark.parametrize(
    ("namespace", "room"),
    [
        ("/ws/lockers", "locker_updates"),
        ("/ws/help", "help_requests"),
        ("/ws/events", "system_events"),
    ],
)
def test_subscribe_to_the_namespaces_room(namespace: str, room: str) -> None:
    assert check_subscribe_room(namespace, room) == room


@pytest.mark.parametrize(
    ("namespace", "room", "error"),
    [
        ("/ws/events", "kiosk:kiosk-1", ForbiddenError),
        ("/ws/lockers", "help_requests", BadRequestError),
        ("/ws/lockers", "nowhere", BadRequestError),
        ("/ws/lockers", "", BadRequestError),
        ("/ws/lockers", None, BadRequestError),
        ("/ws/lockers", ["locker_updates"], BadRequestError),
    ],
)
def test_subscribe_refusals(namespace: str, room: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_subscribe_room(namespace, room)


def test_publish_room_checks() -> None:
    assert check_publish_room("system_status", None) is None
    assert check_publish_room("system_status", "system_events") == "system_events"
    assert check_publish_room("command_applied", "kiosk:k1") == "kiosk:k1"
    for bad in ("locker_updates", "kiosk:", "", 5, "x" * 300):
        with pytest.raises(BadRequestError):
            check_publish_room("system_status", bad)


def test_verifier_caches_until_exp_and_accepts_previous_secrets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lockerbus.auth import TokenVerifier

    now = [time.time()]
    verifier = TokenVerifier(SECRET, [OTHER_SECRET], clock=lambda: now[0])
    calls = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    old = issue_token(OTHER_SECRET, "kiosk", "k1", ttl_seconds=60)
    assert verifier.verify(old) == Principal("k1", "kiosk")
    assert calls == [SECRET, OTHER_SECRET]  # current first, then the previous one
    assert verifier.verify(old).sub == "k1"
    assert len(calls) == 2  # served from the cache
    now[0] += 61  # past its exp: the cache forgets it and verifies again
    verifier.verify(old)
    assert len(calls) == 4
    with pytest.raises(UnauthorizedError, match="signature"):
        verifier.verify(issue_token("yet-another-secret-long-enough-0000000000", "panel", "p"))
