"""The console's locker-state and help-priority filters, applied by the server (§10) with a
follow connection for what is shown (lockerbus/static/follow.js), in real headless Chromium.

What the page receives is read from the WebSocket frames Chromium saw, not from the page."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.browser_support import chromium
from tests.support import RunningServer, post_event
from tests.test_board import drop_all
from tests.test_board_console import help_event, open_console, token

pytestmark = pytest.mark.needs_chromium

#: a Socket.IO event packet (no ack id) as one WebSocket text frame
EVENT_FRAME = re.compile(r"^42(/ws/\w+),(\[.*\])$", re.S)


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    async with chromium() as launched:
        yield launched


def locker(kiosk: str, locker_id: str, old: str, new: str) -> dict[str, Any]:
    return {
        "type": "locker_state_changed",
        "data": {"lockerId": locker_id, "oldState": old, "newState": new, "kioskId": kiosk},
    }


def help_update(n: int, old: str, new: str, agent: str = "op-9") -> dict[str, Any]:
    return {
        "type": "help_status_updated",
        "data": {
            "id": n,
            "old_status": old,
            "new_status": new,
            "agent_id": agent,
            "updated_at": "2026-11-26T19:05:00+00:00",
        },
    }


async def publish(server: RunningServer, http: Any, *bodies: dict[str, Any]) -> list[int]:
    """Publish ``bodies`` in one batch (back to back, in order); their seqs."""
    status, answer = await post_event(
        server, http, {"events": list(bodies)}, path="/api/events/batch"
    )
    assert status == 200 and all(r["ok"] for r in answer["results"]), answer
    return [r["event"]["seq"] for r in answer["results"]]


def socket_events(frames: list[str], namespace: str) -> list[dict[str, Any]]:
    """The events of ``namespace`` the page received over its sockets."""
    events = []
    for frame in frames:
        match = EVENT_FRAME.match(frame)
        if match and match.group(1) == namespace:
            name, payload = json.loads(match.group(2))[:2]
            if isinstance(payload, dict) and payload.get("type") == name:
                events.append(payload)
    return events


class SubscribeGate:
    """Routes a page's WebSockets; while ``holding``, the follow connection's
    re-subscribes (``{locker: ...}`` filters) are held back until :meth:`release`."""

    def __init__(self) -> None:
        self.holding = False
        self.held: list[tuple[Any, str]] = []
        self.seen = asyncio.Event()

    def route(self, ws: Any) -> None:
        upstream = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            text = message if isinstance(message, str) else ""
            if self.holding and '"subscribe"' in text and '"locker":' in text:
                self.held.append((upstream, text))
                self.seen.set()
            else:
                upstream.send(message)

        ws.on_message(to_server)
        upstream.on_message(ws.send)

    def release(self) -> None:
        self.holding = False
        for upstream, text in self.held:
            upstream.send(text)
        self.held.clear()


async def shown(page: Any, what: str) -> list[str]:
    attribute = {"locker": "data-locker", "help": "data-help"}[what]
    return list(
        await page.locator(f"[{attribute}]").evaluate_all(
            f"items => items.map(i => i.getAttribute('{attribute}'))"
        )
    )


async def test_state_filter_receives_what_it_shows_and_what_takes_it_out(
    server, http, browser
) -> None:
    await publish(
        server,
        http,
        locker("kiosk-1", "A1", "closed", "error"),
        locker("kiosk-1", "A2", "closed", "open"),
        locker("kiosk-2", "B1", "open", "closed"),
        locker("kiosk-2", "B2", "closed", "error"),
    )
    page, errors, frames = await open_console(browser, server, token("panel", "op-1"))
    assert len(await shown(page, "locker")) == 4
    # chosen in the form, kept in the address
    await page.get_by_label("Locker state").select_option("error")
    await page.get_by_label("Help priority").select_option("urgent")
    await page.get_by_role("button", name="Apply filters").click()
    await page.wait_for_url("**/board?state=error&priority=urgent")
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    assert await shown(page, "locker") == ["kiosk-1/A1", "kiosk-2/B2"]
    frames.clear()

    # A2 never is in error: none of its events reach the page; B1 enters, A1 leaves
    quiet = await publish(server, http, locker("kiosk-1", "A2", "open", "closed"))
    entered, left = await publish(
        server,
        http,
        locker("kiosk-2", "B1", "closed", "error"),
        locker("kiosk-1", "A1", "error", "maintenance"),
    )
    await page.locator('[data-locker="kiosk-1/A1"]').wait_for(state="detached", timeout=5000)
    await page.locator('[data-locker="kiosk-2/B1"]').wait_for(timeout=5000)
    # B1, shown only since it entered live, leaves again; A2 moves on meanwhile
    quiet += await publish(server, http, locker("kiosk-1", "A2", "closed", "open"))
    (b1_left,) = await publish(server, http, locker("kiosk-2", "B1", "error", "reserved"))
    await page.locator('[data-locker="kiosk-2/B1"]').wait_for(state="detached", timeout=5000)
    assert await shown(page, "locker") == ["kiosk-2/B2"]
    await page.locator(f'#feed li[data-ns="/ws/lockers"][data-seq="{b1_left}"]').wait_for()

    received = socket_events(frames, "/ws/lockers")
    seqs = {e["seq"] for e in received}
    assert entered in seqs and left in seqs  # the entry (main), the exit (follow)
    assert not seqs & set(quiet)
    for event in received:  # each matches the filter or takes a shown locker out
        data = event["data"]
        assert data["newState"] == "error" or data["oldState"] == "error", event
    # the bookmark opens the same view
    again, _, _ = await open_console(
        browser, server, token("panel", "op-1"), "?state=error&priority=urgent"
    )
    assert await shown(again, "locker") == ["kiosk-2/B2"]
    assert await again.get_by_label("Locker state").input_value() == "error"
    assert await again.get_by_label("Help priority").input_value() == "urgent"
    assert errors == []


async def test_a_locker_entering_and_leaving_at_once_is_not_missed(server, http, browser) -> None:
    """The exit happens before the follow connection's new filter is in force: the page
    holds its re-subscribe until then, so only the check over /api/events can bring it."""
    await publish(server, http, locker("kiosk-1", "A1", "closed", "error"))
    gate = SubscribeGate()
    page, errors, _ = await open_console(
        browser, server, token("panel", "op-1"), "?state=error", route_websockets=gate.route
    )
    assert await shown(page, "locker") == ["kiosk-1/A1"]
    gate.holding = True
    entered, left = await publish(
        server,
        http,
        locker("kiosk-1", "A2", "closed", "error"),
        locker("kiosk-1", "A2", "error", "closed"),
    )
    # A2 is shown (the entry came on the main connection) and the follow
    # connection's re-subscribe is held: the exit has not reached the page
    await asyncio.wait_for(gate.seen.wait(), 5)
    await page.locator('[data-locker="kiosk-1/A2"]').wait_for(timeout=5000)
    gate.release()
    await page.locator('[data-locker="kiosk-1/A2"]').wait_for(state="detached", timeout=5000)
    stats = await page.evaluate("window.lockerbusFollowStats")
    assert stats["checks"] >= 1 and stats["reloads"] == 0
    for seq in (entered, left):
        await page.locator(f'#feed li[data-ns="/ws/lockers"][data-seq="{seq}"]').wait_for()

    # without holding anything: enter and leave back to back, several times
    for n in range(3, 8):
        await publish(
            server,
            http,
            locker("kiosk-1", f"A{n}", "closed", "error"),
            locker("kiosk-1", f"A{n}", "error", "open"),
        )
    (last,) = await publish(server, http, locker("kiosk-2", "B1", "closed", "error"))
    await page.locator('[data-locker="kiosk-2/B1"]').wait_for(timeout=5000)
    # every one of them left again: none may stay shown (a missed exit would)
    await page.wait_for_function(
        "keys => keys.every(k => !document.querySelector(`[data-locker='${k}']`))",
        arg=[f"kiosk-1/A{n}" for n in range(3, 8)],
        timeout=5000,
    )
    assert await shown(page, "locker") == ["kiosk-1/A1", "kiosk-2/B1"]
    assert last > left
    assert errors == []


async def test_an_entry_no_longer_held_reloads_the_snapshot(server_factory, http, browser) -> None:
    """The entry is evicted (max_events 4) before the check reads it: the page cannot
    tell what happened since, so it reloads /api/lockers and follows from there."""
    server = await server_factory(max_events=4)
    await publish(server, http, locker("kiosk-1", "A1", "closed", "error"))
    gate = SubscribeGate()
    page, errors, _ = await open_console(
        browser, server, token("panel", "op-1"), "?state=error", route_websockets=gate.route
    )
    gate.holding = True
    await publish(server, http, locker("kiosk-1", "A2", "closed", "error"))
    await asyncio.wait_for(gate.seen.wait(), 5)
    await page.locator('[data-locker="kiosk-1/A2"]').wait_for(timeout=5000)
    # A2 leaves, then enough traffic of hidden lockers to evict its entry
    await publish(
        server,
        http,
        locker("kiosk-1", "A2", "error", "closed"),
        *(
            locker("kiosk-2", "B1", *states)
            for states in [("open", "closed"), ("closed", "open")] * 3
        ),
    )
    gate.release()
    await page.locator('[data-locker="kiosk-1/A2"]').wait_for(state="detached", timeout=5000)
    stats = await page.evaluate("window.lockerbusFollowStats")
    assert stats["reloads"] == 1
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    # followed again from the snapshot: A1 leaving still reaches the page
    await publish(server, http, locker("kiosk-1", "A1", "error", "open"))
    await page.locator('[data-locker="kiosk-1/A1"]').wait_for(state="detached", timeout=5000)
    assert await shown(page, "locker") == []
    assert errors == []


async def test_both_connections_resume_after_a_server_drop(server, http, browser) -> None:
    await publish(
        server,
        http,
        locker("kiosk-1", "A1", "closed", "error"),
        locker("kiosk-1", "A2", "closed", "error"),
    )
    page, errors, _ = await open_console(browser, server, token("panel", "op-1"), "?state=error")
    assert await shown(page, "locker") == ["kiosk-1/A1", "kiosk-1/A2"]
    assert await drop_all(server, "/ws/lockers") == 2  # the main and the follow connection
    await page.wait_for_selector('#status[data-status="reconnecting"]', timeout=5000)
    # meanwhile A1 leaves, A3 enters and leaves, A4 enters
    missed = await publish(
        server,
        http,
        locker("kiosk-1", "A1", "error", "open"),
        locker("kiosk-1", "A3", "closed", "error"),
        locker("kiosk-1", "A3", "error", "closed"),
        locker("kiosk-1", "A4", "closed", "error"),
    )
    await page.locator('[data-locker="kiosk-1/A4"]').wait_for(timeout=10_000)
    await page.wait_for_selector('#mode[data-mode="live"]', timeout=10_000)
    await page.wait_for_function(
        "() => !document.querySelector('[data-locker=\"kiosk-1/A3\"]')", timeout=5000
    )
    assert await shown(page, "locker") == ["kiosk-1/A2", "kiosk-1/A4"]
    for seq in missed:  # each once in the feed
        assert await page.locator(f'#feed li[data-ns="/ws/lockers"][data-seq="{seq}"]').count() == 1
    # and live again on both: A2 leaves
    await publish(server, http, locker("kiosk-1", "A2", "error", "reserved"))
    await page.locator('[data-locker="kiosk-1/A2"]').wait_for(state="detached", timeout=5000)
    assert errors == []


async def test_priority_filter_follows_status_updates(server, http, browser) -> None:
    for n, priority in ((1, "urgent"), (2, "high")):
        assert (await server.post_event(http, help_event(n, priority=priority)))[0] == 201
    page, errors, frames = await open_console(
        browser, server, token("panel", "op-1"), "?priority=urgent"
    )
    assert await shown(page, "help") == ["1"]
    frames.clear()
    (hidden,) = await publish(server, http, help_update(2, "open", "assigned"))
    await publish(server, http, help_update(1, "open", "assigned"))
    await page.locator('[data-help="1"][data-status="assigned"]').wait_for(timeout=5000)
    assert "op-9" in await page.get_by_role("listitem", name="Help request 1").inner_text()

    # a request arriving live is followed too, even when it changes at once
    await publish(
        server,
        http,
        help_event(3, priority="urgent"),
        help_update(3, "open", "assigned"),
        help_event(4, priority="low"),
    )
    await page.locator('[data-help="3"][data-status="assigned"]').wait_for(timeout=5000)
    # the operator's own resolve under the filter
    await page.get_by_label("Resolution notes for help request 1").fill("done")
    await page.get_by_role("button", name="Resolve help request 1").click()
    await page.locator('[data-help="1"]').wait_for(state="detached", timeout=5000)
    # resolved elsewhere
    (resolved,) = await publish(server, http, help_update(3, "assigned", "resolved"))
    await page.locator('[data-help="3"]').wait_for(state="detached", timeout=5000)
    await page.locator(f'#feed li[data-ns="/ws/help"][data-seq="{resolved}"]').wait_for()
    assert await shown(page, "help") == []

    received = socket_events(frames, "/ws/help")
    assert hidden not in {e["seq"] for e in received}
    for event in received:  # urgent requests and updates of shown ones only
        data = event["data"]
        assert data.get("priority", "urgent") == "urgent" and data["id"] in (1, 3), event
    assert errors == []
