"""lockerbus.client against a real server: reconnect/replay, offline queue, rejections, commands."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockerbus.app import GATEWAY
from lockerbus.client import (
    ClientOptions,
    ConnectionRefused,
    KioskClient,
    LockerbusClient,
    PublishDropped,
    PublishRejected,
    backoff_delay,
    command_answer,
)
from tests.support import WAIT, RunningServer, free_port, locker_event, start_server

FAST = ClientOptions(reconnect_first_delay=0.3, reconnect_max_delay=0.6, ack_timeout=5)


class Recorder:
    """Collects what a client's handlers receive; wait for a condition without sleeping."""

    def __init__(self, client: LockerbusClient, *names: str) -> None:
        self.items: list[tuple[str, Any]] = []
        self.changed = asyncio.Condition()
        for name in names:
            client.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        async def handler(payload: Any) -> None:
            async with self.changed:
                self.items.append((name, payload))
                self.changed.notify_all()

        return handler

    def of(self, name: str) -> list[Any]:
        return [p for n, p in self.items if n == name]

    async def until(self, predicate: Any) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(wait(), WAIT)


async def drop(server: RunningServer, namespace: str) -> None:
    gateway = server.app[GATEWAY]
    sids = list(gateway.hub.connections[namespace])
    assert sids
    for sid in sids:
        await gateway.sio.disconnect(sid, namespace=namespace)


async def stored(server: RunningServer, http: Any, namespace: str) -> list[dict[str, Any]]:
    async with http.get(
        f"{server.url}/api/events",
        params={"namespace": namespace, "limit": "1000"},
        headers=server.headers(),
    ) as resp:
        return list((await resp.json())["events"])


async def test_reconnect_after_server_drop_replays_without_gap_or_double(server, http) -> None:
    for n in range(3):
        await server.post_event(http, locker_event(n))
    client = LockerbusClient(
        server.url,
        server.token("panel", "panel-1"),
        namespaces=["/ws/lockers"],
        replay={"last_seq": 0},
        options=FAST,
    )
    rec = Recorder(client, "locker_state_changed", "replay_complete", "disconnect", "connect")
    async with client:
        await rec.until(lambda: len(rec.of("replay_complete")) == 1)
        assert client.recovered == {"/ws/lockers": True}
        await server.post_event(http, locker_event(3))
        await rec.until(lambda: len(rec.of("locker_state_changed")) == 4)

        await drop(server, "/ws/lockers")
        await rec.until(lambda: len(rec.of("disconnect")) == 1)
        for n in range(4, 7):  # published while the client is away
            status, _ = await server.post_event(http, locker_event(n))
            assert status == 201
        await rec.until(lambda: len(rec.of("replay_complete")) == 2)
        await server.post_event(http, locker_event(7))
        await rec.until(lambda: len(rec.of("locker_state_changed")) == 8)

        events = rec.of("locker_state_changed")
        assert [e["seq"] for e in events] == list(range(1, 9))
        assert [bool(e.get("replayed")) for e in events[4:7]] == [True, True, True]
        assert not events[7].get("replayed")
        assert rec.of("replay_complete")[1]["recovered"] is True
        assert client.recovered == {"/ws/lockers": True}
        assert client.positions["/ws/lockers"][0] == 8
        assert client.links["/ws/lockers"].connects == 2
        assert client.duplicates == 0


async def test_duplicates_by_seq_are_dropped(server) -> None:
    client = LockerbusClient(server.url, server.token(), namespaces=["/ws/lockers"])
    rec = Recorder(client, "locker_state_changed")
    async with client:
        handler = client.links["/ws/lockers"]._event_handler("locker_state_changed")
        event = {"seq": 41, "epoch": "e1", "data": {}}
        handler(event)
        handler({**event, "replayed": True})
        handler({"seq": 40, "epoch": "e1"})
        handler({"seq": 1, "epoch": "e2"})  # a new sequence space starts over
        await rec.until(lambda: len(rec.items) == 2)
        assert [(e["seq"], e["epoch"]) for e in rec.of("locker_state_changed")] == [
            (41, "e1"),
            (1, "e2"),
        ]
        assert client.duplicates == 2


