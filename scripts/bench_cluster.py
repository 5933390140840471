"""Benchmark publish -> receive latency (run through scripts/bench_cluster).

Starts its own redis-server and lockerbus processes on free 127.0.0.1 ports and,
in one run, measures the same thing in each setup: a gateway client publishes
over Socket.IO (one event at a time, waiting for its ack), a panel client
receives it, and the latency is the time from the publish call to the event's
arrival, on one clock (both clients live in this process).

Setups: one instance with the memory store; one instance with the Redis store;
two instances sharing Redis, subscriber on the publishing instance (A -> A)
and on the other one (A -> B).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from lockerbus.auth import issue_token

SECRET = "bench-secret-" + "x" * 40
NS = "/ws/lockers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url} exited")
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


async def lockerbus(env: dict[str, str], log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "lockerbus", "serve", "--port", str(port)],
            env={
                **os.environ,
                "LOCKERBUS_SECRET": SECRET,
                "LOCKERBUS_LOG_LEVEL": "WARNING",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, proc)
    return url, proc


async def client(url: str, role: str) -> socketio.AsyncClient:
    sio = socketio.AsyncClient()
    await sio.connect(
        url,
        namespaces=[NS],
        transports=["websocket"],
        auth={"token": issue_token(SECRET, role, f"{role}-bench", 3600), "replay": False},
    )
    return sio


async def measure(pub_url: str, sub_url: str, events: int) -> list[float]:
    """Latencies in ms of ``events`` sequential publishes on pub_url seen on sub_url."""
    arrived: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[None]] = {}
    subscriber = await client(sub_url, "panel")

    async def on_event(event: dict[str, Any]) -> None:
        lid = event["data"]["lockerId"]
        arrived[lid] = time.perf_counter()
        waiter = waiters.get(lid)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    subscriber.on("locker_state_changed", on_event, namespace=NS)
    publisher = await client(pub_url, "gateway")
    loop = asyncio.get_running_loop()
    samples = []
    for i in range(events + 50):  # the first 50 warm up
        lid = f"L{i}"
        waiters[lid] = loop.create_future()
        old, new = ("closed", "open") if i % 2 else ("open", "closed")
        payload = {
            "type": "locker_state_changed",
            "data": {"lockerId": lid, "oldState": old, "newState": new, "kioskId": "k-1"},
        }
        sent = time.perf_counter()
        ack = await publisher.call("publish", payload, namespace=NS, timeout=10)
        assert ack["ok"], ack
        await asyncio.wait_for(waiters[lid], 10)
        if i >= 50:
            samples.append((arrived[lid] - sent) * 1000)
    await publisher.disconnect()
    await subscriber.disconnect()
    return samples


def summary(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"{name:<34} p50 {q[49]:6.2f} ms   p99 {q[98]:6.2f} ms   (n={len(samples)})"


def start_redis(binary: str, port: int, directory: str) -> subprocess.Popen[bytes]:
    """redis-server without persistence; returns once it accepts connections."""
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([binary, *args, "--dir", directory], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        rport = free_port()
        redis = await asyncio.to_thread(start_redis, binary, rport, tmp)
        procs: list[subprocess.Popen[bytes]] = [redis]
        try:
            rurl = f"redis://127.0.0.1:{rport}/0"
            single, p = await lockerbus({}, tmpdir / "single.log")
            procs.append(p)
            single_redis, p = await lockerbus(
                {"LOCKERBUS_STORE": f"{rurl}?prefix=single"}, tmpdir / "single-redis.log"
            )
            procs.append(p)
            cluster = {"LOCKERBUS_STORE": rurl, "LOCKERBUS_MESSAGE_QUEUE": rurl}
            a, p = await lockerbus(cluster, tmpdir / "a.log")
            procs.append(p)
            b, p = await lockerbus(cluster, tmpdir / "b.log")
            procs.append(p)
            runs = [
                ("single instance, memory store", single, single),
                ("single instance, redis store", single_redis, single_redis),
                ("cluster, same instance (A -> A)", a, a),
                ("cluster, cross instance (A -> B)", a, b),
            ]
            print(f"publish -> receive latency, {args.events} sequential events each")
            for name, pub, sub in runs:
                print(summary(name, await measure(pub, sub, args.events)), flush=True)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                await asyncio.to_thread(proc.wait, 10)


if __name__ == "__main__":
    asyncio.run(main())
