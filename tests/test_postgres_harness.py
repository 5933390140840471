"""The test harness's own PostgreSQL cluster starts, serves, restarts and goes away."""

from __future__ import annotations

import pytest

from tests.postgres_support import PostgresServer, find_bindir, running

pytestmark = pytest.mark.needs_postgres


def test_binaries_are_found() -> None:
    bindir = find_bindir()
    if bindir is not None:
        assert (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()


def test_a_cluster_serves_restarts_and_is_removed() -> None:
    with running() as server:
        assert server.psql("SELECT 40 + 2") == "42"
        url = server.database("one")
        assert url == server.database("one"), "created once, then reused"
        server.restart()
        db = url.rsplit("/", 1)[1]
        assert server.psql("SELECT current_database()", db) == db
        root = server.root
    assert not root.exists()


def test_the_shared_cluster_keeps_tests_apart(postgres_shared: PostgresServer) -> None:
    a, b = postgres_shared.database("a"), postgres_shared.database("b")
    assert a != b
