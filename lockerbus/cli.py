"""The ``lockerbus`` command: ``serve``, ``config`` and ``token``."""

from __future__ import annotations

import argparse
import functools
import math
import os
import secrets
import sys
from collections.abc import Sequence

from .auth import ROLES, issue_token
from .config import LoadedSettings, Settings, read_settings
from .errors import BadRequestError, ConfigError
from .filters import parse_filter_json
from .version import __version__

DEV_SUBS = {"kiosk": "kiosk-1", "panel": "panel-1", "gateway": "gateway-1", "admin": "admin"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockerbus", description="Real-time event server for smart-locker fleets."
    )
    parser.add_argument("--version", action="version", version=f"lockerbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    _setting_flags(serve)
    config = commands.add_parser(
        "config", help="print the effective settings and where each came from (secrets redacted)"
    )
    _setting_flags(config)
    config.add_argument(
        "--check", action="store_true", help="only check: exit 0 when valid, 2 when not"
    )
    state = commands.add_parser(
        "state", help="the durable state (contract §11): 'rebuild' it from the history held"
    )
    state.add_argument("action", choices=["rebuild"])
    _setting_flags(state)
    token = commands.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", required=True, help="principal id (a kiosk's id for role kiosk)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.add_argument("--scope", help='a filter it is confined to: \'{"kiosk": ["kiosk-1"]}\'')
    token.add_argument("--config", help="TOML settings file")
    return parser


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", help="port to listen on (default 8080)")
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--store", help="memory, sqlite:///path.db or redis://host:port/db")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    flags = {key: getattr(args, key, None) for key in ("host", "port", "store")}
    try:
        loaded = read_settings(flags=flags, env=os.environ, config_file=args.config)
    except ConfigError as exc:
        print(f"lockerbus: bad setting {exc.message}", file=sys.stderr)
        return 2
    settings = loaded.settings
    if args.command == "serve":
        return serve(loaded)
    loaded.warn_unknown()
    if args.command == "config":
        return _config(loaded, check=args.check)
    if args.command == "state":
        return _rebuild_state(settings)
    if args.command == "token":
        if settings.secret is None:
            print("lockerbus: no secret configured (set LOCKERBUS_SECRET)", file=sys.stderr)
            return 2
        if not (math.isfinite(args.ttl) and args.ttl > 0):
            print("lockerbus: --ttl must be a number of seconds > 0", file=sys.stderr)
            return 2
        if not args.sub:
            print("lockerbus: --sub must not be empty", file=sys.stderr)
            return 2
        try:
            scope = None if args.scope is None else parse_filter_json(args.scope, "--scope")
        except BadRequestError as exc:
            print(f"lockerbus: {exc.message}", file=sys.stderr)
            return 2
        print(issue_token(settings.secret, args.role, args.sub, args.ttl, scope=scope))
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse requires one


def _config(loaded: LoadedSettings, *, check: bool) -> int:
    """Print the settings (stdout), or with ``check`` just confirm they are valid (stderr)."""
    if check:
        print("lockerbus: configuration is valid", file=sys.stderr)
        return 0
    from .settings_report import report_lines

    print("\n".join(report_lines(loaded)))
    return 0


def _rebuild_state(settings: Settings) -> int:
    """``lockerbus state rebuild``: fold the store's history into its state (after a
    restore); safe while servers run, since appends are atomic with it."""
    import asyncio

    from .app import store_options
    from .errors import StoreUnavailableError
    from .store import open_store

    async def rebuild() -> int:
        async with open_store(settings.store, store_options(settings)) as store:
            return await store.rebuild_state()

    try:
        entries = asyncio.run(rebuild())
    except StoreUnavailableError as exc:
        print(f"lockerbus: {exc.message}", file=sys.stderr)
        return 1
    print(f"lockerbus: state rebuilt from the history held: {entries} entries")
    return 0


def serve(loaded: LoadedSettings) -> int:
    """Run the server until SIGINT/SIGTERM; exit 0 after a graceful stop."""
    import asyncio

    from . import log
    from .runner import serve_until_signalled
    from .startup import StartupError

    settings = loaded.settings
    log.configure(settings.log_level, settings.log_format)
    loaded.warn_unknown()
    if settings.dev_mode:
        settings = settings.replace(secret=secrets.token_urlsafe(48))
        _print_dev_tokens(settings)
    try:
        asyncio.run(serve_until_signalled(settings))
    except StartupError as exc:
        print(f"lockerbus: {exc.setting}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


def _print_dev_tokens(settings: Settings) -> None:
    """Human output, so on stderr: stdout stays free for machine-read output."""
    if settings.secret is None:
        raise ValueError("dev mode makes a secret before it prints tokens")
    say = functools.partial(print, file=sys.stderr)
    say("lockerbus: DEV MODE - no LOCKERBUS_SECRET set; a random secret was generated.")
    say("lockerbus: never run dev mode in production. Tokens valid for 24 h:")
    for role in ROLES:
        token = issue_token(settings.secret, role, DEV_SUBS[role], 24 * 3600)
        say(f"  {role:<8} (sub {DEV_SUBS[role]}): {token}")
    sys.stderr.flush()
