"""Named loggers, one per concern, all under ``lockerbus.``."""

from __future__ import annotations

import logging

server_logger = logging.getLogger("lockerbus.server")
access_logger = logging.getLogger("lockerbus.access")
store_logger = logging.getLogger("lockerbus.store")
command_logger = logging.getLogger("lockerbus.commands")
app_logger = logging.getLogger("lockerbus.app")


def configure(level: str) -> None:
    """Plain one-line records on stderr at ``level``."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("lockerbus").setLevel(level)
