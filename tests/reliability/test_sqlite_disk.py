"""SQLite on a disk that fills up or turns read-only (issue 20): publishes are
refused with ``store_unavailable`` (never acknowledged without being stored), the
database stays intact, and the store resumes by itself once the disk can take
writes again.  The disk is a small tmpfs mounted by the test (root only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockerbus.startup import StartupError
from tests.cluster_support import wait_ready
from tests.conftest import require
from tests.reliability.conftest import record
from tests.support import locker_event, start_server

LOCKERS = "/ws/lockers"
SIZE = "1m"


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at tmp_path/disk, unmounted after the test."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "root and mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(disk)], check=True, capture_output=True)


def integrity(path: Path, *, read_only: bool = False) -> str:
    """SQLite's own integrity check (``immutable``: on a read-only mount, no -shm)."""
    uri = f"file:{path}?immutable=1" if read_only else f"file:{path}"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def all_events(server: Any, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        params = {"namespace": LOCKERS, "limit": 1000, "after_seq": len(events)}
        async with http.get(
            f"{server.url}/api/events", params=params, headers=server.headers()
        ) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        events.extend(page["events"])
        if not page["has_more"]:
            return events


async def publish_until_refused(
    server: Any, http: aiohttp.ClientSession, limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    acked: list[dict[str, Any]] = []
    for n in range(limit):
        status, body = await server.post_event(http, locker_event(n))
        if status != 201:
            assert status == 503, body
            return acked, body["error"]
        acked.append(body)
    return acked, None


async def test_full_disk_refuses_keeps_the_database_intact_and_recovers(
    small_disk: Path, server_factory, http
) -> None:
    db = small_disk / "events.db"
    server = await server_factory(store=f"sqlite:///{db}")
    acked, refusal = await publish_until_refused(server, http, 20_000)
    assert refusal is not None, "the disk never filled"
    assert refusal["code"] == "store_unavailable"
    assert "full" in refusal["message"], refusal
    async with http.get(f"{server.url}/readyz") as resp:
        ready_while_full = resp.status
    assert ready_while_full == 503
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    assert await asyncio.to_thread(integrity, db) == "ok"

    mount("-o", "remount,size=4m", str(small_disk))
    await wait_ready(http, server)
    status, after = await server.post_event(http, locker_event(0))
    assert status == 201
    assert after["seq"] == len(acked) + 1, "a refused publish used no seq"
    assert await all_events(server, http) == [*acked, after], "exactly the acked events"
    assert await asyncio.to_thread(integrity, db) == "ok"
    record("sqlite_full_disk", disk=SIZE, acked_before_full=len(acked), readyz=ready_while_full)


async def test_read_only_disk_refuses_to_start_then_starts_once_writable(
    small_disk: Path, server_factory, http
) -> None:
    """The kernel will not turn a mount read-only while files on it are open for
    writing, so this is the case of a server (re)started on a read-only disk: it
    refuses to start, naming the file, and the data is intact once writable."""
    db = small_disk / "events.db"
    first = await start_server(store=f"sqlite:///{db}")
    try:
        acked, _ = await publish_until_refused(first, http, 5)
    finally:
        await first.stop()
    mount("-o", "remount,ro", str(small_disk))
    with pytest.raises(StartupError) as refused:
        await start_server(store=f"sqlite:///{db}")
    assert refused.value.setting == "store" and str(db) in refused.value.message
    assert await asyncio.to_thread(lambda: integrity(db, read_only=True)) == "ok"
    mount("-o", "remount,rw", str(small_disk))
    server = await server_factory(store=f"sqlite:///{db}")
    await wait_ready(http, server)
    status, after = await server.post_event(http, locker_event(11))
    assert status == 201 and after["seq"] == len(acked) + 1
    assert await all_events(server, http) == [*acked, after]
    record("sqlite_read_only_start", refused=refused.value.message.rsplit(":", 1)[-1].strip())
