"""Operations: latency percentiles, readiness, limits, logging, admin UI."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import socketio
from prometheus_client.parser import text_string_to_metric_families

from lockerbus.metrics import LatencyWindow
from tests.storekit import FakeClock
from tests.support import connect, locker_event


def test_latency_percentiles_match_a_known_sample() -> None:
    window = LatencyWindow(window_seconds=300, clock=FakeClock())
    for ms in range(1, 1001):  # 1..1000 ms, uniformly
        window.observe(ms / 1000)
    summary = window.summary()
    assert summary["count"] == 1000
    for name, expected in (("p50", 500), ("p95", 950), ("p99", 990)):
        value = summary[name]
        assert value is not None
        assert abs(value - expected) / expected < 0.1, (name, value)


def test_latency_window_forgets_old_samples() -> None:
    clock = FakeClock()
    window = LatencyWindow(window_seconds=60, slices=6, clock=clock)
    window.observe(0.5)
    clock.now += 30
    window.observe(0.001)
    assert window.summary()["count"] == 2
    clock.now += 45  # the first sample's slice is now older than the window
    summary = window.summary()
    assert summary["count"] == 1
    assert summary["p99"] is not None and summary["p99"] < 2
    clock.now += 600
    assert window.summary() == {"count": 0, "p50": None, "p95": None, "p99": None}


async def test_readiness_goes_503_when_the_store_fails(server_factory, http, tmp_path) -> None:
    path = tmp_path / "events.db"
    server = await server_factory(store=f"sqlite:///{path}")
    async with http.get(f"{server.url}/readyz") as resp:
        assert resp.status == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    async with http.get(f"{server.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "unavailable"
    assert "removed" in body["reason"]
    status, error = await server.post_event(http, locker_event(0))
    assert status == 503
    assert error["error"]["code"] == "store_unavailable"
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200


async def test_store_unavailable_over_socket_is_never_broadcast(server_factory, tmp_path) -> None:
    path = tmp_path / "events.db"
    server = await server_factory(store=f"sqlite:///{path}")
    watcher = await connect(server, "/ws/lockers", auth={"replay": False})
    await watcher.wait_events("/ws/lockers", "replay_complete", 1)
    publisher = await connect(server, "/ws/lockers", role="gateway", auth={"replay": False})
    # its replay_complete needs the store too: a file removed before it is sent drops the
    # publisher (replay failed), and the publish below would wait for an ack in vain
    await publisher.wait_events("/ws/lockers", "replay_complete", 1)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    ack = await publisher.call("publish", locker_event(0), "/ws/lockers")
    assert ack["ok"] is False
    assert ack["error"]["code"] == "store_unavailable"
    # the ack came after the broadcast would have: nothing was queued for the watcher
    ping = await watcher.call("subscribe", {"room": "locker_updates"}, "/ws/lockers")
    assert ping == {"ok": True}
    assert watcher.events("/ws/lockers", "locker_state_changed") == []


async def test_max_connections_per_principal(server_factory) -> None:
    server = await server_factory(max_connections_per_principal=2)
    first = await connect(server, ["/ws/lockers", "/ws/help"], role="panel", sub="p")
    refused = await connect(server, "/ws/events", role="panel", sub="p", expect_refusal=True)
    await refused.wait_for(lambda: "/ws/events" in refused.connect_errors)
    assert refused.connect_errors["/ws/events"]["data"]["code"] == "forbidden"
    other = await connect(server, "/ws/events", role="panel", sub="q")
    assert other.sio.connected
    await first.close()
    again = await connect(server, "/ws/events", role="panel", sub="p")
    assert again.sio.connected


async def test_logs_name_what_happened_and_never_a_token(server, http, caplog) -> None:
    caplog.set_level(logging.INFO, logger="lockerbus")
    token = server.token("panel", "panel-log")
    client = await connect(server, "/ws/lockers", token=token)
    await client.wait_events("/ws/lockers", "replay_complete", 1)
    await connect(server, "/ws/lockers", token=token + "x", expect_refusal=True)
    ack = await client.call("publish", locker_event(0), "/ws/lockers")
    assert ack["error"]["code"] == "forbidden"
    await client.close()
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("lockerbus."))
    assert "connected sid=" in text and "sub=panel-log" in text
    assert "connection refused namespace=/ws/lockers code=unauthorized" in text
    assert "publish rejected code=forbidden" in text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


async def test_admin_ui_is_off_by_default_and_needs_credentials(server_factory) -> None:
    plain = await server_factory()
    sio = socketio.AsyncClient()
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await sio.connect(
            plain.url, namespaces=["/admin"], transports=["websocket"], wait_timeout=5
        )
    assert not sio.connected
    await sio.disconnect()

    server = await server_factory(
        admin_ui=True, admin_username="ops", admin_password="pw-" + "x" * 20
    )
    good = socketio.AsyncClient()
    await good.connect(
        server.url,
        namespaces=["/admin"],
        auth={"username": "ops", "password": "pw-" + "x" * 20},
        transports=["websocket"],
        wait_timeout=5,
    )
    assert good.connected
    await good.disconnect()
    bad = socketio.AsyncClient()
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await bad.connect(
            server.url,
            namespaces=["/admin"],
            auth={"username": "ops", "password": "wrong"},
            transports=["websocket"],
            wait_timeout=5,
        )
    assert not bad.connected
    await bad.disconnect()


async def test_metrics_cover_replay_fallback_evictions_and_commands(server_factory, http) -> None:
    server = await server_factory(max_events=3)
    listener = await connect(server, "/ws/lockers", auth={"replay": False})
    await listener.wait_events("/ws/lockers", "replay_complete", 1)
    for n in range(4):  # the namespace holds three: the fourth evicts (capacity)
        await server.post_event(http, locker_event(n))
    client = await connect(server, "/ws/lockers", auth={"last_seq": 0})
    await client.wait_events("/ws/lockers", "replay_complete", 1)
    async with http.post(
        f"{server.url}/api/commands",
        json={"type": "open", "kioskId": "nobody"},
        headers=server.headers("panel"),
    ) as resp:
        assert resp.status == 201
    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("lockerbus_store_evictions_total", (("reason", "capacity"),))] >= 1
    assert samples[("lockerbus_events_replayed_total", ())] >= 1
    fallback = ("lockerbus_fallback_broadcasts_total", (("namespace", "/ws/lockers"),))
    assert samples[fallback] == 4
    assert samples[("lockerbus_commands_total", (("outcome", "kiosk_offline"),))] == 1
    assert samples[("lockerbus_connections", (("namespace", "/ws/lockers"),))] == 2
