"""Helpers for the several-instances tests (contract §9)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp


async def wait_ready(http: aiohttp.ClientSession, *servers: Any, ready: bool = True) -> None:
    """Poll /readyz until every server answers as wanted (readiness has no event to await)."""
    deadline = time.monotonic() + 20
    while True:
        states = []
        for server in servers:
            try:
                async with http.get(f"{server.url}/readyz") as resp:
                    states.append(resp.status == 200)
            except aiohttp.ClientError:
                states.append(False)
        if all(state == ready for state in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"readiness never became {ready}: {states}")
        await asyncio.sleep(0.05)
