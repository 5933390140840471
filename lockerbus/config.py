"""Settings, read once: flags > ``LOCKERBUS_*`` environment > TOML file > defaults.

Nothing else in lockerbus reads the environment; the CLI calls
:func:`load_settings` and passes the result down.  Every error names the
setting it is about, so start-up can stop with one clear line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

ENV_PREFIX: Final = "LOCKERBUS_"
CONFIG_ENV: Final = "LOCKERBUS_CONFIG"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The HS256 key's minimum (RFC 7518 §3.2); auth imports it from here.
MIN_SECRET_BYTES: Final = 32
# Store URLs (contract §1); the store package imports these from here.
MEMORY_URL: Final = "memory"
SQLITE_PREFIX: Final = "sqlite:///"
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def redact_url(url: str, mask: str = "<redacted>") -> str:
    """``url`` with its password (a store's or message queue's) replaced by ``mask``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{mask}@{host}"))


def validate_store_url(url: str) -> str:
    """Check a store URL's form; raises :class:`ConfigError` naming ``store``.

    Only the form: opening it is the store's job, and config stays below the store.
    """
    if url == MEMORY_URL:
        return url
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        return url
    if url.startswith(REDIS_SCHEMES):
        return url
    if url.startswith(POSTGRES_SCHEMES) and len(url) > len("postgresql://"):
        return url
    raise ConfigError(
        "store",
        f"{url!r} is not memory, sqlite:///path.db, redis://host:port/db "
        "or postgresql://user:pass@host:port/db",
    )


LOG_FORMATS: Final = ("text", "json")
# Kubernetes injects these for a Service named lockerbus(-anything); they are not settings
_SERVICE_LINK: Final = re.compile(
    r"LOCKERBUS(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)"
)
_SERVICE_URL: Final = re.compile(r"(tcp|udp|sctp)://")

