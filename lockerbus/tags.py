"""Tags and source of an event (contract §10), derived once when it is published.

Every read path (live deliveries, replay, gap-fill, HTTP) decides who may see
an event from its ``tags`` alone, so they are computed here, once, and stored
in the envelope; a recipient check is then a few dictionary look-ups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .events import Event

SERVER_SOURCE: Final = {"role": "server"}

Tags = dict[str, str]


def source(sub: str | None, role: str | None) -> dict[str, str]:
    """``{sub, role}`` of a publisher; ``{role: "server"}`` when there is none."""
    if sub is None or role is None:
        return dict(SERVER_SOURCE)
    return {"sub": sub, "role": role}


def derive_tags(
    event_type: str,
    data: Mapping[str, Any],
    publisher: Mapping[str, str],
    *,
    help_kiosk: str | None = None,
) -> Tags:
    """The tags of an event of ``event_type`` with validated ``data``.

    ``publisher`` is the event's ``source``; ``help_kiosk`` is the kiosk of the
    help request a ``help_status_updated`` is about (None when unknown).
    """
    tags: Tags = {}
    if event_type == "locker_state_changed":
        tags["kiosk"] = data["kioskId"]
        tags["locker"] = data["lockerId"]
        tags["state"] = data["newState"]
    elif event_type == "help_requested":
        tags["kiosk"] = data["kiosk_id"]
        tags["help"] = str(data["id"])
        tags["status"] = data["status"]
        tags["priority"] = data["priority"]
        tags["category"] = data["category"]
    elif event_type == "help_status_updated":
        if help_kiosk is not None:
            tags["kiosk"] = help_kiosk
        tags["help"] = str(data["id"])
        tags["status"] = data["new_status"]
    elif event_type == "command_applied":
        command = data["command"]
        tags.update(command_tags(command))
        tags["status"] = "success" if data["result"]["success"] else "failure"
    elif event_type == "system_status":
        tags["component"] = data["component"]
        tags["status"] = data["status"]
        kiosk = _status_kiosk(data, publisher)
        if kiosk is not None:
            tags["kiosk"] = kiosk
    elif event_type in ("connection", "disconnection") and "userId" in data:
        tags["principal"] = data["userId"]
    return tags


def command_tags(command: Mapping[str, Any]) -> Tags:
    """The tags a command's ``command_applied`` will carry, but for ``status``."""
    tags: Tags = {}
    if isinstance(command.get("kioskId"), str):
        tags["kiosk"] = command["kioskId"]
    if isinstance(command.get("lockerId"), str):
        tags["locker"] = command["lockerId"]
    tags["command"] = command["type"]
    return tags


def _status_kiosk(data: Mapping[str, Any], publisher: Mapping[str, str]) -> str | None:
    if publisher.get("role") == "kiosk":
        return publisher.get("sub")
    if publisher.get("role") == "server" and data["component"] == "kiosk":
        # the server's own kiosk online/offline events name it in details (§11)
        kiosk = (data.get("details") or {}).get("kioskId")
        return kiosk if isinstance(kiosk, str) else None
    return None


def tag_event(
    event: Event, publisher: Mapping[str, str], *, help_kiosk: str | None = None
) -> Event:
    """Put ``tags`` and ``source`` into a new envelope (before it is stored)."""
    event["tags"] = derive_tags(event["type"], event["data"], publisher, help_kiosk=help_kiosk)
    event["source"] = dict(publisher)
    return event


def tags_of(event: Mapping[str, Any]) -> Mapping[str, str]:
    """An envelope's tags; an event stored before tags existed has none."""
    tags = event.get("tags")
    return tags if isinstance(tags, Mapping) else {}