async def test_offline_queue_keeps_order_and_drops_the_oldest(http) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = ClientOptions(
        reconnect_first_delay=0.05, reconnect_max_delay=0.2, queue_size=3, ack_timeout=5
    )
    from lockerbus.auth import issue_token
    from tests.support import SECRET

    client = KioskClient(url, issue_token(SECRET, "kiosk", "kiosk-1"), "kiosk-1", options=options)
    async with client:  # no server yet: starts offline
        assert not client.connected
        first = asyncio.create_task(client.publish_locker_state_changed("L0", "closed", "open"))
        await asyncio.sleep(0)  # let it enqueue
        for n in range(1, 5):
            await client.publish_locker_state_changed(f"L{n}", "closed", "open", wait=False)
        assert client.dropped == 2 and client.pending == 3
        with pytest.raises(PublishDropped):
            await first
        server = await start_server(port=port)
        try:
            await asyncio.wait_for(client.wait_sent(), WAIT)
            events = await stored(server, http, "/ws/lockers")
            assert [e["data"]["lockerId"] for e in events] == ["L2", "L3", "L4"]
            assert client.published == 3
            # online now: a publish returns the stored envelope
            event = await client.publish_locker_state_changed("L9", "open", "error")
            assert event is not None and event["seq"] == 4 and event["data"]["kioskId"] == "kiosk-1"
        finally:
            await client.close()
            await server.stop()


async def test_rejections_are_reported_not_retried(server) -> None:
    client = KioskClient(server.url, server.token("kiosk", "kiosk-1"), "kiosk-1", options=FAST)
    reported: list[PublishRejected] = []
    client.on_rejected(reported.append)
    async with client:
        with pytest.raises(PublishRejected) as info:
            await client.publish_locker_state_changed("L1", "open", "open")
        assert info.value.code == "validation_error"
        assert "data.newState" in info.value.fields
        with pytest.raises(PublishRejected) as info:
            await client.publish(
                "locker_state_changed",
                {"lockerId": "L1", "oldState": "open", "newState": "closed", "kioskId": "other"},
            )
        assert info.value.code == "forbidden"
        # fire-and-forget: the rejection goes to on_rejected, and the queue moves on
        await client.publish("no_such_type", {}, wait=False)
        event = await client.publish_locker_state_changed("L1", "open", "closed")
        assert event is not None and event["seq"] == 1
        assert [r.code for r in reported] == ["validation_error", "forbidden", "unknown_type"]
        assert client.rejected == 3 and client.pending == 0


