"""``lockerbus config``: the effective settings, where each came from, secrets redacted."""

from __future__ import annotations

import json
from typing import Any, Final

from .config import SETTING_NAMES, LoadedSettings, redact_url

SECRET_SETTINGS: Final = frozenset({"secret", "admin_password"})
URL_SETTINGS: Final = frozenset({"store", "message_queue"})
REDACTED: Final = "<redacted>"


def redact(key: str, value: Any) -> Any:
    """``value`` as safe to print: secrets hidden, passwords in URLs hidden."""
    if value is None:
        return None
    if key in SECRET_SETTINGS:
        return REDACTED
    if key in URL_SETTINGS and isinstance(value, str):
        return redact_url(value, REDACTED)
    return value


def report_lines(loaded: LoadedSettings) -> list[str]:
    """``[lockerbus]`` then one ``name = value  # source`` line per setting (TOML).

    The source is ``flag``, ``env``, ``file`` or ``default``; an unset optional
    setting is a comment.
    """
    lines = ["[lockerbus]"]
    for key in SETTING_NAMES:
        value = redact(key, getattr(loaded.settings, key))
        source = loaded.sources.get(key, "default")
        if value is None:
            lines.append(f"# {key} is unset  # {source}")
        else:
            lines.append(f"{key} = {_toml(value)}  # {source}")
    return lines


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)
