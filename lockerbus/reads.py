"""Scoped reads over HTTP: history pages and current state (contract §10).

``GET /api/events`` pages through a namespace's history keeping only the
events the caller's scope and its own ``?filter=`` match; ``limit`` and
``has_more`` count matching events.  ``/api/lockers`` and ``/api/help`` keep
the entries whose tags (as their events would carry them) the scope matches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from .auth import Principal
from .filters import Filter
from .store import EventStore
from .tags import tags_of

#: events read from the store per step while looking for matching ones
SCAN_PAGE: Final = 1000


async def read_events(
    store: EventStore,
    principal: Principal,
    namespace: str,
    *,
    after_seq: int,
    since: datetime | None,
    limit: int,
    client_filter: Filter | None = None,
) -> dict[str, Any]:
    """``{events, last_seq, epoch, has_more}``: the caller's matching events, oldest first.

    ``last_seq`` is where the page stops: the seq of the last event returned
    when there is more, else the namespace's position the read covered.
    """
    view = principal.view(client_filter)
    if view.everything and principal.role != "kiosk":
        page = await store.page(namespace, after_seq=after_seq, since=since, limit=limit)
        return _body(page.events, page.last_seq, page.epoch, page.has_more)
    matched: list[dict[str, Any]] = []
    cursor = after_seq
    while True:
        page = await store.page(namespace, after_seq=cursor, since=since, limit=SCAN_PAGE)
        for event in page.events:
            if not (principal.reads(event) and view.matches(tags_of(event))):
                continue
            if len(matched) == limit:
                return _body(matched, matched[-1]["seq"], page.epoch, True)
            matched.append(event)
        if not page.has_more or not page.events:
            return _body(matched, page.last_seq, page.epoch, False)
        cursor = page.events[-1]["seq"]


def _body(events: list[Any], last_seq: int, epoch: str, has_more: bool) -> dict[str, Any]:
    return {"events": events, "last_seq": last_seq, "epoch": epoch, "has_more": has_more}


def locker_tags(locker: Mapping[str, Any]) -> dict[str, str]:
    """The tags of the ``locker_state_changed`` an ``/api/lockers`` entry reflects."""
    return {"kiosk": locker["kioskId"], "locker": locker["lockerId"], "state": locker["state"]}


def help_tags(request: Mapping[str, Any]) -> dict[str, str]:
    """The tags an open help request's ``help_requested`` carries, with its current status."""
    tags = {"kiosk": request["kiosk_id"], "help": str(request["id"])}
    for name in ("status", "priority", "category"):
        if isinstance(request.get(name), str):
            tags[name] = request[name]
    return tags


def scoped_lockers(snapshot: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """An ``/api/lockers`` answer with only the lockers the scope matches."""
    return _scoped(snapshot, "lockers", locker_tags, principal)


def scoped_help(snapshot: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """An ``/api/help`` answer with only the requests the scope matches."""
    return _scoped(snapshot, "help_requests", help_tags, principal)


def _scoped(
    snapshot: dict[str, Any],
    key: str,
    tags: Callable[[Mapping[str, Any]], dict[str, str]],
    principal: Principal,
) -> dict[str, Any]:
    """``snapshot`` with only the ``key`` entries whose tags the scope matches."""
    reach = principal.reach
    if reach.everything:
        return snapshot
    return {**snapshot, key: [entry for entry in snapshot[key] if reach.matches(tags(entry))]}


def scoped_kiosks(kiosks: list[dict[str, Any]], principal: Principal) -> list[dict[str, Any]]:
    """The ``/api/kiosks`` entries whose ``kiosk`` tag the scope matches."""
    reach = principal.reach
    if reach.everything:
        return kiosks
    return [entry for entry in kiosks if reach.matches({"kiosk": entry["kioskId"]})]