config_logger = logging.getLogger("lockerbus.config")
# the roles of contract §2 (auth.ROLES is this tuple; config stays below auth)
ROLE_NAMES: Final = ("kiosk", "panel", "gateway", "admin")
# the namespaces of contract §3 (events.NAMESPACES is this tuple; config stays below events)
NAMESPACE_NAMES: Final = ("/ws/lockers", "/ws/help", "/ws/events")
# what a per-namespace retention override may set (contract §11)
RETENTION_KEYS: Final = ("max_events", "ttl_hours")
LIMITED_BY_DEFAULT: Final = frozenset({"kiosk", "panel"})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a lockerbus server (contract §1, plus the project's own)."""

    host: str = "127.0.0.1"
    port: int = 8080
    secret: str | None = None
    previous_secrets: tuple[str, ...] = ()
    store: str = "memory"
    message_queue: str | None = None
    max_events: int = 10_000
    ttl_hours: float = 24.0
    #: per-namespace overrides of max_events/ttl_hours: {namespace: {key: value}}
    retention: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cleanup_interval_minutes: float = 30.0
    replay_buffer_size: int = 1000
    replay_window_minutes: float = 60.0
    max_event_bytes: int = 65_536
    command_timeout_seconds: float = 10.0
    #: how long a kiosk with no connection left stays online before "offline" (contract §11)
    kiosk_offline_grace_seconds: float = 30.0
    cors_origins: tuple[str, ...] | None = None
    board_enabled: bool = True
    websocket_compression: bool = False
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    #: per-role overrides; None: kiosk and panel take the two above, gateway and admin
    #: are not limited (contract §2)
    rate_limit_kiosk_per_second: float | None = None
    rate_limit_kiosk_burst: int | None = None
    rate_limit_panel_per_second: float | None = None
    rate_limit_panel_burst: int | None = None
    rate_limit_gateway_per_second: float | None = None
    rate_limit_gateway_burst: int | None = None
    rate_limit_admin_per_second: float | None = None
    rate_limit_admin_burst: int | None = None
    max_connections_per_principal: int = 100
    max_send_queue: int = 5000
    max_send_buffer_bytes: int = 4 << 20
    log_level: str = "INFO"
    admin_ui: bool = False
    admin_username: str | None = None
    admin_password: str | None = None
    shutdown_grace_seconds: float = 5.0
    store_wait_seconds: float = 0.0
    log_format: str = "text"
    access_log: bool = False
    metrics_port: int | None = None

    @property
    def dev_mode(self) -> bool:
        """No secret configured: the CLI generates one and prints tokens."""
        return self.secret is None

    @property
    def ttl_seconds(self) -> float:
        return self.ttl_hours * 3600

    def namespace_retention(self, namespace: str) -> tuple[int, float]:
        """``(max_events, ttl_seconds)`` of ``namespace``: its override, else the defaults."""
        override = self.retention.get(namespace, {})
        max_events = int(override.get("max_events", self.max_events))
        return max_events, float(override.get("ttl_hours", self.ttl_hours)) * 3600

    def role_rate_limits(self) -> dict[str, tuple[float, int] | None]:
        """Publish rate and burst per role; None where a role is not limited."""
        limits: dict[str, tuple[float, int] | None] = {}
        for role in ROLE_NAMES:
            rate = getattr(self, f"rate_limit_{role}_per_second")
            burst = getattr(self, f"rate_limit_{role}_burst")
            if rate is None and burst is None and role in LIMITED_BY_DEFAULT:
                rate, burst = self.rate_limit_per_second, self.rate_limit_burst
            if rate is None and burst is None:
                limits[role] = None
                continue
            rate = self.rate_limit_per_second if rate is None else rate
            burst = self.rate_limit_burst if burst is None else burst
            limits[role] = (rate, burst)
        return limits

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and checked."""
        updated = dataclasses.replace(self, **changes)
        _check(updated)
        return updated


# --------------------------------------------------------------------------
# parsing


def _parse_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected an integer, got {value!r}") from None


def _parse_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _parse_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _parse_optional_str(key: str, value: Any) -> str | None:
    text = _parse_str(key, value)
    return text or None


def _parse_optional_float(key: str, value: Any) -> float | None:
    if isinstance(value, str) and not value.strip():
        return None
    return _parse_float(key, value)


def _parse_optional_int(key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _parse_int(key, value)


def _parse_secrets(key: str, value: Any) -> tuple[str, ...]:
    items = _comma_list(key, value, "secrets")
    for item in items:
        if not isinstance(item, str) or len(item.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                key, f"each secret must be a string of at least {MIN_SECRET_BYTES} bytes"
            )
    return tuple(items)


def _comma_list(key: str, value: Any, what: str) -> list[Any]:
    """A list from TOML, or from a comma-separated string (env, flag)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(key, f"expected a comma-separated list of {what}, got {value!r}")


def _parse_origins(key: str, value: Any) -> tuple[str, ...] | None:
    items = _comma_list(key, value, "origins")
    if not items:
        return None
    for item in items:
        if not isinstance(item, str) or not (
            item == "*" or item.startswith(("http://", "https://"))
        ):
            raise ConfigError(key, f"{item!r} is not an origin (http(s)://host[:port] or *)")
    return tuple(items)


def _parse_retention(key: str, value: Any) -> dict[str, dict[str, float]]:
    """``{namespace: {max_events?, ttl_hours?}}``: a TOML table, or JSON in the environment."""
    try:
        value = (json.loads(value) if value.strip() else {}) if isinstance(value, str) else value
    except ValueError as exc:
        raise ConfigError(key, f"expected a JSON object, got {value!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table of namespaces, got {value!r}")
    parsed: dict[str, dict[str, float]] = {}
    for namespace, limits in value.items():
        if namespace not in NAMESPACE_NAMES:
            names = ", ".join(NAMESPACE_NAMES)
            raise ConfigError(key, f"{namespace!r} is not a namespace (one of {names})")
        if not isinstance(limits, dict) or not limits:
            raise ConfigError(key, f"{namespace}: expected a table of max_events, ttl_hours")
        entry: dict[str, float] = {}
        for name, raw in limits.items():
            where = f"{namespace}.{name}"
            if name not in RETENTION_KEYS:
                raise ConfigError(key, f"{where}: unknown (use {' or '.join(RETENTION_KEYS)})")
            try:
                entry[name] = (_parse_int if name == "max_events" else _parse_float)(where, raw)
            except ConfigError as exc:
                raise ConfigError(key, exc.message) from None
            if not entry[name] > 0:
                raise ConfigError(key, f"{where}: must be > 0, got {raw!r}")
        parsed[namespace] = entry
    return parsed


_PARSERS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "host": _parse_str,
    "port": _parse_int,
    # set but empty is a mistake (an unset variable in a template), not dev mode
    "secret": _parse_str,
    "previous_secrets": _parse_secrets,
    "store": _parse_str,
    "message_queue": _parse_optional_str,
    "max_events": _parse_int,
    "ttl_hours": _parse_float,
    "retention": _parse_retention,
    "cleanup_interval_minutes": _parse_float,
    "replay_buffer_size": _parse_int,
    "replay_window_minutes": _parse_float,
    "max_event_bytes": _parse_int,
    "command_timeout_seconds": _parse_float,
    "kiosk_offline_grace_seconds": _parse_float,
    "cors_origins": _parse_origins,
    "board_enabled": _parse_bool,
    "websocket_compression": _parse_bool,
    "rate_limit_per_second": _parse_float,
    "rate_limit_burst": _parse_int,
    **{f"rate_limit_{role}_per_second": _parse_optional_float for role in ROLE_NAMES},
    **{f"rate_limit_{role}_burst": _parse_optional_int for role in ROLE_NAMES},
    "max_connections_per_principal": _parse_int,
    "max_send_queue": _parse_int,
    "max_send_buffer_bytes": _parse_int,
    "log_level": lambda key, value: _parse_str(key, value).upper(),
    "admin_ui": _parse_bool,
    "admin_username": _parse_optional_str,
    "admin_password": _parse_optional_str,
    "shutdown_grace_seconds": _parse_float,
    "store_wait_seconds": _parse_float,
    "log_format": lambda key, value: _parse_str(key, value).lower(),
    "access_log": _parse_bool,
    "metrics_port": _parse_optional_int,
}

