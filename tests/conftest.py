"""Shared fixtures. A test that needs a missing component skips locally,
but fails when CI is set: CI must prove everything."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.storekit import BACKENDS, Factory

IN_CI = bool(os.environ.get("CI"))

# The property tests check behaviour, not speed: a slow example on a busy
# 2-core CI machine must not fail them (scripts/bench_events measures speed).
settings.register_profile("lockerbus", deadline=None, print_blob=True)
settings.load_profile("lockerbus")


def require(available: bool, what: str) -> None:
    """Skip (fail under CI) when ``what`` is not on this machine."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but missing: .ci/run must install it")
    pytest.skip(f"{what} is not installed")


def require_binary(name: str) -> str:
    """The path of binary ``name``, or skip/fail as :func:`require` does."""
    path = shutil.which(name)
    require(path is not None, name)
    assert path is not None
    return path


@pytest.fixture
async def server_factory():  # type: ignore[no-untyped-def]
    """Start real servers on free 127.0.0.1 ports; all are stopped after the test."""
    from tests.support import close_clients, start_server

    servers = []

    async def factory(**overrides):  # type: ignore[no-untyped-def]
        server = await start_server(**overrides)
        servers.append(server)
        return server

    yield factory
    await close_clients()
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(server_factory):  # type: ignore[no-untyped-def]
    return await server_factory()


@pytest.fixture
async def http():  # type: ignore[no-untyped-def]
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def redis_shared(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One redis-server for the session; tests keep apart by key prefix."""
    from tests.redis_support import shared_server

    with shared_server(tmp_path_factory.mktemp("redis-shared")) as server:
        yield server


@pytest.fixture
def redis_server(tmp_path):  # type: ignore[no-untyped-def]
    """A redis-server of this test's own (no persistence), stopped after it."""
    from tests.redis_support import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_shared():  # type: ignore[no-untyped-def]
    """One PostgreSQL cluster for the session (initdb + pg_ctl in a temporary directory,
    any free port); tests keep apart by database. Skips locally, fails under CI, when
    PostgreSQL is not installed."""
    from tests.postgres_support import shared_server

    with shared_server() as server:
        yield server


@pytest.fixture
def postgres_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL cluster of this test's own (to stop and restart), removed after it."""
    from tests.postgres_support import running

    with running() as server:
        yield server


@pytest.fixture(params=sorted(BACKENDS))
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    if request.param == "redis":
        request.getfixturevalue("redis_shared")
    if request.param == "postgresql":
        request.getfixturevalue("postgres_shared")
    factory = Factory(BACKENDS[request.param], tmp_path)
    yield factory
    for store in factory.stores:
        await store.close()
