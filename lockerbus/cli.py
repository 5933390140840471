"""The ``lockerbus`` command: ``serve`` and ``token``."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
from collections.abc import Sequence

from . import __version__
from .auth import ROLES, issue_token
from .config import Settings, load_settings
from .errors import BadRequestError, ConfigError
from .filters import parse_filter_json

DEV_SUBS = {"kiosk": "kiosk-1", "panel": "panel-1", "gateway": "gateway-1", "admin": "admin"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockerbus", description="Real-time event server for smart-locker fleets."
    )
    parser.add_argument("--version", action="version", version=f"lockerbus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8080)")
    serve.add_argument("--config", help="TOML settings file")
    serve.add_argument("--store", help="memory, sqlite:///path.db or redis://host:port/db")
    token = commands.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", required=True, help="principal id (a kiosk's id for role kiosk)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    token.add_argument("--scope", help='a filter it is confined to: \'{"kiosk": ["kiosk-1"]}\'')
    token.add_argument("--config", help="TOML settings file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    flags = {key: getattr(args, key, None) for key in ("host", "port", "store")}
    try:
        settings = load_settings(flags=flags, env=os.environ, config_file=args.config)
    except ConfigError as exc:
        print(f"lockerbus: bad setting {exc.message}", file=sys.stderr)
        return 2
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
    return serve(settings)


def serve(settings: Settings) -> int:
    """Run the server until SIGINT/SIGTERM; exit 0 after a graceful stop."""
    import asyncio

    from . import log
    from .runner import serve_until_signalled

    log.configure(settings.log_level)
    if settings.dev_mode:
        settings = settings.replace(secret=secrets.token_urlsafe(48))
        _print_dev_tokens(settings)
    asyncio.run(serve_until_signalled(settings))
    return 0


def _print_dev_tokens(settings: Settings) -> None:
    assert settings.secret is not None
    print("lockerbus: DEV MODE - no LOCKERBUS_SECRET set; a random secret was generated.")
    print("lockerbus: never run dev mode in production. Tokens valid for 24 h:")
    for role in ROLES:
        token = issue_token(settings.secret, role, DEV_SUBS[role], 24 * 3600)
        print(f"  {role:<8} (sub {DEV_SUBS[role]}): {token}")
    sys.stdout.flush()
