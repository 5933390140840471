"""Catch-up of a replay storm: N official socket.io-clients each replaying E events.

Starts ``lockerbus serve`` (memory store) on a free port, stores E events
through ``POST /api/events/batch``, then connects N clients with
tests/node/storm.mjs (worker threads, 50 at a time, half resuming from
``last_seq`` 0 and half with the time-based default) and prints how long
until every client had its replay, and the server's CPU per replayed event.
Needs node and tests/node's modules (``npm ci`` there).

Usage: .venv/bin/python scripts/replay_storm.py [CLIENTS] [EVENTS]   (1000 900)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def locker_event(n: int) -> dict[str, object]:
    old, new = ("closed", "open") if n % 2 == 0 else ("open", "closed")
    return {
        "type": "locker_state_changed",
        "data": {"lockerId": f"L{n}", "oldState": old, "newState": new, "kioskId": "kiosk-1"},
    }


def main() -> None:
    from lockerbus.auth import issue_token

    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 900
    port, secret = free_port(), secrets.token_urlsafe(36)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LOCKERBUS_SECRET": secret, "LOCKERBUS_LOG_LEVEL": "WARNING"}
    exe = Path(sys.executable).parent / "lockerbus"
    server = subprocess.Popen(
        [str(exe), "serve", "--host=127.0.0.1", f"--port={port}"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    node: subprocess.Popen[str] | None = None
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        gateway = issue_token(secret, "gateway", "storm-gateway", 3600)
        for start in range(0, events, 500):
            body = {"events": [locker_event(n) for n in range(start, min(events, start + 500))]}
            request = urllib.request.Request(
                f"{url}/api/events/batch",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {gateway}", "Content-Type": "application/json"},
            )
            urllib.request.urlopen(request).read()
        tokens = [issue_token(secret, "panel", f"storm-panel-{i}", 3600) for i in range(clients)]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as config:
            json.dump({"tokens": tokens, "workers": 2}, config)
        before = cpu_seconds(server.pid)
        node = subprocess.Popen(
            ["node", str(ROOT / "tests/node/storm.mjs"), url, config.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT / "tests/node",
        )
        assert node.stdout is not None
        answer = json.loads(node.stdout.readline())
        used = cpu_seconds(server.pid) - before
        print(
            f"{clients} clients x {events} events: all replayed in {answer['ms'] / 1000:.2f} s;"
            f" server CPU {used:.2f} s ="
            f" {used / (clients * events) * 1e6:.2f} µs per replayed event"
        )
    finally:
        for proc in (node, server):
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
