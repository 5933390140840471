"""RSS per idle connection: lockerbus against plain python-socketio (issue 21).

Starts each server as its own process, connects ``--clients`` python-socketio
clients (websocket, each subscribed to ``locker_updates``) from worker
processes, waits for the server to settle, and prints the growth of the
server's VmRSS divided by the number of clients.  One warm-up client connects
first so imports and first-use caches are not counted.

Usage: .venv/bin/python scripts/idle_memory.py [--clients 2000] [--targets lockerbus,plain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "/ws/lockers"
ROOM = "locker_updates"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def hold(url: str, tokens: list[str], ready: Any, release: Any) -> None:
    """Connect one client per token, subscribe it, report, hold until told to stop."""
    import socketio

    clients = []

    async def one(token: str) -> None:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            url,
            namespaces=[NAMESPACE],
            auth={"token": token, "replay": False},
            transports=["websocket"],
            wait_timeout=60,
        )
        answer = await client.call("subscribe", {"room": ROOM}, namespace=NAMESPACE, timeout=60)
        assert answer.get("ok") is True, answer
        clients.append(client)

    for start in range(0, len(tokens), 100):  # a hundred at a time: no connect storm
        await asyncio.gather(*(one(t) for t in tokens[start : start + 100]))
    print(json.dumps({"connected": len(clients)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(c.disconnect() for c in clients))


def worker_main() -> None:
    spec = json.loads(sys.stdin.readline())
    asyncio.run(hold(spec["url"], spec["tokens"], None, None))


def start_server(target: str, port: int, secret: str) -> subprocess.Popen[bytes]:
    if target == "plain":
        command = [sys.executable, str(ROOT / "bench" / "plain_server.py"), f"--port={port}"]
        env = dict(os.environ)
    else:
        exe = Path(sys.executable).parent / "lockerbus"
        command = [str(exe), "serve", "--host=127.0.0.1", f"--port={port}"]
        env = {**os.environ, "LOCKERBUS_SECRET": secret, "LOCKERBUS_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"{target} did not start")


def workers(url: str, tokens: list[str], processes: int) -> list[subprocess.Popen[str]]:
    started = []
    share = (len(tokens) + processes - 1) // processes
    for i in range(processes):
        chunk = tokens[i * share : (i + 1) * share]
        if not chunk:
            continue
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"url": url, "tokens": chunk}) + "\n")
        proc.stdin.flush()
        started.append(proc)
    for proc in started:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("a client worker failed")
    return started


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait(timeout=60)


def measure(target: str, clients: int, processes: int, settle: float) -> dict[str, float]:
    port, secret = free_port(), secrets.token_urlsafe(36)
    url = f"http://127.0.0.1:{port}"

    def token(i: int) -> str:
        if target == "plain":
            return "bench"
        from lockerbus.auth import issue_token

        return issue_token(secret, "panel", f"idle-panel-{i}", 3600)

    server = start_server(target, port, secret)
    try:
        warm = workers(url, [token(-1)], 1)
        time.sleep(settle)
        before = rss_kib(server.pid)
        held = workers(url, [token(i) for i in range(clients)], processes)
        time.sleep(settle)
        after = rss_kib(server.pid)
        stop(held + warm)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_connection": (after - before) / clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--targets", default="lockerbus,plain")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return
    load = os.getloadavg()
    print(f"{args.clients} idle clients, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for target in args.targets.split(","):
        figures = measure(target, args.clients, args.processes, args.settle)
        before, after = figures["rss_before_mib"], figures["rss_after_mib"]
        print(
            f"{target:10} RSS {before:7.1f} -> {after:7.1f} MiB"
            f"   {figures['kib_per_connection']:5.1f} KiB per idle connection"
        )


if __name__ == "__main__":
    main()
