"""Settings: flags > LOCKERBUS_* environment > TOML file > defaults; errors name the setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from lockerbus.config import SETTING_NAMES, Settings, env_name, load_settings, read_settings
from lockerbus.errors import ConfigError

SECRET = "s" * 32


@pytest.fixture
def toml_file(tmp_path: Path) -> Any:
    """A factory: write TOML text to a fresh file and return its path."""

    def write(text: str, name: str = "lockerbus.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_defaults_are_the_contracts() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.secret is None
    assert settings.dev_mode
    assert settings.store == "memory"
    assert settings.message_queue is None
    assert settings.max_events == 10000
    assert settings.ttl_hours == 24
    assert settings.cleanup_interval_minutes == 30
    assert settings.replay_buffer_size == 1000
    assert settings.replay_window_minutes == 60
    assert settings.max_event_bytes == 65536
    assert settings.command_timeout_seconds == 10
    assert settings.cors_origins is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("secret", "LOCKERBUS_SECRET"),
        ("store", "LOCKERBUS_STORE"),
        ("message_queue", "LOCKERBUS_MESSAGE_QUEUE"),
        ("max_events", "LOCKERBUS_MAX_EVENTS"),
        ("ttl_hours", "LOCKERBUS_TTL_HOURS"),
        ("cleanup_interval_minutes", "LOCKERBUS_CLEANUP_INTERVAL_MINUTES"),
        ("replay_buffer_size", "LOCKERBUS_REPLAY_BUFFER_SIZE"),
        ("replay_window_minutes", "LOCKERBUS_REPLAY_WINDOW_MINUTES"),
        ("max_event_bytes", "LOCKERBUS_MAX_EVENT_BYTES"),
        ("command_timeout_seconds", "LOCKERBUS_COMMAND_TIMEOUT_SECONDS"),
        ("cors_origins", "LOCKERBUS_CORS_ORIGINS"),
    ],
)
def test_contract_env_names(key: str, env: str) -> None:
    assert key in SETTING_NAMES
    assert env_name(key) == env


def test_environment_values_are_parsed() -> None:
    env = {
        "LOCKERBUS_SECRET": SECRET,
        "LOCKERBUS_STORE": "redis://localhost:6379/0",
        "LOCKERBUS_MESSAGE_QUEUE": "redis://localhost:6379/0",
        "LOCKERBUS_MAX_EVENTS": "500",
        "LOCKERBUS_TTL_HOURS": "1.5",
        "LOCKERBUS_REPLAY_WINDOW_MINUTES": "0",
        "LOCKERBUS_CORS_ORIGINS": "http://a.example, https://b.example:8443",
        "LOCKERBUS_BOARD_ENABLED": "off",
        "LOCKERBUS_WEBSOCKET_COMPRESSION": "yes",
        "LOCKERBUS_LOG_LEVEL": "debug",
        "PATH": "/usr/bin",  # not ours: ignored
    }
    settings = load_settings(env=env)
    assert settings.secret == SECRET
    assert not settings.dev_mode
    assert settings.store == "redis://localhost:6379/0"
    assert settings.message_queue == "redis://localhost:6379/0"
    assert settings.max_events == 500
    assert settings.ttl_hours == 1.5
    assert settings.ttl_seconds == 5400
    assert settings.replay_window_minutes == 0
    assert settings.cors_origins == ("http://a.example", "https://b.example:8443")
    assert settings.board_enabled is False
    assert settings.websocket_compression is True
    assert settings.log_level == "DEBUG"


def test_precedence_flags_env_file_defaults(toml_file: Any) -> None:
    path = toml_file("[lockerbus]\nport = 1001\nmax_events = 7\nstore = 'memory'\n")
    env = {"LOCKERBUS_PORT": "1002", "LOCKERBUS_MAX_EVENTS": "8"}
    flags = {"port": "1003", "host": None}  # None: flag not given
    both = load_settings(flags=flags, env=env, config_file=path)
    assert (both.port, both.max_events, both.host) == (1003, 8, "127.0.0.1")
    no_flag = load_settings(env=env, config_file=path)
    assert (no_flag.port, no_flag.max_events) == (1002, 8)
    file_only = load_settings(env={}, config_file=path)
    assert (file_only.port, file_only.max_events) == (1001, 7)
    assert load_settings(env={}).port == 8080


def test_config_file_from_env_and_flag(toml_file: Any) -> None:
    from_env = toml_file("port = 2001\n", "env.toml")  # top-level keys work too
    from_flag = toml_file("[lockerbus]\nport = 2002\n", "flag.toml")
    assert load_settings(env={"LOCKERBUS_CONFIG": from_env}).port == 2001
    chosen = load_settings(env={"LOCKERBUS_CONFIG": from_env}, config_file=from_flag)
    assert chosen.port == 2002


def test_toml_types_are_checked(toml_file: Any) -> None:
    path = toml_file(
        "[lockerbus]\ncors_origins = ['https://a.example']\nboard_enabled = false\nttl_hours = 2\n"
    )
    settings = load_settings(env={}, config_file=path)
    assert settings.cors_origins == ("https://a.example",)
    assert settings.board_enabled is False
    assert settings.ttl_hours == 2.0
    with pytest.raises(ConfigError, match=r"^max_events: expected an integer"):
        load_settings(env={}, config_file=toml_file("max_events = true\n", "b.toml"))
    with pytest.raises(ConfigError, match=r"^port: "):
        load_settings(env={}, config_file=toml_file("port = 99999\n", "c.toml"))


# Every setting with a value that must stop start-up; settings that take any
# string are listed apart, so a new setting cannot slip past this table.
ROLE_ORDER = ("kiosk", "panel", "gateway", "admin")
BAD_VALUES: dict[str, list[str]] = {
    "host": ["", "  "],
    "port": ["abc", "70000", "-1", "8080.5", ""],
    "secret": ["short", "", "x" * 31],
    "store": ["mysql://db", "", "sqlite:///", "postgresql://"],
    "message_queue": ["amqp://queue"],
    "max_events": ["0", "-1", "ten", "1e3"],
    "ttl_hours": ["0", "-1", "nan", "inf", "x"],
    "retention": [
        "{",
        "[]",
        '{"/ws/nope": {"max_events": 5}}',
        '{"/ws/events": 5}',
        '{"/ws/events": {}}',
        '{"/ws/events": {"max_events": 0}}',
        '{"/ws/events": {"max_events": "many"}}',
        '{"/ws/events": {"ttl_hours": -1}}',
        '{"/ws/events": {"ttl": 1}}',
    ],
    "cleanup_interval_minutes": ["0", "-5"],
    "replay_buffer_size": ["0", "many"],
    "replay_window_minutes": ["-1", "soon"],
    "max_event_bytes": ["0", "64k"],
    "command_timeout_seconds": ["0", "-1", "inf"],
    "kiosk_offline_grace_seconds": ["-1", "soon", "inf"],
    "cors_origins": ["example.com", "ftp://x"],
    "board_enabled": ["maybe", "2"],
    "websocket_compression": ["sometimes"],
    "rate_limit_per_second": ["0", "fast"],
    "rate_limit_burst": ["0", "1.5"],
    "max_connections_per_principal": ["0"],
    "max_send_queue": ["-5", "4MB"],
    "max_send_buffer_bytes": ["0", "4MB"],
    "log_level": ["LOUD", "verbose"],
    "admin_ui": ["perhaps", "true"],  # true without username and password
    "shutdown_grace_seconds": ["-1", "later"],
    "store_wait_seconds": ["-1", "soon"],
    "log_format": ["xml", "plain"],
    "access_log": ["maybe"],
    "metrics_port": ["0", "70000", "8080", "nine"],
    # a valid list without LOCKERBUS_SECRET: nothing to sign with
    "previous_secrets": ["short", "x" * 40 + ",short", "x" * 40],
    **{f"rate_limit_{r}_per_second": ["0", "-1", "fast"] for r in ROLE_ORDER},
    **{f"rate_limit_{r}_burst": ["0", "1.5"] for r in ROLE_ORDER},
}
ANY_STRING = {"admin_username", "admin_password"}


def test_every_setting_has_bad_values_or_takes_any_string() -> None:
    assert set(BAD_VALUES) | ANY_STRING == set(SETTING_NAMES)


@pytest.mark.parametrize(
    ("key", "value"), [(key, value) for key, values in BAD_VALUES.items() for value in values]
)
def test_each_bad_env_value_names_the_setting(key: str, value: str) -> None:
    name = env_name(key)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={name: value})
    assert excinfo.value.key == name
    assert excinfo.value.message.startswith(f"{name}: ")
    assert "\n" not in excinfo.value.message


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--port: expected an integer"):
        load_settings(flags={"port": "eighty"}, env={})
    with pytest.raises(ConfigError, match=r"^--port: must be 1-65535"):
        load_settings(flags={"port": "65536"}, env={})
    with pytest.raises(ConfigError, match=r"^--store: "):
        load_settings(flags={"store": "ftp://x"}, env={})


def test_unknown_lockerbus_variable_warns_once_and_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"LOCKERBUS_MAX_EVENT": "5", "LOCKERBUS_TYPO": "x", "LOCKERBUS_MAX_EVENTS": "7"}
    loaded = read_settings(env=env)
    assert loaded.unknown_env == ("LOCKERBUS_MAX_EVENT", "LOCKERBUS_TYPO")
    assert loaded.settings.max_events == 7
    with caplog.at_level(logging.WARNING, logger="lockerbus.config"):
        assert load_settings(env=env).max_events == 7
    warnings = [r for r in caplog.records if r.name == "lockerbus.config"]
    assert len(warnings) == 1
    assert "LOCKERBUS_MAX_EVENT, LOCKERBUS_TYPO" in warnings[0].getMessage()
    # others' variables are not ours to judge
    assert load_settings(env={"LOCKERBUSX": "1", "HOME": "/root"}) == Settings()


KUBERNETES_SERVICE_LINKS = {
    "LOCKERBUS_SERVICE_HOST": "10.96.0.12",
    "LOCKERBUS_SERVICE_PORT": "8080",
    "LOCKERBUS_SERVICE_PORT_HTTP": "8080",
    "LOCKERBUS_PORT": "tcp://10.96.0.12:8080",
    "LOCKERBUS_PORT_8080_TCP": "tcp://10.96.0.12:8080",
    "LOCKERBUS_PORT_8080_TCP_PROTO": "tcp",
    "LOCKERBUS_PORT_8080_TCP_PORT": "8080",
    "LOCKERBUS_PORT_8080_TCP_ADDR": "10.96.0.12",
    "LOCKERBUS_REDIS_SERVICE_HOST": "10.96.0.13",
    "LOCKERBUS_REDIS_PORT": "tcp://10.96.0.13:6379",
    "LOCKERBUS_REDIS_PORT_6379_TCP_ADDR": "10.96.0.13",
}


def test_kubernetes_service_links_are_recognised_and_ignored() -> None:
    loaded = read_settings(env=KUBERNETES_SERVICE_LINKS)
    assert loaded.unknown_env == ()
    assert loaded.settings == Settings()
    assert loaded.settings.port == 8080
    # LOCKERBUS_PORT=tcp://... never changes the port, whatever port the link names
    moved = read_settings(env={"LOCKERBUS_PORT": "tcp://10.0.0.1:9999"}).settings
    assert moved.port == 8080
    # a real port setting still works next to the links (a flag or a plain number)
    assert load_settings(env={**KUBERNETES_SERVICE_LINKS}, flags={"port": "9001"}).port == 9001


def test_sources_name_where_each_setting_came_from(toml_file: Any) -> None:
    path = toml_file("[lockerbus]\nmax_events = 5\nport = 1\n")
    loaded = read_settings(
        env={"LOCKERBUS_PORT": "2", "LOCKERBUS_TTL_HOURS": "3"},
        flags={"port": "4", "host": None},
        config_file=path,
    )
    assert dict(loaded.sources) == {"max_events": "file", "port": "flag", "ttl_hours": "env"}


def test_unknown_toml_key_is_named(toml_file: Any) -> None:
    with pytest.raises(ConfigError, match=r"^max_event: unknown setting"):
        load_settings(env={}, config_file=toml_file("[lockerbus]\nmax_event = 5\n"))


def test_missing_or_broken_config_file(toml_file: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: .*does not exist"):
        load_settings(env={}, config_file=str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"^config: cannot read"):
        load_settings(env={}, config_file=toml_file("port = = 1\n"))
    with pytest.raises(ConfigError, match=r"^config: .*must be a table"):
        load_settings(env={}, config_file=toml_file("lockerbus = 1\n", "t.toml"))


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("x" * 31, False),
        ("x" * 32, True),
        ("é" * 16, True),  # 32 bytes in UTF-8: the RFC counts bytes
        ("é" * 15, False),
        ("", False),  # set but empty is a mistake, not dev mode
    ],
)
def test_short_secret_is_refused(secret: str, ok: bool) -> None:
    if ok:
        assert load_settings(env={"LOCKERBUS_SECRET": secret}).secret == secret
    else:
        with pytest.raises(ConfigError, match=r"^LOCKERBUS_SECRET: must be at least 32 bytes"):
            load_settings(env={"LOCKERBUS_SECRET": secret})


def test_replace_checks_the_result() -> None:
    settings = load_settings(env={})
    assert settings.replace(secret=SECRET).secret == SECRET
    with pytest.raises(ConfigError, match=r"^secret: "):
        settings.replace(secret="short")


def test_admin_ui_needs_credentials() -> None:
    env = {"LOCKERBUS_ADMIN_UI": "1", "LOCKERBUS_ADMIN_USERNAME": "root"}
    with pytest.raises(ConfigError, match=r"^LOCKERBUS_ADMIN_UI: "):
        load_settings(env=env)
    settings = load_settings(env={**env, "LOCKERBUS_ADMIN_PASSWORD": "pw"})
    assert settings.admin_ui


def test_json_formatter_carries_the_event_fields() -> None:
    from lockerbus.log import JsonFormatter

    record = logging.LogRecord("lockerbus.server", logging.INFO, "x.py", 1, "hi %s", ("k1",), None)
    record.kiosk_id = "k1"
    record.seq = 7
    line = JsonFormatter().format(record)
    assert "\n" not in line
    decoded = json.loads(line)
    assert decoded["message"] == "hi k1"
    assert (decoded["logger"], decoded["level"]) == ("lockerbus.server", "INFO")
    assert (decoded["kiosk_id"], decoded["seq"]) == ("k1", 7)
    assert decoded["time"].endswith("+00:00")


def test_log_format_is_checked() -> None:
    assert load_settings(env={"LOCKERBUS_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match=r"^LOCKERBUS_LOG_FORMAT: must be one of text, json"):
        load_settings(env={"LOCKERBUS_LOG_FORMAT": "xml"})


def test_rate_limits_per_role() -> None:
    limits = load_settings(env={}).role_rate_limits()
    assert limits == {"kiosk": (50.0, 100), "panel": (50.0, 100), "gateway": None, "admin": None}
    env = {
        "LOCKERBUS_RATE_LIMIT_PER_SECOND": "5",
        "LOCKERBUS_RATE_LIMIT_KIOSK_BURST": "7",
        "LOCKERBUS_RATE_LIMIT_GATEWAY_PER_SECOND": "500",
    }
    limits = load_settings(env=env).role_rate_limits()
    # a role's own setting wins; the general one fills in what it leaves out
    assert limits == {
        "kiosk": (5.0, 7),
        "panel": (5.0, 100),
        "gateway": (500.0, 100),
        "admin": None,
    }


def test_previous_secrets_are_read_as_a_list() -> None:
    secret, old1, old2 = "s" * 40, "a" * 40, "b" * 40
    env = {"LOCKERBUS_SECRET": secret, "LOCKERBUS_PREVIOUS_SECRETS": f"{old1}, {old2}"}
    assert load_settings(env=env).previous_secrets == (old1, old2)


def test_retention_per_namespace_from_env_and_file(toml_file: Any) -> None:
    env = {"LOCKERBUS_RETENTION": '{"/ws/events": {"max_events": 200, "ttl_hours": 0.5}}'}
    settings = load_settings(env=env)
    assert settings.namespace_retention("/ws/events") == (200, 1800.0)
    assert settings.namespace_retention("/ws/lockers") == (10_000, 86_400.0)
    path = toml_file(
        '[lockerbus]\nmax_events = 50\n[lockerbus.retention."/ws/help"]\nttl_hours = 168\n'
    )
    from_file = load_settings(env={}, config_file=path)
    assert from_file.namespace_retention("/ws/help") == (50, 168 * 3600.0)
    with pytest.raises(ConfigError, match=r"^retention: /ws/help.ttl_hours: expected a number"):
        load_settings(
            env={}, config_file=toml_file('[lockerbus.retention."/ws/help"]\nttl_hours = "x"\n')
        )
    with pytest.raises(ConfigError, match=r"^LOCKERBUS_RETENTION: '/ws/x' is not a namespace"):
        load_settings(env={"LOCKERBUS_RETENTION": '{"/ws/x": {"ttl_hours": 1}}'})


def test_a_postgresql_store_may_be_shared_through_a_message_queue() -> None:
    url = "postgresql://lockerbus:pw@db.example:5432/events"
    env = {"LOCKERBUS_STORE": url, "LOCKERBUS_MESSAGE_QUEUE": "redis://mq:6379/0"}
    settings = load_settings(env=env)
    assert (settings.store, settings.message_queue) == (url, "redis://mq:6379/0")
    alone = {"LOCKERBUS_STORE": "sqlite:///x.db", "LOCKERBUS_MESSAGE_QUEUE": "redis://mq:6379/0"}
    with pytest.raises(ConfigError, match=r"^LOCKERBUS_MESSAGE_QUEUE: instances share one store"):
        load_settings(env=alone)
