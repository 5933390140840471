"""The official socket.io-client (npm) against a real server: auth errors, publish ack, replay."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from lockerbus.auth import issue_token
from tests.conftest import require_binary
from tests.support import locker_event

NODE_DIR = Path(__file__).parent / "node"


def ensure_node_modules() -> str:
    node = require_binary("node")
    npm = require_binary("npm")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return node


async def test_socket_io_client_contract(server, http) -> None:
    node = ensure_node_modules()
    for n in range(3):
        await server.post_event(http, locker_event(n))
    config = {
        "panel": server.token("panel"),
        "gateway": server.token("gateway"),
        "forged": issue_token("forged-secret-" + "z" * 40, "panel", "p"),
        "lastSeq": 1,
        "event": locker_event(3),
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "contract.mjs"),
        server.url,
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode() + stdout.decode()
    out = json.loads(stdout)
    assert out["noToken"]["message"] == "unauthorized"
    assert out["noToken"]["data"]["code"] == "unauthorized"
    assert out["forged"]["message"] == "unauthorized"
    assert out["subscribeAck"] == {"ok": True}
    assert out["publishOk"]["ok"] is True and out["publishOk"]["event"]["seq"] == 4
    assert out["publishBad"]["ok"] is False
    assert out["publishBad"]["error"]["code"] == "validation_error"
    assert "data.lockerId" in out["publishBad"]["error"]["fields"]
    complete = out["complete"]
    assert complete["recovered"] is True and complete["last_seq"] == 3
    assert complete["index"] == 2
    assert [(e["seq"], e["replayed"]) for e in out["received"]] == [
        (2, True),
        (3, True),
        (4, False),
    ]
