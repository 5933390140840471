"""The seed's in-process API: ``emit_*`` with the arguments of ``EventService.create_*``.

A mixin of :class:`lockerbus.bus.EventBus`, which supplies ``service`` and ``emit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .events import Event
from .service import EventService


class SeedApi:
    """Publish as the server, as the seed's event service did."""

    service: EventService

    async def emit(self, event: Event) -> Event:
        """Store and broadcast an event the server built (the bus implements it)."""
        raise NotImplementedError

    async def emit_locker_state_changed(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a locker state change as the server."""
        return await self.emit(self.service.create_locker_state_changed_event(*args, **kwargs))

    async def emit_help_requested(
        self, data: Mapping[str, Any], priority: str | None = None
    ) -> Event:
        """Publish a help request as the server; ``priority`` apart, as in the seed."""
        return await self.emit(self.service.create_help_requested_event(data, priority))

    async def emit_help_status_updated(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a help request's status change as the server."""
        return await self.emit(self.service.create_help_status_updated_event(*args, **kwargs))

    async def emit_command_applied(
        self, command: Mapping[str, Any], result: Mapping[str, Any]
    ) -> Event:
        """Publish the record of a command and its result as the server."""
        return await self.emit(self.service.create_command_applied_event(command, result))

    async def emit_system_status(self, *args: Any, **kwargs: Any) -> Event:
        """Publish a component's health as the server."""
        return await self.emit(self.service.create_system_status_event(*args, **kwargs))
