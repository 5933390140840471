"""The fleet console in real headless Chromium, driven by roles and labels as an
operator would: kiosk roster and presence, remote commands to a simulated kiosk,
the help workflow, server-side filters, a scoped panel."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from lockerbus.auth import issue_token
from lockerbus.filters import parse_filter
from tests.browser_support import chromium
from tests.support import SECRET, RunningServer, connect, locker_event

pytestmark = pytest.mark.needs_chromium

EVENTS = "/ws/events"
#: set to a directory (e.g. docs) to write the console screenshots there
SHOTS = os.environ.get("LOCKERBUS_CONSOLE_SCREENSHOTS")


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    async with chromium() as launched:
        yield launched


def token(role: str, sub: str, scope: dict[str, Any] | None = None) -> str:
    return issue_token(SECRET, role, sub, 600, scope=parse_filter(scope) if scope else None)


def help_event(n: int, kiosk: str = "kiosk-1", priority: str = "high") -> dict[str, Any]:
    return {
        "type": "help_requested",
        "data": {
            "id": n,
            "kiosk_id": kiosk,
            "locker_no": n,
            "category": "access_issue",
            "status": "open",
            "created_at": "2026-11-26T19:00:00+00:00",
            "priority": priority,
        },
    }


async def sim_kiosk(
    server: RunningServer,
    sub: str,
    answer: dict[str, Any] | None = None,
    hold: asyncio.Event | None = None,
) -> Any:
    """A python-socketio client acting as kiosk ``sub``, answering every command
    (once ``hold`` is set, when given)."""
    calls: list[dict[str, Any]] = []

    async def on_command(command: dict[str, Any]) -> Any:
        calls.append(command)
        if hold is not None:
            await hold.wait()
        return answer or {"success": True, "message": f"{command['type']} done"}

    client = await connect(server, EVENTS, role="kiosk", sub=sub, handlers={"command": on_command})
    await client.wait_events(EVENTS, "replay_complete", 1)
    client.calls = calls
    return client


async def open_console(
    browser: Any,
    server: RunningServer,
    tok: str,
    query: str = "",
    width: int = 1280,
    route_websockets: Any = None,
) -> tuple[Any, list[str], list[str]]:
    """The console signed in with ``tok``; also every Socket.IO frame the page receives.

    ``route_websockets``, when given, handles the page's WebSockets (Playwright
    ``route_web_socket``) from the start."""
    page = await browser.new_page(viewport={"width": width, "height": 900})
    if route_websockets is not None:
        await page.route_web_socket("**/socket.io/**", route_websockets)
    errors: list[str] = []
    frames: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))),
    )
    await page.goto(f"{server.url}/board{query}#token={tok}")
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    return page, errors, frames


async def test_command_and_kiosk_presence(server_factory, http, browser, tmp_path: Path) -> None:
    server = await server_factory(kiosk_offline_grace_seconds=0.2, command_timeout_seconds=0.5)
    for n in (1, 2, 3):
        assert (await server.post_event(http, locker_event(n)))[0] == 201
    kiosk = await sim_kiosk(server, "kiosk-1", {"success": True, "message": "door 1 opened"})
    assert (await server.post_event(http, help_event(4, priority="urgent")))[0] == 201
    page, errors, _ = await open_console(browser, server, token("panel", "op-1"))
    card = page.get_by_role("listitem", name="Kiosk kiosk-1")
    await card.and_(page.locator('[data-online="true"]')).wait_for(timeout=5000)
    assert await card.locator('[data-field="connections"]').inner_text() == "1"

    # open locker L1 from the keyboard: pick the command and the locker, Enter on the button
    await page.get_by_label("Command for kiosk-1").select_option("open")
    await page.get_by_label("Locker for kiosk-1").focus()
    await page.get_by_label("Locker for kiosk-1").select_option("L1")
    await page.keyboard.press("Tab")
    # what has the focus, read in one step: the roster may be redrawn (focus kept) at any time
    focused = await page.evaluate(
        "[document.activeElement.tagName, document.activeElement.textContent]"
    )
    assert focused == ["BUTTON", "Send to kiosk-1"]
    await page.keyboard.press("Enter")
    done = page.locator('#commands li[data-target="kiosk-1/L1"][data-command-state="success"]')
    await done.wait_for(timeout=5000)
    assert "door 1 opened" in await done.inner_text() and " ms" in await done.inner_text()
    assert kiosk.calls[0]["type"] == "open" and kiosk.calls[0]["lockerId"] == "L1"
    assert kiosk.calls[0]["issued_by"] == "op-1"

    # the kiosk leaves: after the grace the roster marks it offline, commands say so
    await kiosk.close()
    offline = page.locator('#roster li[data-kiosk="kiosk-1"][data-online="false"]')
    await offline.wait_for(timeout=5000)
    assert await card.locator(".badge").text_content() == "offline"
    await page.get_by_label("Command for kiosk-1").select_option("buzzer")
    await page.get_by_role("button", name="Send to kiosk-1").click()
    unreachable = page.locator('#commands li[data-command="buzzer"]')
    await unreachable.and_(page.locator('[data-command-state="kiosk_offline"]')).wait_for()
    assert "kiosk offline" in await unreachable.inner_text()

    # and comes back
    await sim_kiosk(server, "kiosk-1")
    await page.locator('#roster li[data-kiosk="kiosk-1"][data-online="true"]').wait_for(
        timeout=5000
    )
    # the connection count comes from /api/kiosks, reloaded after the announcement
    await card.locator('[data-field="connections"]', has_text="1").wait_for(timeout=5000)

    # a kiosk that does not answer in the command timeout
    hold = asyncio.Event()
    await sim_kiosk(server, "kiosk-2", hold=hold)
    await page.get_by_label("Command for kiosk-2").select_option("status_check")
    await page.get_by_role("button", name="Send to kiosk-2").click()
    late = page.locator('#commands li[data-target="kiosk-2"]')
    await late.and_(page.locator('[data-command-state="timeout"]')).wait_for(timeout=5000)
    assert "timed out" in await late.inner_text()
    hold.set()

    # one time order across the three namespaces, newest first
    assert (await server.post_event(http, locker_event(4)))[0] == 201
    await page.locator('#feed li[data-ns="/ws/lockers"]').wait_for(timeout=5000)
    stamps = await page.locator("#feed li").evaluate_all(
        "items => items.map(i => Date.parse(i.dataset.timestamp))"
    )
    namespaces = await page.locator("#feed li").evaluate_all(
        "items => items.map(i => i.dataset.ns)"
    )
    assert len(set(namespaces)) >= 2
    assert stamps == sorted(stamps, reverse=True)
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / "console-1280.png"), full_page=True)
    assert errors == []


async def test_help_assign_resolve_and_conflict(server, http, browser) -> None:
    for n in (7, 8):
        assert (await server.post_event(http, help_event(n)))[0] == 201
    page, errors, _ = await open_console(browser, server, token("panel", "op-1"))
    request = page.get_by_role("listitem", name="Help request 7")
    await page.get_by_role("button", name="Assign help request 7 to me").click()
    await page.locator('[data-help="7"][data-status="assigned"]').wait_for(timeout=5000)
    assert "op-1" in await request.inner_text()
    await page.get_by_label("Resolution notes for help request 7").fill("reset the lock")
    await page.get_by_role("button", name="Resolve help request 7").click()
    await page.locator('[data-help="7"]').wait_for(state="detached", timeout=5000)
    stored = await events_of(server, http, "/ws/help")
    resolved = stored[-1]["data"]
    assert resolved["new_status"] == "resolved" and resolved["resolution_notes"] == "reset the lock"
    assert resolved["agent_id"] == "op-1"

    # what an operator is typing survives the list being redrawn by a new request
    notes = page.get_by_label("Resolution notes for help request 8")
    await notes.fill("half typed")
    assert (await server.post_event(http, help_event(9)))[0] == 201
    await page.locator('[data-help="9"]').wait_for(timeout=5000)
    assert await notes.input_value() == "half typed"
    assert await notes.evaluate("n => n === document.activeElement")

    # someone else assigns #8 while this page does not hear of it: its resolve is a conflict
    await page.route_web_socket("**/socket.io/**", lambda ws: hide_updates(ws))
    await page.reload()
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    update = {
        "type": "help_status_updated",
        "data": {
            "id": 8,
            "old_status": "open",
            "new_status": "assigned",
            "agent_id": "op-2",
            "updated_at": "2026-11-26T19:05:00+00:00",
        },
    }
    assert (await server.post_event(http, update))[0] == 201
    assert await page.get_attribute('[data-help="8"]', "data-status") == "open"
    await page.get_by_role("button", name="Resolve help request 8").click()
    alert = page.get_by_role("alert").filter(has_text="changed by someone else")
    await alert.wait_for(timeout=5000)
    # the current state was reloaded
    await page.locator('[data-help="8"][data-status="assigned"]').wait_for(timeout=5000)
    assert errors == []


def hide_updates(ws: Any) -> None:
    """Pass the page's websocket through, except help_status_updated events."""
    server = ws.connect_to_server()

    def forward(message: str | bytes) -> None:
        if not (isinstance(message, str) and '"help_status_updated"' in message):
            ws.send(message)

    server.on_message(forward)


