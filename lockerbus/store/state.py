"""The durable state (contract §11): what an event changes, and when it is refused.

Every store keeps each locker's latest state and the help requests not
resolved as *state*, beside the history, updated in the same atomic step as
the append of the event that changes them (memory: the same synchronous
step; SQLite: the same transaction; Redis: the same Lua script).  State never
expires with history.  This module is the pure part every backend shares:

* :func:`change_of` says what an event changes (a :class:`StateChange`);
* :func:`refusal` decides whether it is refused (help consistency), given
  the current status of the help request it names;
* :func:`merged` is the record an entry holds after it.

A record is a JSON object; the store adds ``seq`` (the seq of the event that
last changed it) when the append assigns one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from ..errors import ConflictError
from ..events import HELP_NS, LOCKERS_NS, Event
from .base import EventStore

#: The two kinds of state, and the namespace whose position each reflects.
StateKind = Literal["lockers", "help"]
STATE_NAMESPACES: Final[dict[str, str]] = {"lockers": LOCKERS_NS, "help": HELP_NS}

#: help_requested fields carried into the open-requests view
HELP_FIELDS: Final = (
    "id",
    "kiosk_id",
    "locker_no",
    "category",
    "note",
    "photo_url",
    "status",
    "created_at",
    "priority",
    "user_contact",
)
RESOLVED: Final = "resolved"

ChangeKind = Literal["locker", "help_new", "help_update"]


@dataclass(slots=True)  # not frozen: one is built per append, and frozen init is slow
class StateChange:
    """What one event does to the state.

    ``kind``: ``locker`` sets a locker's entry; ``help_new`` opens a help
    request (refused while one with its id is open); ``help_update`` moves one
    (refused unless it is open with status ``expected``).  ``key`` names the
    entry (``kioskId\\nlockerId``, or the help id as a string); ``record`` is
    what the event writes into it; ``status`` is the help status it leaves
    (``resolved`` removes the entry).
    """

    kind: ChangeKind
    key: str
    record: dict[str, Any]
    status: str = ""
    expected: str = ""

    @property
    def state(self) -> StateKind:
        return "lockers" if self.kind == "locker" else "help"

    @property
    def removes(self) -> bool:
        """The entry is gone after it (a help request resolved)."""
        return self.kind != "locker" and self.status == RESOLVED


def change_of(event: Event) -> StateChange | None:
    """What ``event`` changes in the state; None for events that change none."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    kind = event.get("type")
    if kind == "locker_state_changed":
        record = {
            "lockerId": data["lockerId"],
            "kioskId": data["kioskId"],
            "state": data["newState"],
            "timestamp": event["timestamp"],
        }
        return StateChange("locker", f"{data['kioskId']}\n{data['lockerId']}", record)
    if kind == "help_requested":
        record = {name: data[name] for name in HELP_FIELDS if name in data}
        record["timestamp"] = event["timestamp"]
        return StateChange("help_new", str(data["id"]), record, status=str(data["status"]))
    if kind == "help_status_updated":
        record = {"status": data["new_status"], "updated_at": data["updated_at"]}
        if "agent_id" in data:
            record["agent_id"] = data["agent_id"]
        record["timestamp"] = event["timestamp"]
        return StateChange(
            "help_update",
            str(data["id"]),
            record,
            status=str(data["new_status"]),
            expected=str(data["old_status"]),
        )
    return None


def refusal(change: StateChange, current_status: str | None) -> ConflictError | None:
    """Why ``change`` is refused given the current status of its help request (None:
    not open), or None when it may be appended (contract §11)."""
    if change.kind == "help_new" and current_status is not None:
        return ConflictError(
            f"help request {change.key} is already open (status {current_status})",
            fields={"data.id": [f"help request {change.key} is not resolved"]},
        )
    if change.kind == "help_update" and current_status is None:
        return ConflictError(
            f"help request {change.key} is not open (unknown or resolved)",
            fields={"data.id": [f"no open help request {change.key}"]},
        )
    if change.kind == "help_update" and current_status != change.expected:
        return ConflictError(
            f"help request {change.key} is {current_status}, not {change.expected}",
            fields={"data.old_status": [f"the current status is {current_status}"]},
        )
    return None


def merged(current: dict[str, Any] | None, change: StateChange, seq: int) -> dict[str, Any]:
    """The entry after ``change`` (numbered ``seq``); a help update keeps the
    request's other fields.  ``change.record`` may become the entry itself."""
    if change.kind == "help_update" and current is not None:
        return {**current, **change.record, "seq": seq}
    record = change.record
    record["seq"] = seq
    return record


def sort_entries(kind: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lockers by (kioskId, lockerId), help requests by id: the order of the routes."""
    if kind == "lockers":
        return sorted(entries, key=lambda e: (str(e.get("kioskId")), str(e.get("lockerId"))))
    return sorted(entries, key=lambda e: int(e.get("id", 0)))


class StateTable:
    """The state held in process memory (the memory store's): entries by kind and key."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, dict[str, Any]]] = {"lockers": {}, "help": {}}

    def status(self, change: StateChange) -> str | None:
        """The current status of the help request ``change`` names (None: not open)."""
        entry = self.entries["help"].get(change.key)
        return None if entry is None else str(entry.get("status"))

    def check(self, change: StateChange) -> None:
        """Raise ConflictError when ``change`` is refused."""
        if change.kind == "locker":
            return
        error = refusal(change, self.status(change))
        if error is not None:
            raise error

    def fold(self, event: Event) -> None:
        """Apply a stored event without checks (rebuilding from history): an update of
        a request not held (its opening expired) is skipped."""
        change = change_of(event)
        if change is None:
            return
        if change.kind == "help_update" and self.status(change) is None:
            return
        self.apply(change, int(event["seq"]))

    def apply(self, change: StateChange, seq: int) -> None:
        """Write ``change`` (already checked) as of ``seq``."""
        table = self.entries[change.state]
        if change.removes:
            table.pop(change.key, None)
        else:
            table[change.key] = merged(table.get(change.key), change, seq)

    def listed(self, kind: str) -> list[dict[str, Any]]:
        """Copies of the entries of ``kind``, in the routes' order."""
        return sort_entries(kind, [dict(entry) for entry in self.entries[kind].values()])


async def fold_history(store: EventStore, page: int = 1000) -> tuple[StateTable, dict[str, int]]:
    """The state the held history implies, and the namespace positions it reflects
    (for ``rebuild_state``: after a restore, or for a store from before the state)."""
    table = StateTable()
    positions: dict[str, int] = {}
    for kind, namespace in STATE_NAMESPACES.items():
        after = 0
        while True:
            result = await store.page(namespace, after_seq=after, limit=page)
            for event in result.events:
                table.fold(event)
            if not result.has_more or not result.events:
                positions[kind] = result.last_seq
                break
            after = result.events[-1]["seq"]
    return table, positions
