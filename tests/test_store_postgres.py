"""What only the PostgreSQL store has: migrations, several stores on one database,
PostgreSQL going away and coming back (the contract itself: test_store_contract)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter

import pytest

from lockerbus.errors import ConflictError, StoreUnavailableError
from lockerbus.startup import EXIT_STORE_UNAVAILABLE
from lockerbus.store import DuplicateEvent, StoreOptions
from lockerbus.store.postgres import SCHEMA_VERSION, PostgresEventStore
from tests.postgres_support import PostgresServer
from tests.storekit import help_event, help_update, locker_event, make_event, seqs
from tests.test_cli import free_port
from tests.test_startup import assert_one_failure_line, serve

pytestmark = pytest.mark.needs_postgres

LOCKERS = "/ws/lockers"
HELP = "/ws/help"
EVENTS = "/ws/events"


def pg_store(url: str, **options: float) -> PostgresEventStore:
    return PostgresEventStore(url, StoreOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
def url(postgres_shared: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres_shared.database(request.node.nodeid)


# -- migrations -----------------------------------------------------------------


async def test_a_fresh_database_is_migrated_and_reopened_as_it_was(
    url: str, postgres_shared: PostgresServer
) -> None:
    async with pg_store(url) as store:
        epoch = store.epoch
        await store.append(make_event())
        await store.append(make_event())
        await store.append(make_event(HELP))
    db = url.rsplit("/", 1)[1]
    assert postgres_shared.psql("SELECT value FROM lockerbus_meta WHERE key = 'schema'", db) == str(
        SCHEMA_VERSION
    )
    async with pg_store(url) as store:
        assert store.epoch == epoch
        assert (await store.append(make_event()))["seq"] == 3
        assert (await store.append(make_event(HELP)))["seq"] == 2
        result = await store.replay(LOCKERS, after_seq=1, epoch=epoch, limit=10)
        assert (result.recovered, seqs(result.events)) == (True, [2, 3])


async def test_another_database_is_another_epoch(postgres_shared: PostgresServer) -> None:
    async with (
        pg_store(postgres_shared.database("epoch-a")) as first,
        pg_store(postgres_shared.database("epoch-b")) as second,
    ):
        assert first.epoch != second.epoch


async def test_instances_starting_together_migrate_once(url: str) -> None:
    stores = [pg_store(url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        assert len({store.epoch for store in stores}) == 1
    finally:
        for store in stores:
            await store.close()


async def test_a_database_newer_than_the_code_is_refused(
    url: str, postgres_shared: PostgresServer
) -> None:
    async with pg_store(url):
        pass
    db = url.rsplit("/", 1)[1]
    postgres_shared.psql("UPDATE lockerbus_meta SET value = '999' WHERE key = 'schema'", db)
    store = pg_store(url)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.start()
    message = caught.value.message
    assert "schema 999" in message and "upgrade lockerbus" in message
    assert "\n" not in message
    assert store.state == "new"

    process = serve(free_port(), LOCKERBUS_STORE=url)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_STORE_UNAVAILABLE
    assert_one_failure_line(stderr, "store")
    assert "newer than this lockerbus" in stderr


async def test_credentials_never_appear_in_errors(postgres_shared: PostgresServer) -> None:
    url = f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/nothing"
    store = pg_store(url)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.start()
    assert "s3cret-pw" not in caught.value.message
    assert "postgresql store 127.0.0.1:" in caught.value.message


# -- several stores on one database ---------------------------------------------


async def test_two_stores_appending_at_once_never_reuse_or_skip_a_seq(url: str) -> None:
    async with pg_store(url) as one, pg_store(url) as two:

        async def publish(store: PostgresEventStore, n: int) -> list[dict]:
            out = []
            for i in range(n):
                namespace = (LOCKERS, EVENTS)[i % 2]
                if i % 10 == 0:
                    batch = [make_event(namespace) for _ in range(5)]
                    out += await store.append_many(batch)  # type: ignore[arg-type]
                else:
                    out.append(await store.append(make_event(namespace)))
            return out

        results = await asyncio.gather(
            *(publish(store, 60) for store in (one, two) for _ in range(4))
        )
    by_ns: dict[str, list[int]] = {LOCKERS: [], EVENTS: []}
    for event in (e for batch in results for e in batch):
        by_ns[event["namespace"]].append(event["seq"])
    for namespace, numbers in by_ns.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), namespace


async def test_one_id_from_two_stores_into_two_namespaces_is_stored_once(url: str) -> None:
    async with pg_store(url) as one, pg_store(url) as two:
        for _ in range(5):
            shared_id = str(uuid.uuid4())
            a, b = make_event(LOCKERS), make_event(EVENTS)
            a["id"] = b["id"] = shared_id
            outcomes = await asyncio.gather(one.append(a), two.append(b), return_exceptions=True)
            stored = [o for o in outcomes if isinstance(o, dict)]
            dupes = [o for o in outcomes if isinstance(o, DuplicateEvent)]
            assert (len(stored), len(dupes)) == (1, 1), outcomes
            assert dupes[0].event == stored[0]


async def test_racing_help_updates_on_two_stores_exactly_one_wins(url: str) -> None:
    async with pg_store(url) as one, pg_store(url) as two:
        for help_id in range(900, 905):
            await one.append(help_event(help_id))
            outcomes = await asyncio.gather(
                one.append(help_update(help_id, "open", "assigned", "agent-1")),
                two.append(help_update(help_id, "open", "assigned", "agent-2")),
                return_exceptions=True,
            )
            kinds = Counter(type(o).__name__ for o in outcomes)
            assert kinds == Counter({"dict": 1, "ConflictError": 1}), outcomes
        state = await two.read_state("help")
        assert {e["id"] for e in state.entries} >= set(range(900, 905))
        assert all(e["status"] == "assigned" for e in state.entries)
        with pytest.raises(ConflictError):
            await two.append(help_event(900))


async def test_state_seen_from_another_store_is_the_same(url: str) -> None:
    async with pg_store(url) as one, pg_store(url) as two:
        await one.append(locker_event("k1", "L1", "open"))
        await two.append(locker_event("k1", "L1", "closed"))
        a, b = await one.read_state("lockers"), await two.read_state("lockers")
        assert a == b
        assert [(e["lockerId"], e["state"], e["seq"]) for e in a.entries] == [("L1", "closed", 2)]
        assert a.last_seq == 2


# -- PostgreSQL down and back ---------------------------------------------------


async def test_postgres_down_is_unavailable_then_recovers_without_a_restart(
    postgres_server: PostgresServer,
) -> None:
    async with pg_store(postgres_server.url()) as store:
        await store.append(make_event())
        await store.check()
        postgres_server.stop()
        with pytest.raises(StoreUnavailableError):
            await store.append(make_event())
        with pytest.raises(StoreUnavailableError):
            await store.check()
        with pytest.raises(StoreUnavailableError):
            await store.replay(LOCKERS, after_seq=0, limit=10)
        postgres_server.start()
        # the pool's broken connections are replaced as they are met
        for _attempt in range(10):
            try:
                event = await store.append(make_event())
                break
            except StoreUnavailableError:
                continue
        else:
            pytest.fail("the store did not recover")
        assert event["seq"] == 2, "nothing half-written while it was down"
        assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2]


async def test_a_store_not_reachable_at_start_fails_start_and_can_start_later(
    postgres_server: PostgresServer,
) -> None:
    postgres_server.stop()
    store = pg_store(postgres_server.url())
    with pytest.raises(StoreUnavailableError):
        await store.start()
    postgres_server.start()
    await store.start()
    try:
        assert (await store.append(make_event()))["seq"] == 1
    finally:
        await store.close()


def test_the_driver_is_imported_only_for_its_scheme() -> None:
    code = (
        "import sys\n"
        "from lockerbus.store import open_store\n"
        "open_store('memory'); open_store('sqlite:///x.db')\n"
        "assert 'asyncpg' not in sys.modules\n"
        "open_store('postgresql://u@127.0.0.1:1/db')\n"
        "print('ok')\n"
    )
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


# -- through the server ---------------------------------------------------------


async def test_idempotency_across_a_restart_and_two_instances(
    url: str, server_factory, http
) -> None:  # type: ignore[no-untyped-def]
    from tests.support import close_clients, start_server
    from tests.support import locker_event as payload_of
    from tests.test_ingest import history, post_batch, with_id

    payload = with_id(payload_of(0))
    first = await start_server(store=url)
    try:
        status, stored = await first.post_event(http, payload)
        assert status == 201
    finally:
        await close_clients()
        await first.stop()
    a, b = await server_factory(store=url), await server_factory(store=url)
    for server in (a, b):
        status, again = await server.post_event(http, payload)
        assert status == 200 and again == {"event": stored, "duplicate": True}
    status, body = await post_batch(b, http, {"events": [payload, payload_of(1)]})
    assert status == 200
    assert body["results"][0] == {"ok": True, "event": stored, "duplicate": True}
    assert body["results"][1]["event"]["seq"] == 2
    assert [e["seq"] for e in await history(a, http)] == [1, 2]
    async with http.get(f"{a.url}/readyz") as resp:
        assert resp.status == 200


async def test_the_password_in_the_store_url_is_never_logged(url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.processes import ServerProcess

    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:pw-s3cret@")
    server = ServerProcess(
        store=with_password,
        log_path=tmp_path / "lockerbus.log",
        env={"LOCKERBUS_LOG_LEVEL": "INFO"},
    )
    await server.started()
    try:
        assert "lockerbus ready store=postgresql://postgres:<redacted>@" in server.log()
    finally:
        await server.stopped()
    assert "pw-s3cret" not in server.log()