async def events_of(server: RunningServer, http: Any, namespace: str) -> list[dict[str, Any]]:
    async with http.get(
        f"{server.url}/api/events",
        params={"namespace": namespace, "limit": "100"},
        headers=server.headers("admin"),
    ) as resp:
        assert resp.status == 200
        return list((await resp.json())["events"])


async def test_filter_is_applied_by_the_server_and_kept_in_the_url(server, http, browser) -> None:
    for n, kiosk in ((1, "kiosk-1"), (2, "kiosk-2")):
        assert (await server.post_event(http, locker_event(n, kiosk)))[0] == 201
        assert (await server.post_event(http, help_event(n, kiosk)))[0] == 201
    page, errors, frames = await open_console(browser, server, token("panel", "op-1"))
    await page.get_by_label("Kiosk", exact=True).fill("kiosk-2")
    await page.get_by_label("Locker state").select_option("open")
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url("**/board?kiosk=kiosk-2&state=open")
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    frames.clear()
    assert await page.get_by_label("Kiosk", exact=True).input_value() == "kiosk-2"
    assert await page.locator("[data-locker]").count() == 1
    assert await page.get_attribute("[data-locker]", "data-locker") == "kiosk-2/L2"
    assert await page.locator("[data-help]").count() == 1
    # live: kiosk-1's events never reach the page, kiosk-2's do
    assert (await server.post_event(http, locker_event(3, "kiosk-1")))[0] == 201
    assert (await server.post_event(http, locker_event(4, "kiosk-2")))[0] == 201
    await page.locator('[data-locker="kiosk-2/L4"]').wait_for(timeout=5000)
    assert any("kiosk-2" in f for f in frames)
    assert not any("kiosk-1" in f for f in frames)
    # a bookmark opens the same view
    bookmarked, _, _ = await open_console(
        browser, server, token("panel", "op-1"), "?kiosk=kiosk-2&state=open"
    )
    assert await bookmarked.locator("[data-locker]").count() == 2
    assert await bookmarked.get_by_label("Locker state").input_value() == "open"
    assert errors == []