async def test_on_command_answers_with_the_handler_result(server, http) -> None:
    client = KioskClient(server.url, server.token("kiosk", "kiosk-7"), "kiosk-7", options=FAST)
    seen: list[dict[str, Any]] = []

    @client.on_command
    async def handle(command: dict[str, Any]) -> Any:
        seen.append(command)
        if command["type"] == "open":
            return {"success": True, "message": "opened", "response_data": {"door": "open"}}
        if command["type"] == "status_check":
            return {"temperature": 21}
        raise RuntimeError("buzzer is broken")

    async def command(body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(
            f"{server.url}/api/commands", json=body, headers=server.headers("panel", "panel-1")
        ) as resp:
            assert resp.status == 201, await resp.text()
            return dict((await resp.json())["data"]["result"])

    async with client:
        result = await command({"type": "open", "kioskId": "kiosk-7", "lockerId": "L3"})
        assert result["success"] is True and result["message"] == "opened"
        assert result["response_data"] == {"door": "open"}
        result = await command({"type": "status_check", "kioskId": "kiosk-7"})
        assert result["success"] is True and result["response_data"] == {"temperature": 21}
        result = await command({"type": "buzzer", "kioskId": "kiosk-7"})
        assert result["success"] is False and result["error"] == "buzzer is broken"
    assert [c["type"] for c in seen] == ["open", "status_check", "buzzer"]
    assert seen[0]["lockerId"] == "L3" and seen[0]["issued_by"] == "panel-1"


async def test_disk_queue_survives_a_restart_of_the_client(http, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = str(tmp_path / "outbox.db")
    options = ClientOptions(
        reconnect_first_delay=0.05, reconnect_max_delay=0.2, queue_path=path, ack_timeout=5
    )
    from lockerbus.auth import issue_token
    from tests.support import SECRET

    token = issue_token(SECRET, "kiosk", "kiosk-3")
    async with KioskClient(url, token, "kiosk-3", options=options) as offline:
        await offline.publish_locker_state_changed("L1", "closed", "open", wait=False)
        await offline.request_help(11, "hardware_problem", priority="urgent", wait=False)
        await offline.report_status("degraded", 55, metrics={"cpu_usage": 93}, wait=False)
        assert offline.pending == 3
    # "reboot": a new client object on the same file, and now a server
    server = await start_server(port=port)
    try:
        async with KioskClient(url, token, "kiosk-3", options=options) as rebooted:
            assert rebooted.pending == 3
            await asyncio.wait_for(rebooted.wait_sent(), WAIT)
        lockers = await stored(server, http, "/ws/lockers")
        help_ = await stored(server, http, "/ws/help")
        status = [  # the kiosk's own (the server announces it online too, §11)
            e
            for e in await stored(server, http, "/ws/events")
            if e["type"] == "system_status" and e["source"]["role"] == "kiosk"
        ]
        assert [e["data"]["lockerId"] for e in lockers] == ["L1"]
        assert (
            help_[0]["data"]["priority"] == "urgent" and help_[0]["data"]["kiosk_id"] == "kiosk-3"
        )
        assert status[0]["data"]["metrics"] == {"cpu_usage": 93}
        assert lockers[0]["timestamp"] <= help_[0]["timestamp"] <= status[0]["timestamp"]
        async with KioskClient(url, token, "kiosk-3", options=options) as again:
            assert again.pending == 0  # sent events left the file
    finally:
        await server.stop()


async def test_close_returns_promptly_every_time(server) -> None:
    # a close used to tell python-engineio to disconnect twice at once (once from
    # close(), once from the link's own loop); the second call took the write
    # loop's stop sentinel and the close then hung for a ping interval (~30 s)
    for _ in range(10):
        client = LockerbusClient(server.url, server.token("panel", "p1"))
        await client.start()
        await client.wait_live()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(client.close(), 5)  # cut short if it hangs (it swallows the cancel)
        assert asyncio.get_running_loop().time() - started < 4
        assert all(link.sio is None or not link.sio.connected for link in client.links.values())


async def test_refused_token_stops_at_start(server) -> None:
    client = LockerbusClient(server.url, "not-a-token", namespaces=["/ws/help"])
    with pytest.raises(ConnectionRefused) as info:
        async with client:
            pass
    assert info.value.code == "unauthorized"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt, (low, high) in enumerate([(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (1.5, 3.0)]):
        delays = [backoff_delay(attempt, 0.5, 3.0) for _ in range(200)]
        assert all(low <= d <= high for d in delays)
        assert max(delays) - min(delays) > (high - low) / 4  # jittered, not fixed
    assert backoff_delay(10_000, 0.5, 3.0) <= 3.0


def test_command_answer_shapes() -> None:
    assert command_answer(None) == {"success": True}
    assert command_answer(False) == {"success": False}
    assert command_answer("done") == {"success": True, "message": "done"}
    assert command_answer({"success": 0, "error": "jammed", "x": 1}) == {
        "success": False,
        "error": "jammed",
    }
    assert command_answer({"a": 1}) == {"success": True, "response_data": {"a": 1}}
    with pytest.raises(TypeError):
        command_answer(3)


def test_connection_options_are_checked() -> None:
    with pytest.raises(ValueError, match="transports"):
        ClientOptions(transports=("carrier-pigeon",))
    with pytest.raises(ValueError, match="transports"):
        ClientOptions(transports=())
    with pytest.raises(ValueError, match="ca_file needs ssl_verify"):
        ClientOptions(ca_file="/etc/ssl/ca.pem", ssl_verify=False)


async def test_polling_transport_and_headers_pass_through(server_factory) -> None:
    server = await server_factory()
    seen: list[tuple[str, str]] = []
    namespace = server.app[GATEWAY].sio.namespace_handlers["/ws/events"]
    original = namespace.on_connect

    async def spy(sid, environ, auth=None):  # type: ignore[no-untyped-def]
        seen.append((environ.get("HTTP_X_KIOSK_SITE", ""), environ.get("QUERY_STRING", "")))
        return await original(sid, environ, auth)

    namespace.on_connect = spy
    options = ClientOptions(
        reconnect_first_delay=0.3,
        transports=("polling",),
        headers={"X-Kiosk-Site": "site-7"},
    )
    token = server.token("kiosk", "kiosk-1")
    async with KioskClient(server.url, token, "kiosk-1", options=options) as kiosk:
        await kiosk.wait_live()
        event = await kiosk.report_status("online", 90.0)
    assert event is not None and event["type"] == "system_status"
    assert [site for site, _ in seen] == ["site-7"]
    assert "transport=polling" in seen[0][1]


class AckDropper:
    """A TCP proxy in front of a server that cuts the connection, once, instead of passing
    on the first publish ack: the server stored the event, the client never heard so."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropped = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, acks: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if acks and not self.dropped.is_set() and re.search(rb'"ok": ?true', chunk):
                        self.dropped.set()
                        for w in (writer, up_writer):
                            w.transport.abort()
                        return
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


async def test_a_resend_after_a_lost_ack_is_stored_once(server_factory) -> None:
    server = await server_factory()
    proxy = AckDropper(server.port)
    await proxy.start()
    try:
        token = server.token("kiosk", "kiosk-1")
        url = f"http://127.0.0.1:{proxy.port}"
        async with KioskClient(url, token, "kiosk-1", options=FAST) as kiosk:
            await kiosk.wait_live()
            event = await kiosk.publish_locker_state_changed("L1", "closed", "open")
            assert proxy.dropped.is_set(), "the first ack was lost"
            assert kiosk.published == 1
    finally:
        await proxy.close()
    assert event is not None
    params = {"namespace": "/ws/lockers", "limit": "100"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/api/events", params=params, headers=server.headers()) as resp,
    ):
        stored = (await resp.json())["events"]
    assert [e["id"] for e in stored] == [event["id"]], "stored exactly once"
    assert stored[0] == event


async def test_recovered_false_hands_the_state_to_rebuild_from(server_factory, http) -> None:
    """Contract §11: history lost (evicted here) -> the client loads /api/lockers."""
    server = await server_factory(max_events=2)
    for n in range(5):  # locker L0..L4: only the last two events are still held
        status, _ = await server.post_event(http, locker_event(n))
        assert status == 201
    client = LockerbusClient(
        server.url,
        server.token("panel", "panel-1"),
        namespaces=["/ws/lockers"],
        positions={"/ws/lockers": (1, None)},
        options=FAST,
    )
    rec = Recorder(client, "replay_complete", "state")
    async with client:
        await rec.until(lambda: len(rec.of("state")) == 1)
        assert rec.of("replay_complete")[0]["recovered"] is False
        [state] = rec.of("state")
        assert state["namespace"] == "/ws/lockers"
        assert state["last_seq"] == 5
        # all five lockers, though three of their events were evicted
        assert [x["lockerId"] for x in state["lockers"]] == ["L0", "L1", "L2", "L3", "L4"]
        assert client.links["/ws/lockers"].state == state