SETTING_NAMES: Final = tuple(_PARSERS)


def env_name(key: str) -> str:
    """``max_events`` -> ``LOCKERBUS_MAX_EVENTS``."""
    return ENV_PREFIX + key.upper()


def _positive(settings: Settings, key: str, *, allow_zero: bool = False) -> None:
    value = getattr(settings, key)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check(settings: Settings) -> None:
    if not settings.host.strip():
        raise ConfigError("host", "must not be empty")
    if not 0 < settings.port < 65536 and settings.port != 0:
        raise ConfigError("port", f"must be 1-65535 (or 0 for any free port), got {settings.port}")
    if settings.secret is not None and len(settings.secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError("secret", f"must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)")
    validate_store_url(settings.store)
    if settings.message_queue is not None and not settings.message_queue.startswith(REDIS_SCHEMES):
        raise ConfigError("message_queue", f"{settings.message_queue!r} is not a redis:// URL")
    if settings.message_queue is not None and not settings.store.startswith(
        (*REDIS_SCHEMES, *POSTGRES_SCHEMES)
    ):
        raise ConfigError(
            "message_queue",
            "instances share one store: set store to the same redis:// or postgresql:// server",
        )
    for key in (
        "max_events",
        "ttl_hours",
        "cleanup_interval_minutes",
        "replay_buffer_size",
        "max_event_bytes",
        "command_timeout_seconds",
        "rate_limit_per_second",
        "rate_limit_burst",
        "max_connections_per_principal",
        "max_send_queue",
        "max_send_buffer_bytes",
    ):
        _positive(settings, key)
    if settings.replay_buffer_size >= settings.max_send_queue:
        # a replay is queued at once: one that cannot fit drops every client it is for
        raise ConfigError(
            "replay_buffer_size",
            f"must be below max_send_queue ({settings.max_send_queue}), "
            f"got {settings.replay_buffer_size}",
        )
    for role in ROLE_NAMES:
        for key in (f"rate_limit_{role}_per_second", f"rate_limit_{role}_burst"):
            if getattr(settings, key) is not None:
                _positive(settings, key)
    if settings.previous_secrets and settings.secret is None:
        raise ConfigError("previous_secrets", "needs secret: tokens are signed with it")
    _positive(settings, "replay_window_minutes", allow_zero=True)
    _positive(settings, "shutdown_grace_seconds", allow_zero=True)
    _positive(settings, "kiosk_offline_grace_seconds", allow_zero=True)
    _positive(settings, "store_wait_seconds", allow_zero=True)
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    if settings.metrics_port is not None and not 0 < settings.metrics_port < 65536:
        raise ConfigError("metrics_port", f"must be 1-65535, got {settings.metrics_port}")
    if settings.metrics_port is not None and settings.metrics_port == settings.port:
        raise ConfigError("metrics_port", "must differ from port")
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if settings.admin_ui and not (settings.admin_username and settings.admin_password):
        raise ConfigError("admin_ui", "needs admin_username and admin_password")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    section = document.get("lockerbus", document)
    if not isinstance(section, dict):
        raise ConfigError("config", f"{path}: [lockerbus] must be a table")
    return section


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Settings with where each came from, and the variables that were not ours."""

    settings: Settings
    # setting -> "flag", "env" or "file"; a setting not listed has its default
    sources: Mapping[str, str]
    # LOCKERBUS_* variables that are neither settings nor Kubernetes service links
    unknown_env: tuple[str, ...] = ()

    def warn_unknown(self) -> None:
        """Log one warning listing the unknown variables (a typo is otherwise silent)."""
        if self.unknown_env:
            config_logger.warning(
                "ignoring unknown environment variables: %s", ", ".join(self.unknown_env)
            )


def read_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> LoadedSettings:
    """Read settings once, in the contract's order of precedence.

    ``env`` is the process environment (only ``LOCKERBUS_*`` is looked at);
    ``config_file`` falls back to ``LOCKERBUS_CONFIG``.  Flags whose value is
    None are treated as not given.  An unknown key in the file is an error; an
    unknown ``LOCKERBUS_*`` variable is only reported in ``unknown_env``, since
    platforms (Kubernetes service links) set variables of their own there.
    """
    env = env or {}
    values: dict[str, Any] = {}
    config_file = config_file or env.get(CONFIG_ENV) or None
    env_layer, unknown = _env_layer(env)
    layers: list[tuple[str, Mapping[str, Any], Callable[[str], str]]] = []
    if config_file:
        layers.append(("file", _read_toml(config_file), lambda key: key))
    layers.append(("env", env_layer, env_name))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}, _flag))
    origins: dict[str, str] = {}
    sources: dict[str, str] = {}
    for origin, layer, label in layers:
        for key, raw in layer.items():
            if key not in _PARSERS:
                raise ConfigError(label(key), "unknown setting")
            try:
                values[key] = _PARSERS[key](key, raw)
            except ConfigError as exc:
                raise ConfigError(label(key), exc.message.split(": ", 1)[-1]) from None
            origins[key] = label(key)
            sources[key] = origin
    settings = Settings(**values)
    try:
        _check(settings)
    except ConfigError as exc:
        # name the setting as the user wrote it (LOCKERBUS_SECRET, --port, ...)
        raise ConfigError(origins.get(exc.key, exc.key), exc.message.split(": ", 1)[-1]) from None
    return LoadedSettings(settings, sources, tuple(unknown))


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """:func:`read_settings`, warning once about unknown variables; just the settings."""
    loaded = read_settings(flags=flags, env=env, config_file=config_file)
    loaded.warn_unknown()
    return loaded.settings


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The settings among ``LOCKERBUS_*`` variables, and the unknown names."""
    layer: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if _SERVICE_LINK.fullmatch(name) or (name.endswith("_PORT") and _SERVICE_URL.match(value)):
            continue  # LOCKERBUS_PORT=tcp://10.0.0.1:8080 is a service link, never the port
        key = name[len(ENV_PREFIX) :].lower()
        if key in _PARSERS:
            layer[key] = value
        else:
            unknown.append(name)
    return layer, unknown
