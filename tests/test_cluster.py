"""Several instances behind one Redis (contract §9): real lockerbus processes,
one real redis-server, real Socket.IO clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster_support import wait_ready
from tests.metrics_support import samples, scrape
from tests.processes import ServerProcess, stored_events
from tests.redis_support import RedisServer
from tests.support import connect, locker_event, start_server

pytestmark = [pytest.mark.needs_redis, pytest.mark.slow]

LOCKERS = "/ws/lockers"
EVENTS = "/ws/events"


async def instances(redis: RedisServer, directory: Path, count: int = 2) -> list[ServerProcess]:
    directory.mkdir(parents=True, exist_ok=True)
    env = {"LOCKERBUS_MESSAGE_QUEUE": redis.url, "LOCKERBUS_LOG_LEVEL": "INFO"}
    procs = [
        ServerProcess(store=redis.url, log_path=directory / f"lockerbus-{i}.log", env=env)
        for i in range(count)
    ]
    await asyncio.gather(*(p.started() for p in procs))
    async with aiohttp.ClientSession() as http:  # ready: store answers, pub/sub subscribed
        await wait_ready(http, *procs)
    return procs


@pytest.fixture
async def cluster_factory(tmp_path):  # type: ignore[no-untyped-def]
    started: list[ServerProcess] = []

    async def factory(redis: RedisServer, count: int = 2) -> list[ServerProcess]:
        procs = await instances(redis, tmp_path / "procs", count)
        started.extend(procs)
        return procs

    yield factory
    await asyncio.gather(*(p.stopped() for p in started))


async def subscriber(server: Any, *, join: bool = True) -> Any:
    """A panel on /ws/lockers; ``join=False`` leaves the room empty, so the
    per-instance fallback (contract §3) sends it everything."""
    client = await connect(server, LOCKERS, auth={"replay": False})
    await client.wait_events(LOCKERS, "replay_complete", 1)
    if join:
        ack = await client.call("subscribe", {"room": "locker_updates"}, LOCKERS)
        assert ack == {"ok": True}
    return client


def live_seqs(client: Any) -> list[int]:
    return [e["seq"] for e in client.events(LOCKERS, "locker_state_changed")]


async def test_publish_on_one_instance_reaches_subscribers_on_both_once(
    redis_server, cluster_factory, http
) -> None:
    a, b = await cluster_factory(redis_server)
    on_a, on_b = await subscriber(a), await subscriber(b)
    accepted = []
    for n in range(3):
        status, event = await a.post_event(http, locker_event(n))
        assert status == 201, event
        accepted.append(event)
    status, last = await b.post_event(http, locker_event(3))
    assert status == 201
    accepted.append(last)
    assert [e["seq"] for e in accepted] == [1, 2, 3, 4]
    for client in (on_a, on_b):
        await client.wait_for(lambda c=client: 4 in live_seqs(c))
        assert client.events(LOCKERS, "locker_state_changed") == accepted, "each once, in order"


async def test_replay_from_the_other_instance_recovers(redis_server, cluster_factory, http) -> None:
    a, b = await cluster_factory(redis_server)
    first = [(await a.post_event(http, locker_event(n)))[1] for n in range(2)]
    epoch, seen = first[-1]["epoch"], first[-1]["seq"]
    missed = [(await a.post_event(http, locker_event(n)))[1] for n in range(2, 6)]
    client = await connect(b, LOCKERS, auth={"last_seq": seen, "epoch": epoch})
    (done,) = await client.wait_events(LOCKERS, "replay_complete", 1)
    assert done["recovered"] is True
    assert (done["count"], done["last_seq"], done["epoch"]) == (4, 6, epoch)
    replayed = client.events(LOCKERS, "locker_state_changed")
    assert [e["seq"] for e in replayed] == [e["seq"] for e in missed]
    assert all(e["replayed"] is True for e in replayed)
    status, _live = await a.post_event(http, locker_event(7))
    assert status == 201
    await client.wait_for(lambda: 7 in live_seqs(client))
    assert live_seqs(client) == [3, 4, 5, 6, 7]


async def check_publishers_on_both(a: Any, b: Any, http: aiohttp.ClientSession) -> None:
    """Both instances publish at once (and a client joins midway, replaying from 0):
    the seqs handed out are 1..N once each, and every client sees them in order."""
    watchers = [await subscriber(a, join=False), await subscriber(b, join=False)]
    per_instance = 60

    async def publish(server: ServerProcess, offset: int) -> list[int]:
        seqs = []
        for n in range(per_instance):
            status, event = await server.post_event(http, locker_event(offset + n))
            assert status == 201, event
            seqs.append(event["seq"])
        return seqs

    # A late joiner replays while both publish: it must see no seq twice either.
    late_joiner: list[Any] = []

    async def join_midway() -> None:
        await asyncio.sleep(0)
        late_joiner.append(await connect(b, LOCKERS, auth={"last_seq": 0}))

    results = await asyncio.gather(publish(a, 0), publish(b, 1000), join_midway())
    total = 2 * per_instance
    assert sorted(results[0] + results[1]) == list(range(1, total + 1))
    for client in watchers:
        await client.wait_for(lambda c=client: len(live_seqs(c)) >= total)
        assert live_seqs(client) == list(range(1, total + 1))
    (joiner,) = late_joiner
    await joiner.wait_for(lambda: total in live_seqs(joiner))
    got = live_seqs(joiner)
    assert got == sorted(set(got)), "strictly increasing, never twice"
    assert got == list(range(1, total + 1)), "replay then live, nothing missing"


async def test_seq_strictly_increases_with_publishers_on_both(
    redis_server, cluster_factory, http
) -> None:
    a, b = await cluster_factory(redis_server)
    await check_publishers_on_both(a, b, http)


async def test_command_reaches_a_kiosk_on_the_other_instance(redis_server, cluster_factory) -> None:
    a, b = await cluster_factory(redis_server)
    calls: list[dict[str, Any]] = []

    async def on_command(command: dict[str, Any]) -> Any:
        calls.append(command)
        return {"success": True, "message": "opened"}

    kiosk = await connect(b, EVENTS, role="kiosk", sub="kiosk-9", handlers={"command": on_command})
    await kiosk.wait_events(EVENTS, "replay_complete", 1)
    panel = await connect(a, EVENTS, role="panel", sub="panel-1", auth={"replay": False})
    ack = await panel.call("command", {"type": "open", "kioskId": "kiosk-9"}, EVENTS)
    assert ack["ok"] is True, ack
    result = ack["event"]["data"]["result"]
    assert (result["success"], result["message"]) == (True, "opened")
    assert calls[0]["id"] == ack["event"]["data"]["command"]["id"]
    offline = await panel.call("command", {"type": "open", "kioskId": "kiosk-404"}, EVENTS)
    assert offline["event"]["data"]["result"]["error"] == "kiosk_offline"
    await kiosk.close()
    # B forgets the kiosk when it sees the disconnect; wait for that, then: offline, not timeout
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        with redis_server.client() as admin:
            if not admin.hlen("lockerbus:kiosk:kiosk-9"):
                break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    gone = await panel.call("command", {"type": "open", "kioskId": "kiosk-9"}, EVENTS)
    assert gone["event"]["data"]["result"]["error"] == "kiosk_offline"


async def test_stats_say_what_is_per_instance_and_what_cluster_wide(
    redis_server, cluster_factory, http
) -> None:
    a, b = await cluster_factory(redis_server)
    await subscriber(a)
    await subscriber(b)
    await subscriber(b)
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        status, stats = await a.get(http, "/api/stats")
        assert status == 200
        cluster = stats["cluster"]
        if cluster.get("connections", {}).get(LOCKERS) == 3:
            break
        assert asyncio.get_running_loop().time() < deadline, stats
        await asyncio.sleep(0.2)  # heartbeats carry the counts every few seconds
    assert stats["connections"][LOCKERS] == 1
    assert stats["scope"]["connections"] == "instance"
    assert stats["scope"]["store"] == "cluster"
    assert len(cluster["instances"]) == 2
    assert stats["instance"] in cluster["instances"]


async def test_redis_restart_errors_clearly_then_recovers_losing_nothing(
    tmp_path, cluster_factory, http
) -> None:
    """Redis killed (SIGKILL) and restarted on the same port.  It runs with an
    fsync'd append-only file here, so "accepted" means durable in Redis and
    nothing accepted may be missing afterwards."""
    redis = RedisServer(tmp_path / "redis-aof", aof=True)
    redis.start()
    try:
        a, b = await cluster_factory(redis)
        watcher = await subscriber(b)
        socket_publisher = await connect(a, LOCKERS, role="gateway", auth={"replay": False})
        await socket_publisher.wait_events(LOCKERS, "replay_complete", 1)
        accepted = [(await a.post_event(http, locker_event(n)))[1] for n in range(3)]
        await watcher.wait_for(lambda: 3 in live_seqs(watcher))

        await asyncio.to_thread(redis.kill)
        status, body = await a.post_event(http, locker_event(10))
        assert (status, body["error"]["code"]) == (503, "store_unavailable")
        assert "redis store" in body["error"]["message"]
        await wait_ready(http, a, b, ready=False)
        async with http.get(f"{b.url}/readyz") as resp:
            reason = (await resp.json())["reason"]
        assert "redis store 127.0.0.1" in reason
        nack = await socket_publisher.call("publish", locker_event(11), LOCKERS)
        assert nack["ok"] is False and nack["error"]["code"] == "store_unavailable"

        await asyncio.to_thread(redis.start)
        await wait_ready(http, a, b)
        for n in range(4):
            server = a if n % 2 else b
            status, event = await server.post_event(http, locker_event(20 + n))
            assert status == 201, event
            accepted.append(event)
        assert [e["seq"] for e in accepted] == [1, 2, 3, 4, 5, 6, 7]
        assert len({e["epoch"] for e in accepted}) == 1, "the epoch survived"
        await watcher.wait_for(lambda: 7 in live_seqs(watcher), timeout=15)
        assert watcher.sio.connected
        assert watcher.events(LOCKERS, "locker_state_changed") == accepted
        status, page = await b.get(http, f"/api/events?namespace={LOCKERS}")
        assert status == 200
        assert page["events"] == accepted
    finally:
        await asyncio.to_thread(redis.stop)


async def test_listener_resubscribes_after_its_connection_is_killed(
    redis_server, cluster_factory, http
) -> None:
    a, b = await cluster_factory(redis_server)
    watcher = await subscriber(b)
    with redis_server.client() as admin:
        killed = admin.client_kill_filter(_type="pubsub")
    assert killed == 2, "both instances' subscriptions dropped"
    status, event = await a.post_event(http, locker_event(1))
    assert status == 201
    await watcher.wait_for(lambda: event["seq"] in live_seqs(watcher), timeout=15)
    assert live_seqs(watcher) == [event["seq"]]
    # The subscription itself is back, not only the store catch-up: the next
    # event arrives without another fill from the store.
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        with redis_server.client() as admin:
            subscribers = admin.pubsub_numsub("lockerbus:events")[0][1]
        if subscribers >= 2:
            break
        assert asyncio.get_running_loop().time() < deadline, subscribers
        await asyncio.sleep(0.1)
    _, before = await b.get(http, "/api/stats")
    status, second = await a.post_event(http, locker_event(2))
    assert status == 201
    await watcher.wait_for(lambda: second["seq"] in live_seqs(watcher), timeout=5)
    _, after = await b.get(http, "/api/stats")
    relay_before, relay_after = before["cluster"]["relay"], after["cluster"]["relay"]
    assert relay_after["filled_from_store"] == relay_before["filled_from_store"]
    assert live_seqs(watcher) == [event["seq"], second["seq"]]
    found = samples(await scrape(http, b.url))
    assert found[("lockerbus_relay_errors_total", (("kind", "pubsub"),))] >= 1


async def test_a_dead_listener_is_noticed_and_restarted(redis_server) -> None:
    """The python-socketio failure where the listener task ends and the worker
    silently stops receiving: the relay notices and starts a new one."""
    url = redis_server.url
    a = await start_server(store=url, message_queue=url)
    b = await start_server(store=url, message_queue=url)
    try:
        manager = b.app[_gateway_key()].sio.manager
        watcher = await subscriber(b)
        manager.thread.cancel()
        await asyncio.gather(manager.thread, return_exceptions=True)
        assert not manager.alive()
        relay = b.app[_gateway_key()].relay
        event = await a.app[_bus_key()].emit_locker_state_changed("L1", "closed", "open", "k-1")
        await watcher.wait_for(lambda: event["seq"] in live_seqs(watcher), timeout=15)
        assert live_seqs(watcher) == [event["seq"]]
        await watcher.wait_for(lambda: relay.restarts >= 1 and manager.alive(), timeout=15)
        assert relay.filled >= 1, "the event the dead listener missed came from the store"
        second = await a.app[_bus_key()].emit_locker_state_changed("L1", "open", "closed", "k-1")
        await watcher.wait_for(lambda: second["seq"] in live_seqs(watcher), timeout=5)
        assert live_seqs(watcher) == [event["seq"], second["seq"]]
    finally:
        await b.stop()
        await a.stop()


def _gateway_key() -> Any:
    from lockerbus.app import GATEWAY

    return GATEWAY


def _bus_key() -> Any:
    from lockerbus.app import BUS

    return BUS


async def command(
    server: ServerProcess, http: aiohttp.ClientSession, body: dict[str, Any], sub: str
) -> dict[str, Any]:
    async with http.post(
        f"{server.url}/api/commands", json=body, headers=server.headers("panel", sub)
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        return dict(answer)


class Claims:
    """Watches Redis (MONITOR) for instances asking to claim one command key."""

    def __init__(self, redis: RedisServer, key: str) -> None:
        self.redis, self.key, self.seen = redis, key, 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def _watch(self, wanted: int) -> None:
        deadline = time.monotonic() + 15
        with self.redis.client() as admin, admin.monitor() as monitor:
            self.ready.set()
            while self.seen < wanted and time.monotonic() < deadline:
                command = monitor.next_command()["command"]
                if command.startswith(f"SET {self.key} running:"):
                    self.seen += 1

    async def wait(self, wanted: int, started: Callable[[], Any]) -> None:
        """Call ``started`` once watching, then wait for ``wanted`` claim attempts."""
        watching = asyncio.create_task(asyncio.to_thread(self._watch, wanted))
        await asyncio.to_thread(self.ready.wait, 10)
        started()
        await watching
        assert self.seen >= wanted, self.seen


async def test_a_command_retried_on_the_other_instance_runs_once(
    redis_server, cluster_factory, http
) -> None:
    """Contract §13: the same idempotency_key by the same principal runs once in the
    whole cluster, and the retry gets the first one's answer: retried on the other
    instance after the answer, and while the first still runs there."""
    a, b = await cluster_factory(redis_server)
    calls: list[dict[str, Any]] = []
    first_call, answer = asyncio.Event(), asyncio.Event()

    async def on_command(cmd: dict[str, Any]) -> Any:
        calls.append(cmd)
        first_call.set()
        await answer.wait()
        return {"success": True, "message": f"opened {len(calls)}"}

    kiosk = await connect(a, EVENTS, role="kiosk", sub="kiosk-7", handlers={"command": on_command})
    await kiosk.wait_events(EVENTS, "replay_complete", 1)
    body = {"type": "open", "kioskId": "kiosk-7", "lockerId": "L1", "idempotency_key": "k-1"}

    # while it runs on A: the retry on B waits for A's answer instead of running it
    on_a = asyncio.create_task(command(a, http, body, "panel-1"))
    await first_call.wait()
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    claims = Claims(redis_server, "lockerbus:command:panel-1:k-1")
    # B asks for the claim, finds A's, and asks again: it is polling, not running
    await claims.wait(
        2, lambda: tasks.append(asyncio.create_task(command(b, http, body, "panel-1")))
    )
    on_b = tasks[0]
    assert not on_b.done() and len(calls) == 1
    answer.set()
    first, waited = await asyncio.gather(on_a, on_b)
    assert first == waited
    assert first["data"]["result"]["message"] == "opened 1"

    # after the answer: the retry on either instance gets the same event
    assert await command(b, http, body, "panel-1") == first
    assert await command(a, http, body, "panel-1") == first
    assert len(calls) == 1
    stored, _ = await stored_events(b, EVENTS)
    assert [e["id"] for e in stored if e["type"] == "command_applied"] == [first["id"]]

    # the key is the principal's: another principal's command with it runs
    other = await command(b, http, body, "panel-2")
    assert other["id"] != first["id"] and len(calls) == 2
