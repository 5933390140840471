"""KioskClient: what a kiosk publishes, typed; commands arrive on /ws/events."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..events import EVENTS_NS, Event
from .core import LockerbusClient
from .options import ClientOptions, put_optional


class KioskClient(LockerbusClient):
    """A kiosk's client: commands on /ws/events, typed helpers for what kiosks publish.

    By default it connects to /ws/events only (commands arrive there; every
    type may be published there) and asks for no replay on its first connect.
    """

    def __init__(
        self,
        url: str,
        token: str | Callable[[], str],
        kiosk_id: str,
        *,
        namespaces: Sequence[str] = (EVENTS_NS,),
        subscribe: bool = False,
        replay: Mapping[str, Any] | None = None,
        options: ClientOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            url,
            token,
            namespaces=namespaces,
            subscribe=subscribe,
            replay={"replay": False} if replay is None else replay,
            options=options,
            **kwargs,
        )
        self.kiosk_id = kiosk_id

    async def publish_locker_state_changed(
        self,
        locker_id: str,
        old_state: str,
        new_state: str,
        *,
        user_id: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish that one of this kiosk's lockers changed state."""
        data: dict[str, Any] = {
            "lockerId": locker_id,
            "oldState": old_state,
            "newState": new_state,
            "kioskId": self.kiosk_id,
        }
        put_optional(data, userId=user_id, reason=reason, metadata=metadata)
        return await self.publish("locker_state_changed", data, wait=wait)

    async def request_help(
        self,
        request_id: int,
        category: str,
        *,
        priority: str = "medium",
        locker_no: int | None = None,
        note: str | None = None,
        photo_url: str | None = None,
        user_contact: str | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish a new, open help request from this kiosk."""
        data: dict[str, Any] = {
            "id": request_id,
            "kiosk_id": self.kiosk_id,
            "category": category,
            "status": "open",
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "priority": priority,
        }
        put_optional(
            data, locker_no=locker_no, note=note, photo_url=photo_url, user_contact=user_contact
        )
        return await self.publish("help_requested", data, wait=wait)

    async def report_status(
        self,
        status: str,
        health_score: float,
        *,
        metrics: Mapping[str, float] | None = None,
        message: str | None = None,
        details: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> Event | None:
        """Publish this kiosk's health (``system_status`` with component ``kiosk``)."""
        data: dict[str, Any] = {
            "component": "kiosk",
            "status": status,
            "health_score": health_score,
        }
        put_optional(data, metrics=metrics, message=message, details=details)
        return await self.publish("system_status", data, wait=wait)
