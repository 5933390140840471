"""Fixtures of the reliability suite: server processes and the figures it reports.

``LOCKERBUS_HEAVY=1`` runs the heavier variants (more clients, more events);
``LOCKERBUS_FIGURES=path.json`` also writes the figures of the run to a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ServerProcess

HEAVY = os.environ.get("LOCKERBUS_HEAVY") == "1"

#: test name -> figures; printed at the end of the run (and written to LOCKERBUS_FIGURES).
FIGURES: dict[str, dict[str, Any]] = {}


def record(case: str, **figures: Any) -> None:
    """Keep figures of ``case`` for the run's summary."""
    FIGURES.setdefault(case, {}).update(figures)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start lockerbus processes; each is killed after the test, and must not have crashed."""
    started: list[ServerProcess] = []

    def factory(store: str = "memory", **env: Any) -> ServerProcess:
        name = f"server-{len(started)}.log"
        server = ServerProcess(
            store=store,
            log_path=tmp_path / name,
            env={f"LOCKERBUS_{k.upper()}": str(v) for k, v in env.items()},
        )
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.kill()
    for server in started:
        assert not server.crashes(), server.log()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("lockerbus reliability figures")
    for case, figures in sorted(FIGURES.items()):
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        terminalreporter.write_line(f"{case}: {shown}")
    target = os.environ.get("LOCKERBUS_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
