"""Named loggers, one per concern, all under ``lockerbus.``; text or JSON lines on stderr."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

import orjson

server_logger = logging.getLogger("lockerbus.server")
access_logger = logging.getLogger("lockerbus.access")
store_logger = logging.getLogger("lockerbus.store")
command_logger = logging.getLogger("lockerbus.commands")
app_logger = logging.getLogger("lockerbus.app")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
# attributes every LogRecord has; anything else was passed in ``extra=`` (an event's fields)
_STANDARD: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, log_format: str = "text") -> None:
    """Records on stderr at ``level``: one plain line each, or one JSON object (``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("lockerbus").setLevel(level)
