"""create_app's lifecycle: one cleanup context per resource, opened in order and,
when a later one fails to start, the earlier ones closed again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lockerbus.app import create_app
from lockerbus.config import Settings
from lockerbus.errors import StoreUnavailableError
from lockerbus.store import StoreOptions, open_store
from tests.storekit import make_event
from tests.support import SECRET


def test_one_cleanup_context_per_resource_in_order() -> None:
    app = create_app(Settings(secret=SECRET))
    names = [ctx.__qualname__.split(".")[0] for ctx in app.cleanup_ctx]
    assert names == [
        "_store_context",
        "_presence_context",
        "_kiosks_context",
        "_claims_context",
        "_relay_context",
        "_sockets_context",
    ]


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 6])
async def test_a_failure_while_starting_closes_what_was_already_open(fail_at: int) -> None:
    store = open_store("memory", StoreOptions())
    app = create_app(Settings(secret=SECRET), store=store)
    opened: list[str] = []

    async def broken(app: web.Application) -> AsyncIterator[None]:
        opened.append("broken")
        raise RuntimeError("this resource does not start")
        yield  # pragma: no cover

    app.cleanup_ctx.insert(fail_at, broken)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="does not start"):
        await runner.setup()
    await runner.cleanup()
    assert opened == ["broken"]
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.append(make_event())


async def test_a_clean_start_and_stop_closes_the_store() -> None:
    store = open_store("memory", StoreOptions())
    app = create_app(Settings(secret=SECRET), store=store)
    runner = web.AppRunner(app)
    await runner.setup()
    stored = await store.append(make_event())
    assert stored["seq"] == 1
    await runner.cleanup()
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.append(make_event())
