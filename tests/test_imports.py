"""Every module imports on its own: no import cycles, no hidden order."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import lockerbus

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(lockerbus.__path__, "lockerbus.")
    if not name.endswith("__main__")
)

# lower layers never import upper ones (events -> service/store -> delivery -> server/http ->
# app -> cli); .importlinter states the same statically, this checks what importing pulls in
FORBIDDEN = {
    # config sits at the bottom: it checks a store URL and the secret by form only
    "lockerbus.config": ("socketio", "aiohttp", "lockerbus.store", "lockerbus.auth", "redis"),
    "lockerbus.redisconn": ("socketio", "aiohttp", "lockerbus.store", "redis"),
    "lockerbus.store.base": (
        "socketio",
        "aiohttp",
        "lockerbus.service",
        "lockerbus.server",
        "lockerbus.auth",
        "redis",
    ),
    "lockerbus.errors": ("socketio", "aiohttp", "lockerbus.service", "lockerbus.store"),
    "lockerbus.fastcheck": ("socketio", "aiohttp", "lockerbus.events", "lockerbus.service"),
    "lockerbus.events": ("socketio", "aiohttp", "lockerbus.service", "lockerbus.store"),
    "lockerbus.service": ("socketio", "aiohttp", "lockerbus.store", "lockerbus.server"),
    "lockerbus.store": ("socketio", "aiohttp", "lockerbus.server", "lockerbus.app", "redis"),
    "lockerbus.recovery": ("socketio", "aiohttp"),
    "lockerbus.projections": ("socketio", "aiohttp", "lockerbus.server", "lockerbus.bus"),
    "lockerbus.delivery": ("socketio", "engineio", "aiohttp", "lockerbus.server", "lockerbus.app"),
    "lockerbus.client": (
        "aiohttp.web",
        "lockerbus.server",
        "lockerbus.service",
        "lockerbus.store",
        "lockerbus.bus",
        "lockerbus.app",
    ),
}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    code = f"import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_layers_point_downward(module: str) -> None:
    if module not in MODULES and module != "lockerbus.store":
        pytest.skip(f"{module} does not exist yet")
    # the package __init__ re-exports EventService for users, so it is skipped here:
    # what is measured is what the module itself pulls in
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('lockerbus')\n"
        "package = types.ModuleType('lockerbus')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['lockerbus'] = package\n"
        f"import {module}\n"
        f"bad = [m for m in {FORBIDDEN[module]!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} pulls in {result.stdout.strip()}"


def test_the_server_needs_no_optional_extra() -> None:
    """A base install (scripts/serve) has no redis: only cluster mode may import it."""
    code = (
        "import sys\n"
        "sys.modules['redis'] = None  # as if not installed\n"
        "import lockerbus.cli, lockerbus.runner\n"
        "from lockerbus.app import create_app\n"
        "from lockerbus.config import Settings\n"
        "create_app(Settings(secret='s' * 40))\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
