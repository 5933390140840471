"""/metrics: every series from the start, the default collectors, build info,
a separate metrics port, and promtool's own check of the exposition."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from lockerbus import __version__
from lockerbus.events import NAMESPACES
from lockerbus.metrics import RELAY_ERRORS
from tests.cluster_support import wait_ready
from tests.conftest import require_binary
from tests.metrics_support import samples, scrape
from tests.support import connect, free_port, locker_event


async def test_every_connection_series_exists_before_anyone_connects(server, http) -> None:
    found = samples(await scrape(http, server.url))
    for namespace in NAMESPACES:
        assert found[("lockerbus_connections", (("namespace", namespace),))] == 0
    assert found[("lockerbus_build_info", (("version", __version__),))] == 1


async def test_process_platform_and_gc_collectors_are_there(server, http) -> None:
    names = {name for name, _ in samples(await scrape(http, server.url))}
    assert "process_resident_memory_bytes" in names
    assert "process_open_fds" in names
    assert any(name.startswith("python_gc_") for name in names)
    assert "python_info" in names


async def test_separate_metrics_port_serves_metrics_only(server_factory, http) -> None:
    port = free_port()
    server = await server_factory(metrics_port=port)
    text = await scrape(http, f"http://127.0.0.1:{port}")
    assert "lockerbus_build_info" in text
    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
        assert resp.status == 404
    # the main port keeps /metrics too
    assert "lockerbus_build_info" in await scrape(http, server.url)


async def promtool_check(text: str) -> None:
    promtool = require_binary("promtool")
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_promtool_accepts_the_exposition(server, http) -> None:
    require_binary("promtool")
    client = await connect(server, "/ws/lockers", role="kiosk", sub="kiosk-1")
    status, _ = await server.post_event(http, locker_event(1))
    assert status == 201
    await client.sio.disconnect()
    text = await scrape(http, server.url)
    assert "lockerbus_events_published_total" in text
    await promtool_check(text)


@pytest.mark.needs_redis
async def test_a_cluster_instance_has_every_relay_series_and_promtool_accepts_it(
    redis_server, server_factory, http
) -> None:
    require_binary("promtool")
    url = redis_server.url
    server = await server_factory(store=url, message_queue=url)
    await wait_ready(http, server)  # subscribed: nothing has gone wrong yet
    text = await scrape(http, server.url)
    found = samples(text)
    for kind in RELAY_ERRORS:
        assert found[("lockerbus_relay_errors_total", (("kind", kind),))] == 0
    assert found[("lockerbus_relay_filled_events_total", ())] == 0
    assert found[("lockerbus_relay_lag_seconds", ())] == 0
    await promtool_check(text)


async def test_replay_sizes_are_a_histogram_per_kind(server, http) -> None:
    for n in range(3):
        status, _ = await server.post_event(http, locker_event(n))
        assert status == 201
    before = samples(await scrape(http, server.url))
    assert before[("lockerbus_replay_events_count", (("kind", "connect"),))] == 0
    client = await connect(server, "/ws/lockers", auth={"last_seq": 1})
    await client.wait_events("/ws/lockers", "replay_complete", 1)
    nothing = await connect(server, "/ws/lockers", auth={"replay": False})  # asks for none
    await nothing.wait_events("/ws/lockers", "replay_complete", 1)
    found = samples(await scrape(http, server.url))
    connect_kind = (("kind", "connect"),)
    assert found[("lockerbus_replay_events_count", connect_kind)] == 1
    assert found[("lockerbus_replay_events_sum", connect_kind)] == 2
    assert found[("lockerbus_replay_events_bucket", (("kind", "connect"), ("le", "1.0")))] == 0
    assert found[("lockerbus_replay_events_bucket", (("kind", "connect"), ("le", "5.0")))] == 1
    assert found[("lockerbus_events_replayed_total", ())] == 2
    assert found[("lockerbus_replay_events_count", (("kind", "subscribe"),))] == 0


async def test_slow_consumer_and_relay_series_exist_from_the_start(server, http) -> None:
    found = samples(await scrape(http, server.url))
    for namespace in NAMESPACES:
        key = ("lockerbus_slow_consumer_disconnects_total", (("namespace", namespace),))
        assert found[key] == 0
    assert found[("lockerbus_relay_lag_seconds", ())] == 0  # one instance: no relay
