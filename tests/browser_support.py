"""Headless Chromium for the board tests, driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """The system Chromium; skips (fails under CI) when it or playwright is missing."""
    require(os.access(CHROMIUM, os.X_OK), CHROMIUM)
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the test extra installs it
        require(False, "the playwright package")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()
