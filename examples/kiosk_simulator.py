"""N simulated kiosks: locker state changes, help requests, status reports; they answer commands.

    python examples/kiosk_simulator.py --token "$KIOSK_TOKEN"
    python examples/kiosk_simulator.py --url http://127.0.0.1:8080 --secret "$LOCKERBUS_SECRET" \
        --kiosks 3 --duration 30

With --token (e.g. the kiosk token dev mode prints) one kiosk runs, named by the
token's sub.  With --secret each kiosk signs its own token (role kiosk, sub =
its id), as a provisioning service would.  Each runs a lockerbus.client.KioskClient.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
from typing import Any

import jwt

from lockerbus.auth import issue_token
from lockerbus.client import ClientOptions, KioskClient, PublishRejected

STATES = ("closed", "open", "reserved", "maintenance")
LOCKERS = 6


def say(*parts: Any) -> None:
    print(*parts, flush=True)


async def run_kiosk(
    url: str, token: str, kiosk_id: str, interval: float, stop: asyncio.Event
) -> int:
    lockers = {f"L{n}": "closed" for n in range(1, LOCKERS + 1)}
    client = KioskClient(
        url,
        token,
        kiosk_id,
        options=ClientOptions(reconnect_first_delay=0.5, reconnect_max_delay=5),
    )

    async def set_state(locker: str, new: str, reason: str) -> None:
        old = lockers[locker]
        if old == new:
            return
        lockers[locker] = new
        event = await client.publish_locker_state_changed(locker, old, new, reason=reason)
        assert event is not None
        say(f"{kiosk_id} {locker} {old} -> {new} (seq {event['seq']})")

    @client.on_command
    async def on_command(command: dict[str, Any]) -> dict[str, Any]:
        kind, locker = command["type"], command.get("lockerId")
        say(f"{kiosk_id} command {kind} {locker or ''} from {command['issued_by']}")
        if kind in ("open", "close"):
            if locker not in lockers:
                raise ValueError(f"no locker {locker!r} here")
            await set_state(locker, "open" if kind == "open" else "closed", f"remote {kind}")
            return {"success": True, "message": f"{locker} {lockers[locker]}"}
        if kind == "status_check":
            return {"states": dict(lockers)}
        return {"success": True, "message": f"{kind} done"}

    sent = 0
    async with client:
        say(f"{kiosk_id} connected={client.connected}")
        await client.report_status("online", 100, message="simulator started")
        while not stop.is_set():
            roll = random.random()
            try:
                if roll < 0.8:
                    locker = random.choice(list(lockers))
                    new = random.choice([s for s in STATES if s != lockers[locker]])
                    await set_state(locker, new, "simulated")
                elif roll < 0.9:
                    request_id = random.randrange(1, 1_000_000)
                    await client.request_help(
                        request_id,
                        "access_issue",
                        priority=random.choice(["low", "high", "urgent"]),
                        locker_no=random.randrange(1, LOCKERS + 1),
                    )
                    say(f"{kiosk_id} help requested #{request_id}")
                else:
                    health = random.randint(60, 100)
                    await client.report_status(
                        "online", health, metrics={"cpu_usage": 100 - health}
                    )
                    say(f"{kiosk_id} status online health={health}")
                sent += 1
            except PublishRejected as exc:
                say(f"{kiosk_id} rejected: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval * random.uniform(0.5, 1.5))
        await client.wait_sent()
    say(f"{kiosk_id} done: {sent} events, {client.dropped} dropped, {client.rejected} rejected")
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--secret",
        default=os.environ.get("LOCKERBUS_SECRET"),
        help="the server's secret (default: $LOCKERBUS_SECRET)",
    )
    parser.add_argument(
        "--token", help="one kiosk's token (dev mode prints one); its sub is the kiosk id"
    )
    parser.add_argument("--kiosks", type=int, help="kiosks to simulate with --secret (default 3)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between events")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    args = parser.parse_args()
    if args.token:
        if args.kiosks not in (None, 1):
            parser.error("--token is one kiosk's: use --secret to simulate several")
        # the server checks the signature; the simulator only needs the kiosk id
        claims = jwt.decode(args.token, options={"verify_signature": False})
        if claims.get("role") != "kiosk" or not claims.get("sub"):
            parser.error("--token must be a kiosk token (role kiosk)")
        tokens = {str(claims["sub"]): args.token}
    elif args.secret:
        count = 3 if args.kiosks is None else args.kiosks
        tokens = {
            f"kiosk-{n}": issue_token(args.secret, "kiosk", f"kiosk-{n}")
            for n in range(1, count + 1)
        }
    else:
        parser.error("--token, or --secret (or LOCKERBUS_SECRET) to sign kiosk tokens, is required")
    stop = asyncio.Event()
    if args.duration:
        asyncio.get_running_loop().call_later(args.duration, stop.set)
    kiosks = list(tokens)
    counts = await asyncio.gather(
        *(run_kiosk(args.url, tokens[k], k, args.interval, stop) for k in kiosks)
    )
    say(f"simulator done: {len(kiosks)} kiosks, {sum(counts)} events")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
