"""Publishing over HTTP from another service (a gateway) with aiohttp; then the current state.

python examples/gateway_publish.py --url http://127.0.0.1:8080 --token "$GATEWAY_TOKEN"
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import aiohttp


async def publish(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with http.post(f"{url}/api/events", json=body) as resp:
        answer = await resp.json()
        if resp.status == 201:
            print(f"{resp.status} {answer['type']} seq={answer['seq']} id={answer['id']}")
        else:  # the contract's {error: {code, message, fields?}}
            error = answer["error"]
            print(f"{resp.status} {error['code']}: {error['message']} {error.get('fields', '')}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("GATEWAY_TOKEN"), help="a gateway token")
    args = parser.parse_args()
    if not args.token:
        parser.error(
            "--token or GATEWAY_TOKEN is required (lockerbus token --role gateway --sub gw)"
        )
    headers = {"Authorization": f"Bearer {args.token}"}
    now = datetime.now(UTC).isoformat()
    async with aiohttp.ClientSession(
        headers=headers, timeout=aiohttp.ClientTimeout(total=10)
    ) as http:
        await publish(
            http,
            args.url,
            {
                "type": "locker_state_changed",
                "data": {
                    "lockerId": "L1",
                    "oldState": "closed",
                    "newState": "reserved",
                    "kioskId": "kiosk-1",
                    "reason": "booked online",
                },
            },
        )
        # a help request, then its move: a move of a request not open is a 409 conflict
        await publish(
            http,
            args.url,
            {
                "type": "help_requested",
                "data": {
                    "id": 42,
                    "kiosk_id": "kiosk-1",
                    "category": "hardware_problem",
                    "status": "open",
                    "created_at": now,
                    "priority": "high",
                },
            },
        )
        await publish(
            http,
            args.url,
            {
                "type": "help_status_updated",
                "data": {
                    "id": 42,
                    "old_status": "open",
                    "new_status": "assigned",
                    "agent_id": "agent-7",
                    "updated_at": now,
                },
            },
        )
        await publish(
            http,
            args.url,
            {
                "type": "system_status",
                "data": {"component": "gateway", "status": "online", "health_score": 98},
            },
        )
        # a mistake: the server says exactly what is wrong, field by field
        await publish(
            http,
            args.url,
            {
                "type": "locker_state_changed",
                "data": {"lockerId": "L1", "oldState": "closed", "newState": "closed"},
            },
        )
        async with http.get(f"{args.url}/api/lockers") as resp:
            snapshot = await resp.json()
        print(f"lockers at seq {snapshot['last_seq']}:")
        for locker in snapshot["lockers"]:
            print(f"  {locker['kioskId']}/{locker['lockerId']} {locker['state']}")


if __name__ == "__main__":
    asyncio.run(main())
