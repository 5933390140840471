"""Valid event data, written from the seed document, and hypothesis strategies.

SEED is the seed's "Event Types" section transcribed by hand (not read from
lockerbus.events), so the tests compare the schemas against the design rather
than against themselves.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

LOCKER_STATES = ("closed", "open", "reserved", "maintenance", "error")
HELP_CATEGORIES = ("access_issue", "hardware_problem", "payment_issue", "other")
HELP_STATUSES = ("open", "assigned", "resolved")
PRIORITIES = ("low", "medium", "high", "urgent")
COMMAND_TYPES = ("open", "close", "reset", "buzzer", "status_check")
COMPONENTS = ("kiosk", "gateway", "panel", "database", "websocket")
COMPONENT_STATUSES = ("online", "offline", "degraded", "maintenance")

# field -> required?, per (nested) schema, as the seed writes them
SEED: dict[str, dict[str, bool]] = {
    "locker_state_changed": {
        "lockerId": True,
        "oldState": True,
        "newState": True,
        "kioskId": True,
        "userId": False,
        "reason": False,
        "metadata": False,
    },
    "help_requested": {
        "id": True,
        "kiosk_id": True,
        "locker_no": False,
        "category": True,
        "note": False,
        "photo_url": False,
        "status": True,
        "created_at": True,
        "priority": True,
        "user_contact": False,
    },
    "help_status_updated": {
        "id": True,
        "old_status": True,
        "new_status": True,
        "agent_id": False,
        "resolution_notes": False,
        "updated_at": True,
    },
    "command_applied": {"command": True, "result": True},
    "command_applied.command": {
        "id": True,
        "type": True,
        "lockerId": False,
        "kioskId": False,
        "parameters": False,
        "issued_by": True,
        "issued_at": True,
    },
    "command_applied.result": {
        "success": True,
        "message": False,
        "timestamp": True,
        "error": False,
        "execution_time_ms": False,
        "response_data": False,
    },
    "system_status": {
        "component": True,
        "status": True,
        "health_score": True,
        "metrics": False,
        "message": False,
        "details": False,
    },
    "system_status.metrics": {
        "cpu_usage": False,
        "memory_usage": False,
        "disk_usage": False,
        "network_latency": False,
        "error_rate": False,
    },
    "connection": {
        "connectionId": True,
        "userId": False,
        "sessionId": False,
        "namespace": True,
        "user_agent": False,
        "ip_address": False,
        "connection_count": True,
    },
}
SEED["disconnection"] = SEED["connection"]

# (type, path inside data, the seed's choices)
ENUMERATIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("locker_state_changed", "oldState", LOCKER_STATES),
    ("locker_state_changed", "newState", LOCKER_STATES),
    ("help_requested", "category", HELP_CATEGORIES),
    ("help_requested", "status", HELP_STATUSES),
    ("help_requested", "priority", PRIORITIES),
    ("help_status_updated", "old_status", HELP_STATUSES),
    ("help_status_updated", "new_status", HELP_STATUSES),
    ("command_applied", "command.type", COMMAND_TYPES),
    ("system_status", "component", COMPONENTS),
    ("system_status", "status", COMPONENT_STATUSES),
]

TYPES = (
    "locker_state_changed",
    "help_requested",
    "help_status_updated",
    "command_applied",
    "system_status",
    "connection",
    "disconnection",
)

_FULL: dict[str, dict[str, Any]] = {
    "locker_state_changed": {
        "lockerId": "locker-1",
        "oldState": "closed",
        "newState": "open",
        "kioskId": "kiosk-1",
        "userId": "user-123",
        "reason": "User opened with RFID",
        "metadata": {"rfid_card": "CARD123", "nested": {"a": [1, 2.5, None, True]}},
    },
    "help_requested": {
        "id": 1,
        "kiosk_id": "kiosk-1",
        "locker_no": 12,
        "category": "access_issue",
        "note": "Cannot open locker",
        "photo_url": "https://example.invalid/p.jpg",
        "status": "open",
        "created_at": "2026-11-26T19:00:00.123Z",
        "priority": "high",
        "user_contact": "+49 170 000000",
    },
    "help_status_updated": {
        "id": 1,
        "old_status": "open",
        "new_status": "assigned",
        "agent_id": "agent-7",
        "resolution_notes": "on the way",
        "updated_at": "2026-11-26T19:05:00+01:00",
    },
    "command_applied": {
        "command": {
            "id": "cmd-123",
            "type": "open",
            "lockerId": "locker-1",
            "kioskId": "kiosk-1",
            "parameters": {"duration_ms": 500},
            "issued_by": "admin-user",
            "issued_at": "2026-11-26T19:00:00Z",
        },
        "result": {
            "success": True,
            "message": "opened",
            "timestamp": "2026-11-26T19:00:00.150Z",
            "error": "",
            "execution_time_ms": 150,
            "response_data": {"door": "open"},
        },
    },
    "system_status": {
        "component": "kiosk",
        "status": "degraded",
        "health_score": 72.5,
        "metrics": {
            "cpu_usage": 55.0,
            "memory_usage": 20,
            "disk_usage": 99.9,
            "network_latency": 12.3,
            "error_rate": 0.01,
        },
        "message": "disk nearly full",
        "details": {"disk": "/dev/sda1"},
    },
    "connection": {
        "connectionId": "conn-1",
        "userId": "panel-1",
        "sessionId": "sess-1",
        "namespace": "/ws/lockers",
        "user_agent": "python-socketio",
        "ip_address": "127.0.0.1",
        "connection_count": 3,
    },
}
_FULL["disconnection"] = {**_FULL["connection"], "connection_count": 2}


def full_data(event_type: str) -> dict[str, Any]:
    """Valid data for ``event_type`` with every optional field set (a fresh copy)."""
    return copy.deepcopy(_FULL[event_type])


def minimal_data(event_type: str) -> dict[str, Any]:
    """Valid data for ``event_type`` with only the required fields (a fresh copy)."""
    data = full_data(event_type)
    for key in [k for k, required in SEED[event_type].items() if not required]:
        del data[key]
    for sub in ("command", "result", "metrics"):
        key = f"{event_type}.{sub}"
        if key in SEED and sub in data:
            for field in [k for k, required in SEED[key].items() if not required]:
                del data[sub][field]
    return data


def get_path(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def del_path(data: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data[part]
    del data[last]


# --------------------------------------------------------------------------
# hypothesis strategies

SAFE_INT = 2**53  # JSON numbers every reader agrees on

ids = st.text(min_size=1, max_size=40)
texts = st.text(max_size=40)
counts = st.integers(min_value=0, max_value=SAFE_INT)
percent = st.integers(min_value=0, max_value=100) | st.floats(
    min_value=0, max_value=100, allow_nan=False
)
non_negative = st.integers(min_value=0, max_value=SAFE_INT) | st.floats(
    min_value=0, max_value=1e12, allow_nan=False
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """ISO-8601 timestamps with a zone, in the spellings clients send."""
    offset = draw(st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59))
    zone = timezone(timedelta(minutes=offset))
    moment = draw(
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1))
    ).replace(tzinfo=zone)
    spec = draw(st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]))
    text = moment.isoformat(timespec=spec)
    if offset == 0 and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    return text


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INT, max_value=SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
free_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=4)


def _optional(draw: st.DrawFn, out: dict[str, Any], **strategies: Any) -> None:
    for key, strategy in strategies.items():
        if draw(st.booleans()):
            out[key] = draw(strategy)


@st.composite
def _distinct_pair(draw: st.DrawFn, choices: tuple[str, ...]) -> tuple[str, str]:
    old = draw(st.sampled_from(choices))
    new = draw(st.sampled_from([c for c in choices if c != old]))
    return old, new


@st.composite
def locker_state_changed(draw: st.DrawFn) -> dict[str, Any]:
    old, new = draw(_distinct_pair(LOCKER_STATES))
    out: dict[str, Any] = {
        "lockerId": draw(ids),
        "oldState": old,
        "newState": new,
        "kioskId": draw(ids),
    }
    _optional(draw, out, userId=ids, reason=texts, metadata=free_objects)
    return out


@st.composite
def help_requested(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": draw(counts),
        "kiosk_id": draw(ids),
        "category": draw(st.sampled_from(HELP_CATEGORIES)),
        "status": draw(st.sampled_from(HELP_STATUSES)),
        "created_at": draw(timestamps()),
        "priority": draw(st.sampled_from(PRIORITIES)),
    }
    _optional(draw, out, locker_no=counts, note=texts, photo_url=texts, user_contact=texts)
    return out


@st.composite
def help_status_updated(draw: st.DrawFn) -> dict[str, Any]:
    old, new = draw(_distinct_pair(HELP_STATUSES))
    out: dict[str, Any] = {
        "id": draw(counts),
        "old_status": old,
        "new_status": new,
        "updated_at": draw(timestamps()),
    }
    _optional(draw, out, agent_id=ids, resolution_notes=texts)
    return out


@st.composite
def command_applied(draw: st.DrawFn) -> dict[str, Any]:
    command: dict[str, Any] = {
        "id": draw(ids),
        "type": draw(st.sampled_from(COMMAND_TYPES)),
        "issued_by": draw(ids),
        "issued_at": draw(timestamps()),
    }
    _optional(draw, command, lockerId=ids, kioskId=ids, parameters=free_objects)
    result: dict[str, Any] = {"success": draw(st.booleans()), "timestamp": draw(timestamps())}
    _optional(
        draw,
        result,
        message=texts,
        error=texts,
        execution_time_ms=non_negative,
        response_data=free_objects,
    )
    return {"command": command, "result": result}


@st.composite
def system_status(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "component": draw(st.sampled_from(COMPONENTS)),
        "status": draw(st.sampled_from(COMPONENT_STATUSES)),
        "health_score": draw(percent),
    }
    if draw(st.booleans()):
        metrics: dict[str, Any] = {}
        _optional(
            draw,
            metrics,
            cpu_usage=percent,
            memory_usage=percent,
            disk_usage=percent,
            network_latency=non_negative,
            error_rate=non_negative,
        )
        out["metrics"] = metrics
    _optional(draw, out, message=texts, details=free_objects)
    return out


@st.composite
def connection(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "connectionId": draw(ids),
        "namespace": draw(st.sampled_from(["/ws/lockers", "/ws/help", "/ws/events"])),
        "connection_count": draw(counts),
    }
    _optional(draw, out, userId=ids, sessionId=ids, user_agent=texts, ip_address=texts)
    return out


DATA_STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "locker_state_changed": locker_state_changed(),
    "help_requested": help_requested(),
    "help_status_updated": help_status_updated(),
    "command_applied": command_applied(),
    "system_status": system_status(),
    "connection": connection(),
    "disconnection": connection(),
}

typed_data = st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), DATA_STRATEGIES[t]))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
