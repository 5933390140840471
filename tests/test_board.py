"""The live board in real headless Chromium: snapshot, live updates, reconnect after a server drop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lockerbus.app import GATEWAY
from tests.browser_support import chromium
from tests.support import RunningServer, locker_event

pytestmark = pytest.mark.needs_chromium


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    async with chromium() as launched:
        yield launched


def help_event(n: int, priority: str = "high") -> dict[str, Any]:
    return {
        "type": "help_requested",
        "data": {
            "id": n,
            "kiosk_id": "kiosk-1",
            "locker_no": n,
            "category": "access_issue",
            "status": "open",
            "created_at": "2026-11-26T19:00:00+00:00",
            "priority": priority,
        },
    }


async def drop_all(server: RunningServer, namespace: str) -> int:
    """Server-side disconnect of every connection of ``namespace``."""
    gateway = server.app[GATEWAY]
    sids = list(gateway.hub.connections[namespace])
    for sid in sids:
        await gateway.sio.disconnect(sid, namespace=namespace)
    return len(sids)


async def open_board(browser: Any, server: RunningServer, errors: list[str]) -> Any:
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(f"{server.url}/board#token={server.token('panel', 'board-1')}")
    await page.wait_for_selector('#status[data-status="connected"]', timeout=10_000)
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    return page


async def test_board_live_update_and_reconnect(server, http, browser, tmp_path: Path) -> None:
    # state before the page loads comes from the snapshot
    status, _ = await server.post_event(http, locker_event(1))  # L1 open -> closed
    assert status == 201
    await server.post_event(http, help_event(7, "urgent"))
    errors: list[str] = []
    page = await open_board(browser, server, errors)
    assert await page.get_attribute('[data-locker="kiosk-1/L1"]', "data-state") == "closed"
    assert await page.get_attribute('[data-help="7"]', "data-priority") == "urgent"
    # the token left the address bar
    assert "token" not in page.url

    # a change published over HTTP shows within a second
    started = time.perf_counter()
    status, event = await server.post_event(http, locker_event(2))  # L2 closed -> open
    assert status == 201
    await page.wait_for_selector('[data-locker="kiosk-1/L2"][data-state="open"]', timeout=1000)
    shown_ms = (time.perf_counter() - started) * 1000
    assert shown_ms < 1000
    assert await page.get_attribute('[data-locker="kiosk-1/L2"]', "data-seq") == str(event["seq"])

    # the server drops the page; what is published meanwhile arrives by replay
    assert await drop_all(server, "/ws/lockers") == 1
    await page.wait_for_selector('#status[data-status="reconnecting"]', timeout=5000)
    missed = []
    for n in (3, 4, 5):
        status, stored = await server.post_event(http, locker_event(n))
        assert status == 201
        missed.append(stored["seq"])
    await page.wait_for_selector('[data-locker="kiosk-1/L5"][data-state="closed"]', timeout=10_000)
    await page.wait_for_selector('#status[data-status="connected"]', timeout=10_000)
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    for seq in missed:
        item = f'#feed li[data-ns="/ws/lockers"][data-seq="{seq}"]'
        assert await page.locator(item).count() == 1  # no duplicate
        assert await page.get_attribute(item, "data-replayed") == "true"
    assert await page.get_attribute("#status", "data-reconnects") == "1"
    # live again after the replay, no gap, no double
    status, after = await server.post_event(http, locker_event(6))
    await page.wait_for_selector(f'#feed li[data-ns="/ws/lockers"][data-seq="{after["seq"]}"]')
    seqs = [
        int(s)
        for s in await page.locator('#feed li[data-ns="/ws/lockers"]').evaluate_all(
            "items => items.map(i => i.dataset.seq)"
        )
    ]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == len(set(seqs))
    assert seqs == list(range(after["seq"], event["seq"] - 1, -1))

    # help requests resolve off the board
    await server.post_event(
        http,
        {
            "type": "help_status_updated",
            "data": {
                "id": 7,
                "old_status": "open",
                "new_status": "resolved",
                "updated_at": "2026-11-26T19:05:00+00:00",
            },
        },
    )
    await page.wait_for_selector('[data-help="7"]', state="detached", timeout=5000)
    await page.screenshot(path=str(tmp_path / "board.png"), full_page=True)
    assert (tmp_path / "board.png").stat().st_size > 1000
    assert errors == []


async def test_board_asks_for_a_token(server, http, browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{server.url}/board")
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#token-input", "not-a-token")
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("#login-error:has-text('Token refused')")
    await page.fill("#token-input", server.token("kiosk", "kiosk-1"))
    await page.click("#login button[type=submit]")
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    # kept for this tab: a reload stays signed in
    await page.reload()
    await page.wait_for_selector('#status[data-status="connected"]', timeout=10_000)
    assert await page.is_hidden("#login")


async def test_board_assets_and_setting(server_factory, http) -> None:
    on = await server_factory()
    async with http.get(f"{on.url}/board") as resp:
        assert resp.status == 200
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "/board/socket.io.min.js" in await resp.text()
    async with http.get(f"{on.url}/board/socket.io.min.js") as resp:
        assert resp.status == 200
        assert (await resp.text()).startswith("/*!\n * Socket.IO v4.")
    async with http.get(f"{on.url}/board/console.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    async with http.get(f"{on.url}/board/socket.io-client.LICENSE") as resp:
        assert resp.status == 404  # only the listed assets are served
    off = await server_factory(board_enabled=False)
    async with http.get(f"{off.url}/board") as resp:
        assert resp.status == 404
    async with http.get(f"{off.url}/api/lockers", headers=off.headers("kiosk", "k")) as resp:
        assert resp.status == 200  # the API stays