async def test_scoped_panel_sees_only_its_kiosks(server, http, browser, tmp_path: Path) -> None:
    for n, kiosk in ((1, "kiosk-1"), (2, "kiosk-2"), (3, "kiosk-3")):
        assert (await server.post_event(http, locker_event(n, kiosk)))[0] == 201
        await sim_kiosk(server, kiosk)
    assert (await server.post_event(http, help_event(5, "kiosk-1", "urgent")))[0] == 201
    assert (await server.post_event(http, help_event(6, "kiosk-2", "low")))[0] == 201
    scope = {"kiosk": ["kiosk-2", "kiosk-3"]}
    page, errors, _ = await open_console(browser, server, token("panel", "op-2", scope), width=360)
    await page.locator('#roster li[data-online="true"]').nth(1).wait_for(timeout=5000)
    kiosks = await page.locator("#roster li[data-kiosk]").evaluate_all(
        "items => items.map(i => i.dataset.kiosk)"
    )
    assert kiosks == ["kiosk-2", "kiosk-3"]
    lockers = await page.locator("[data-locker]").evaluate_all(
        "items => items.map(i => i.dataset.locker)"
    )
    assert lockers == ["kiosk-2/L2", "kiosk-3/L3"]
    assert await page.locator("[data-help]").count() == 1
    assert await page.get_by_role("button", name="Send to kiosk-1").count() == 0
    # usable at 360 px: nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await page.screenshot(path=str(tmp_path / "console-360.png"), full_page=True)
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / "console-360.png"), full_page=True)
    # a kiosk token gets the board without roster or command buttons
    viewer, _, _ = await open_console(browser, server, token("kiosk", "kiosk-2"))
    assert await viewer.get_by_role("button", name="Send to kiosk-2").count() == 0
    assert await viewer.locator("#roster-section").is_hidden()
    assert errors == []
