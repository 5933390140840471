"""scripts/bench works end to end and loses nothing: a smoke run, never a timed test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent


def _run_quick(tmp_path: Path, targets: str, *options: str) -> dict[str, Any]:
    require_binary("node")
    require_binary("npm")
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "bench"),
            *(options or ("--quick",)),
            f"--targets={targets}",
            f"--results-dir={tmp_path}",
            "--quiet-wait=0",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, result.stderr
    report: dict[str, Any] = json.loads(files[0].read_text())
    return report


def _assert_lossless(run: dict[str, Any], ordered: bool = True) -> None:
    assert run["status"] == "ok", run
    assert run["acked"] > 0
    assert run["rejected"] == 0, run
    assert run["ack_timeouts"] == 0
    assert run["lost"] == 0
    assert run["duplicates"] == 0
    if ordered:  # concurrent HTTP requests may be taken in any order
        assert run["reordered"] == 0
    assert run["deliveries"] == run["expected_deliveries"] == run["acked"] * run["clients"]
    assert run["latency_ms"]["count"] > 0
    assert run["server"]["cpu_us_per_delivery"] is not None
    assert run["server"]["rss_idle_mb"] > 0


@pytest.mark.needs_node
@pytest.mark.timeout(300)
def test_quick_bench_loses_nothing(tmp_path: Path) -> None:
    report = _run_quick(tmp_path, "plain,lockerbus")
    assert report["machine"]["nproc"] >= 1
    runs = report["runs"]["quick"]
    _assert_lossless(runs["plain"])
    lockerbus = runs["lockerbus"]
    if lockerbus["status"] == "unavailable":
        # the server is not there yet (no socket.io endpoint); the driver said why
        assert lockerbus["reason"]
        return
    _assert_lossless(lockerbus)
    # contract §6: replay_complete after replay: false, for every connection
    assert lockerbus["replay_complete"] == lockerbus["clients"] + 1


@pytest.mark.needs_node
@pytest.mark.timeout(300)
def test_http_ingest_bench_counts_accepted_events(tmp_path: Path) -> None:
    """The ingest modes post over HTTP; every accepted event reaches the subscriber."""
    report = _run_quick(
        tmp_path, "plain,lockerbus", "--scenario=ingest_http", "--duration=1", "--no-docs"
    )
    for target in ("plain", "lockerbus"):
        run = report["runs"]["ingest_http"][target]
        _assert_lossless(run, ordered=False)
        assert run["accepted_per_s"] > 0
        assert run["server"]["cpu_us_per_event"] is not None


@pytest.mark.needs_node
@pytest.mark.timeout(300)
def test_fleet_storm_replays_every_missed_event_once(tmp_path: Path) -> None:
    """The fleet reconnect storm at 40 clients: lockerbus by last_seq, Node by its
    connection-state recovery; every client gets each missed event exactly once."""
    report = _run_quick(
        tmp_path,
        "lockerbus,node",
        "--scenario=storm_10k",
        "--clients=40",
        "--procs=2",
        "--no-docs",
    )
    scenario = report["scenarios"][0]
    assert scenario["fleet"] is True
    assert scenario["clients"] == 40
    for target, replay in (("lockerbus", "last_seq"), ("node", "connection-state recovery")):
        run = report["runs"]["storm_10k"][target]
        assert run["status"] == "ok", run
        assert run["replay"] == replay
        assert run["connect_failures"] == run["storm_failures"] == 0
        assert run["lost"] == run["duplicates"] == run["reordered"] == 0
        assert run["recovered"] == 40
        assert run["storm_per_client_ms"]["count"] == 40
        assert run["server"]["server_cpu_s"] is not None
    # lockerbus flags what it replays (contract §6), one replay_complete per connection
    lockerbus = report["runs"]["storm_10k"]["lockerbus"]
    assert lockerbus["replayed_flagged"] == 40 * scenario["missed"]
    assert lockerbus["replay_complete"] == 2 * 40  # first connect (replay: false), reconnect


@pytest.mark.needs_node
@pytest.mark.timeout(300)
def test_the_store_option_runs_lockerbus_on_that_store(tmp_path: Path) -> None:
    database = tmp_path / "bench.db"
    report = _run_quick(tmp_path, "lockerbus", "--quick", f"--store=sqlite:///{database}")
    _assert_lossless(report["runs"]["quick"]["lockerbus"])
    assert database.stat().st_size > 0, "the server wrote its events to the SQLite file"
