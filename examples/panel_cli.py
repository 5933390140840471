"""A terminal panel: follows every namespace, prints each event, can issue a command.

    python examples/panel_cli.py --url http://127.0.0.1:8080 --token "$PANEL_TOKEN" \
        [--command open:kiosk-1:L3] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

from lockerbus.client import LockerbusClient, PublishRejected


def line(event: dict[str, Any]) -> str:
    d = event["data"]
    what = {
        "locker_state_changed": lambda: (
            f"{d['kioskId']}/{d['lockerId']} {d['oldState']} -> {d['newState']}"
        ),
        "help_requested": lambda: f"#{d['id']} {d['kiosk_id']} {d['category']} ({d['priority']})",
        "help_status_updated": lambda: f"#{d['id']} {d['old_status']} -> {d['new_status']}",
        "command_applied": lambda: (
            f"{d['command']['type']} at {d['command'].get('kioskId')}: "
            f"{'ok' if d['result']['success'] else 'failed ' + d['result'].get('error', '')}"
        ),
        "system_status": lambda: f"{d['component']} {d['status']} health={d['health_score']}",
    }.get(event["type"], lambda: f"{d.get('userId', '')} {d.get('namespace', '')}")()
    mark = " (replayed)" if event.get("replayed") else ""
    return f"{event['namespace']:<11} #{event['seq']:<5} {event['type']:<21} {what}{mark}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("PANEL_TOKEN"), help="a panel token")
    parser.add_argument("--command", help="TYPE:KIOSK[:LOCKER], e.g. open:kiosk-1:L3")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    args = parser.parse_args()
    if not args.token:
        parser.error("--token or PANEL_TOKEN is required (lockerbus token --role panel --sub me)")

    client = LockerbusClient(args.url, args.token)
    client.on("*", lambda event: print(line(event), flush=True))

    def live(info: dict[str, Any]) -> None:
        ns, count, recovered = info["namespace"], info["count"], info["recovered"]
        print(f"{ns:<11} live after {count} replayed (recovered={recovered})", flush=True)

    client.on("replay_complete", live)
    client.on("disconnect", lambda info: print(f"{info['namespace']:<11} disconnected", flush=True))
    async with client:
        await client.wait_live()
        if args.command:
            kind, kiosk, *locker = args.command.split(":")
            try:
                event = await client.command(kind, kiosk, locker_id=locker[0] if locker else None)
                result = event["data"]["result"]
                print(
                    f"command {kind} at {kiosk}: success={result['success']} "
                    f"{result.get('message') or result.get('error') or ''}".rstrip(),
                    flush=True,
                )
            except PublishRejected as exc:
                print(f"command refused: {exc}", flush=True)
        if args.duration:
            await asyncio.sleep(args.duration)
        else:
            await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
