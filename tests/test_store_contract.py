"""The store contract (lockerbus/store/base.py), run against every backend.

A new backend joins by adding a Backend to storekit.BACKENDS: the ``store_factory``
fixture (tests/conftest.py) then runs every case below against it too.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from lockerbus.errors import ConflictError, StoreUnavailableError
from lockerbus.store import DuplicateEvent, EventStore, Retention, StoreOptions, open_store
from tests.storekit import (
    BACKENDS,
    HOUR,
    Factory,
    at_minute,
    help_event,
    help_update,
    locker_event,
    make_event,
    seqs,
)

LOCKERS = "/ws/lockers"
HELP = "/ws/help"
EVENTS = "/ws/events"


@pytest.fixture
async def store(store_factory: Factory) -> EventStore:
    return await store_factory()


async def fill(
    store: EventStore, n: int, namespace: str = LOCKERS, **kwargs: Any
) -> list[dict[str, Any]]:
    return [await store.append(make_event(namespace), **kwargs) for _ in range(n)]


# -- append -------------------------------------------------------------------


async def test_append_numbers_each_namespace_from_one(store: EventStore) -> None:
    event = make_event(LOCKERS)
    original = dict(event)
    first = await store.append(event)
    assert event == original, "the argument is not mutated"
    assert first == {**original, "seq": 1, "epoch": store.epoch}
    assert isinstance(store.epoch, str)
    assert store.epoch
    assert (await store.append(make_event(LOCKERS)))["seq"] == 2
    assert (await store.append(make_event(HELP)))["seq"] == 1
    assert await store.last_seq(LOCKERS) == 2
    assert await store.last_seq(HELP) == 1
    assert await store.last_seq("/ws/events") == 0


async def test_thousand_concurrent_appends_get_unique_seqs_resolved_in_order(
    store: EventStore,
) -> None:
    resolved: dict[str, list[int]] = {LOCKERS: [], HELP: []}

    async def publish(namespace: str) -> None:
        stored = await store.append(make_event(namespace))
        resolved[namespace].append(stored["seq"])  # no await between: "broadcast" order

    namespaces = [LOCKERS if i % 3 else HELP for i in range(1000)]
    await asyncio.gather(*(publish(ns) for ns in namespaces))
    for namespace, got in resolved.items():
        expected = namespaces.count(namespace)
        assert got == list(range(1, expected + 1)), f"{namespace} resolved out of seq order"
        result = await store.page(namespace, limit=1000)
        assert seqs(result.events) == list(range(1, expected + 1))


async def test_failed_append_consumes_no_seq(store: EventStore) -> None:
    await store.append(make_event())
    bad = make_event()
    bad["data"]["metadata"] = {"not json": {1, 2}}
    with pytest.raises(TypeError):
        await store.append(bad)
    assert (await store.append(make_event()))["seq"] == 2
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2]


async def test_bad_arguments_are_refused(store: EventStore) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await store.append(make_event(), ttl_seconds=0)
    with pytest.raises(ValueError, match="namespace"):
        await store.append({**make_event(), "namespace": None})
    with pytest.raises(ValueError, match="timestamp"):
        await store.append({**make_event(), "timestamp": None})
    with pytest.raises(ValueError, match="zone"):
        await store.append({**make_event(), "timestamp": "2026-11-26T19:00:00"})
    with pytest.raises(ValueError, match="limit"):
        await store.replay(LOCKERS, after_seq=0, limit=-1)
    with pytest.raises(ValueError, match="aware"):
        await store.replay(LOCKERS, since=at_minute(0).replace(tzinfo=None), limit=5)
    assert await store.last_seq(LOCKERS) == 0


# -- event ids (contract §12) and append_many -------------------------------------


async def test_a_held_id_is_stored_once(store: EventStore) -> None:
    first = await store.append(make_event())
    again = {**make_event(), "id": first["id"]}
    with pytest.raises(DuplicateEvent) as caught:
        await store.append(again)
    assert caught.value.event == first
    assert await store.last_seq(LOCKERS) == 1
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1]
    # another namespace: ids are global
    with pytest.raises(DuplicateEvent) as other:
        await store.append({**make_event(HELP), "id": first["id"]})
    assert other.value.event == first
    assert await store.last_seq(HELP) == 0


async def test_concurrent_appends_of_one_id_store_it_once(store: EventStore) -> None:
    event = make_event()
    outcomes = await asyncio.gather(
        *(store.append(dict(event)) for _ in range(20)), return_exceptions=True
    )
    stored = [o for o in outcomes if isinstance(o, dict)]
    duplicates = [o for o in outcomes if isinstance(o, DuplicateEvent)]
    assert len(stored) == 1 and len(duplicates) == 19
    assert all(d.event == stored[0] for d in duplicates)
    assert await store.last_seq(LOCKERS) == 1


async def test_an_expired_events_id_is_free_again(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=60)
    first = await store.append(make_event())
    store_factory.clock.advance(61)
    again = await store.append({**make_event(), "id": first["id"]})
    assert again["seq"] == 2


async def test_an_evicted_events_id_is_free_again(store_factory: Factory) -> None:
    store = await store_factory(max_events=2)
    first = await store.append(make_event())
    await fill(store, 2)
    again = await store.append({**make_event(), "id": first["id"]})
    assert again["seq"] == 4


async def test_append_many_keeps_item_order_and_fails_items_alone(store: EventStore) -> None:
    bad = make_event()
    bad["data"]["metadata"] = {"not json": {1, 2}}
    held = await store.append(make_event(HELP))
    batch = [
        make_event(),
        make_event(HELP),
        bad,
        {**make_event(), "namespace": None},
        {**make_event(), "id": held["id"]},
        make_event(),
    ]
    batch.append({**make_event(), "id": batch[0]["id"]})  # repeated inside the batch
    outcomes = await store.append_many(batch)
    assert len(outcomes) == len(batch)
    assert [o["seq"] for o in outcomes if isinstance(o, dict)] == [1, 2, 2]
    assert isinstance(outcomes[2], TypeError)
    assert isinstance(outcomes[3], ValueError)
    assert isinstance(outcomes[4], DuplicateEvent) and outcomes[4].event == held
    assert isinstance(outcomes[6], DuplicateEvent) and outcomes[6].event == outcomes[0]
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2]
    assert await store.append_many([]) == []


# -- replay by after_seq --------------------------------------------------------


async def test_replay_recovers_when_everything_is_held(store: EventStore) -> None:
    stored = await fill(store, 10)
    result = await store.replay(LOCKERS, after_seq=4, epoch=store.epoch, limit=100)
    assert result.recovered is True
    assert result.events == stored[4:]
    assert (result.last_seq, result.epoch, result.has_more) == (10, store.epoch, False)


async def test_replay_without_epoch_counts_as_current(store: EventStore) -> None:
    await fill(store, 3)
    result = await store.replay(LOCKERS, after_seq=1, limit=100)
    assert (result.recovered, seqs(result.events)) == (True, [2, 3])


async def test_replay_of_an_up_to_date_client_is_empty_and_recovered(store: EventStore) -> None:
    await fill(store, 3)
    result = await store.replay(LOCKERS, after_seq=3, limit=100)
    assert (result.recovered, result.events, result.last_seq) == (True, [], 3)


async def test_replay_of_an_empty_namespace(store: EventStore) -> None:
    result = await store.replay(HELP, after_seq=0, limit=100)
    assert (result.recovered, result.events, result.last_seq, result.has_more) == (
        True,
        [],
        0,
        False,
    )
    assert result.epoch == store.epoch


async def test_replay_with_too_many_missed_sends_the_newest(store: EventStore) -> None:
    await fill(store, 20)
    result = await store.replay(LOCKERS, after_seq=2, limit=5)
    assert result.recovered is False
    assert seqs(result.events) == [16, 17, 18, 19, 20]
    assert (result.last_seq, result.has_more) == (20, True)


async def test_replay_of_exactly_limit_missed_is_recovered(store: EventStore) -> None:
    await fill(store, 20)
    result = await store.replay(LOCKERS, after_seq=15, limit=5)
    assert (result.recovered, seqs(result.events), result.has_more) == (
        True,
        [16, 17, 18, 19, 20],
        False,
    )


async def test_replay_across_expired_events_is_not_recovered(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=HOUR)
    await fill(store, 5)
    store_factory.clock.advance(HOUR + 1)
    await fill(store, 3)
    lost = await store.replay(LOCKERS, after_seq=2, limit=100)
    assert (lost.recovered, seqs(lost.events), lost.last_seq) == (False, [6, 7, 8], 8)
    held = await store.replay(LOCKERS, after_seq=5, limit=100)
    assert (held.recovered, seqs(held.events)) == (True, [6, 7, 8])


async def test_a_short_per_event_ttl_leaves_a_hole_that_is_detected(
    store_factory: Factory,
) -> None:
    store = await store_factory(ttl_seconds=HOUR)
    await store.append(make_event())
    await store.append(make_event(), ttl_seconds=60)
    await store.append(make_event())
    store_factory.clock.advance(61)
    across = await store.replay(LOCKERS, after_seq=0, limit=100)
    assert (across.recovered, seqs(across.events)) == (False, [1, 3])
    after = await store.replay(LOCKERS, after_seq=2, limit=100)
    assert (after.recovered, seqs(after.events)) == (True, [3])
    await store.cleanup()
    assert (await store.stats()).evictions["ttl"] == 1


async def test_a_per_event_ttl_never_outlives_the_store_ttl(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=HOUR)
    await store.append(make_event(), ttl_seconds=10 * HOUR)
    store_factory.clock.advance(HOUR + 1)
    assert (await store.replay(LOCKERS, limit=10)).events == []


async def test_replay_naming_another_epoch_is_not_recovered(store: EventStore) -> None:
    await fill(store, 6)
    result = await store.replay(LOCKERS, after_seq=4, epoch="some-other-epoch", limit=3)
    assert (result.recovered, seqs(result.events), result.has_more) == (False, [4, 5, 6], True)
    assert result.epoch == store.epoch


async def test_replay_from_beyond_the_last_seq_is_not_recovered(store: EventStore) -> None:
    await fill(store, 3)
    result = await store.replay(LOCKERS, after_seq=7, limit=100)
    assert (result.recovered, seqs(result.events), result.last_seq) == (False, [1, 2, 3], 3)


async def test_replay_across_a_corrupt_record(
    store_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    store = await store_factory()
    await fill(store, 5)
    await store_factory.backend.corrupt(store, LOCKERS, 3)
    with caplog.at_level(logging.WARNING, logger="lockerbus.store"):
        across = await store.replay(LOCKERS, after_seq=1, limit=100)
        again = await store.replay(LOCKERS, after_seq=1, limit=100)
    assert (across.recovered, seqs(across.events)) == (False, [1, 2, 4, 5])
    assert (again.recovered, seqs(again.events)) == (False, [1, 2, 4, 5])
    warnings = [r for r in caplog.records if r.name == "lockerbus.store"]
    assert len(warnings) == 1, "logged once"
    message = warnings[0].getMessage()
    assert LOCKERS in message
    assert "seq=3" in message
    stats = await store.stats()
    assert stats.evictions["corrupt"] == 1
    assert stats.namespaces[LOCKERS].count == 4
    after = await store.replay(LOCKERS, after_seq=3, limit=100)
    assert (after.recovered, seqs(after.events)) == (True, [4, 5])


async def test_cleanup_finds_corrupt_records(store_factory: Factory) -> None:
    store = await store_factory()
    await fill(store, 4)
    await store_factory.backend.corrupt(store, LOCKERS, 4)
    assert await store.cleanup() == 1
    assert (await store.stats()).evictions["corrupt"] == 1
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2, 3]


# -- replay by time -------------------------------------------------------------


async def test_replay_since_returns_the_newest_at_or_after_it(store: EventStore) -> None:
    for minute in range(10):
        await store.append(make_event(at=at_minute(minute)))
    result = await store.replay(LOCKERS, since=at_minute(5), limit=100)
    assert (result.recovered, seqs(result.events), result.has_more) == (
        None,
        [6, 7, 8, 9, 10],
        False,
    )
    assert result.last_seq == 10
    newest = await store.replay(LOCKERS, since=at_minute(5), limit=3)
    assert (seqs(newest.events), newest.has_more) == ([8, 9, 10], True)
    none = await store.replay(LOCKERS, since=at_minute(60), limit=3)
    assert (none.events, none.has_more, none.last_seq) == ([], False, 10)


async def test_replay_since_handles_timestamps_out_of_seq_order(store: EventStore) -> None:
    for minute in (0, 10, 2, 11, 3, 12):
        await store.append(make_event(at=at_minute(minute)))
    result = await store.replay(LOCKERS, since=at_minute(3), limit=100)
    assert seqs(result.events) == [2, 4, 5, 6]
    newest = await store.replay(LOCKERS, since=at_minute(3), limit=2)
    assert (seqs(newest.events), newest.has_more) == ([5, 6], True)


async def test_replay_with_nothing_given_sends_the_newest(store: EventStore) -> None:
    await fill(store, 5)
    result = await store.replay(LOCKERS, limit=2)
    assert (result.recovered, seqs(result.events), result.has_more) == (None, [4, 5], True)


async def test_replay_since_excludes_expired_events(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=HOUR)
    await store.append(make_event(at=at_minute(0)))
    store_factory.clock.advance(HOUR + 1)
    await store.append(make_event(at=at_minute(1)))
    result = await store.replay(LOCKERS, since=at_minute(0), limit=10)
    assert seqs(result.events) == [2]


# -- page -------------------------------------------------------------------------


async def test_page_reads_forward(store: EventStore) -> None:
    await fill(store, 7)
    first = await store.page(LOCKERS, limit=3)
    assert (seqs(first.events), first.has_more, first.last_seq, first.recovered) == (
        [1, 2, 3],
        True,
        3,
        None,
    )
    second = await store.page(LOCKERS, after_seq=first.last_seq, limit=3)
    assert (seqs(second.events), second.has_more, second.last_seq) == ([4, 5, 6], True, 6)
    last = await store.page(LOCKERS, after_seq=second.last_seq, limit=3)
    assert (seqs(last.events), last.has_more, last.last_seq) == ([7], False, 7)
    exact = await store.page(LOCKERS, after_seq=4, limit=3)
    assert (seqs(exact.events), exact.has_more, exact.last_seq) == ([5, 6, 7], False, 7)


async def test_page_since(store: EventStore) -> None:
    for minute in (0, 5, 1, 6, 7):
        await store.append(make_event(at=at_minute(minute)))
    result = await store.page(LOCKERS, since=at_minute(5), limit=2)
    assert (seqs(result.events), result.has_more, result.last_seq) == ([2, 4], True, 4)
    rest = await store.page(LOCKERS, after_seq=4, since=at_minute(5), limit=2)
    assert (seqs(rest.events), rest.has_more, rest.last_seq) == ([5], False, 5)


async def test_page_of_an_unknown_namespace(store: EventStore) -> None:
    result = await store.page("/ws/nowhere", limit=10)
    assert (result.events, result.has_more, result.last_seq) == ([], False, 0)


# -- expiry, capacity, stats ----------------------------------------------------


async def test_ttl_expiry_and_cleanup(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=HOUR)
    await fill(store, 4)
    await fill(store, 2, HELP)
    store_factory.clock.advance(HOUR - 1)
    assert await store.cleanup() == 0
    await fill(store, 1)
    store_factory.clock.advance(2)
    assert await store.cleanup() == 6
    stats = await store.stats()
    assert stats.events == 1
    assert stats.evictions == {"ttl": 6, "capacity": 0, "corrupt": 0}
    assert stats.namespaces[LOCKERS].oldest_seq == 5
    assert stats.namespaces[HELP].count == 0
    assert stats.namespaces[HELP].last_seq == 2, "last_seq outlives the events"
    assert await store.last_seq(HELP) == 2
    assert (await store.append(make_event(HELP)))["seq"] == 3


async def test_capacity_holds_per_namespace(store_factory: Factory) -> None:
    store = await store_factory(max_events=5)
    for i in range(15):
        await store.append(make_event(HELP if i % 3 == 0 else LOCKERS))
    await store.cleanup()
    stats = await store.stats()
    # 10 lockers events, 5 help events: only lockers is over its own cap
    assert stats.events == 10
    assert stats.evictions["capacity"] == 5
    assert seqs((await store.page(LOCKERS, limit=20)).events) == [6, 7, 8, 9, 10]
    assert seqs((await store.page(HELP, limit=20)).events) == [1, 2, 3, 4, 5]
    lost = await store.replay(LOCKERS, after_seq=4, limit=100)
    assert (lost.recovered, seqs(lost.events)) == (False, [6, 7, 8, 9, 10])
    held = await store.replay(LOCKERS, after_seq=5, limit=100)
    assert held.recovered is True


async def test_a_storm_in_one_namespace_pushes_no_other_out(store_factory: Factory) -> None:
    store = await store_factory(max_events=20)
    await fill(store, 3)
    await fill(store, 200, EVENTS)
    page = await store.page(LOCKERS, limit=10)
    assert seqs(page.events) == [1, 2, 3]
    assert (await store.replay(LOCKERS, after_seq=0, limit=10)).recovered is True
    assert (await store.stats()).namespaces[EVENTS].count == 20


async def test_retention_overrides_per_namespace(store_factory: Factory) -> None:
    overrides = {EVENTS: Retention(max_events=2, ttl_seconds=60)}
    store = await store_factory(max_events=100, ttl_seconds=HOUR, namespaces=overrides)
    await fill(store, 5, EVENTS)
    await fill(store, 5)
    assert seqs((await store.page(EVENTS, limit=10)).events) == [4, 5]
    store_factory.clock.advance(61)
    assert (await store.page(EVENTS, limit=10)).events == []
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1, 2, 3, 4, 5]
    await store.cleanup()
    assert (await store.stats()).evictions == {"ttl": 2, "capacity": 3, "corrupt": 0}
    store_factory.clock.advance(HOUR)
    assert (await store.page(LOCKERS, limit=10)).events == []


async def test_append_many_keeps_each_namespaces_retention(store_factory: Factory) -> None:
    overrides = {EVENTS: Retention(max_events=2, ttl_seconds=60)}
    store = await store_factory(max_events=100, ttl_seconds=HOUR, namespaces=overrides)
    first = await store.append_many([make_event(EVENTS) for _ in range(3)] + [make_event()])
    assert [o["seq"] for o in first if isinstance(o, dict)] == [1, 2, 3, 1]
    assert seqs((await store.page(EVENTS, limit=10)).events) == [2, 3]
    store_factory.clock.advance(61)
    assert (await store.page(EVENTS, limit=10)).events == []
    assert seqs((await store.page(LOCKERS, limit=10)).events) == [1]
    # the evicted and expired events' ids are free again
    again = await store.append({**make_event(EVENTS), "id": first[0]["id"]})
    assert again["seq"] == 4


async def test_stats(store: EventStore) -> None:
    await fill(store, 3)
    await fill(store, 2, HELP)
    stats = await store.stats()
    assert stats.backend in BACKENDS
    assert stats.epoch == store.epoch
    assert stats.events == 5
    assert stats.max_events == 1000
    assert stats.namespaces[LOCKERS].count == 3
    assert (stats.namespaces[LOCKERS].oldest_seq, stats.namespaces[LOCKERS].newest_seq) == (1, 3)
    assert stats.namespaces[LOCKERS].last_seq == 3
    assert stats.namespaces[HELP].count == 2
    assert stats.evictions == {"ttl": 0, "capacity": 0, "corrupt": 0}


# -- state (contract §11) -----------------------------------------------------------


async def test_state_holds_each_lockers_latest_entry(store_factory: Factory) -> None:
    store = await store_factory(max_events=2, ttl_seconds=60)
    empty = await store.read_state("lockers")
    assert (empty.entries, empty.last_seq, empty.epoch) == ([], 0, store.epoch)
    await store.append(locker_event("k1", "L2", "open"))
    await store.append(locker_event("k1", "L1", "open"))
    await store.append(locker_event("k1", "L2", "closed"))
    await store.append(make_event(HELP))
    snapshot = await store.read_state("lockers")
    assert snapshot.last_seq == 3
    assert [(e["lockerId"], e["state"], e["seq"]) for e in snapshot.entries] == [
        ("L1", "open", 2),
        ("L2", "closed", 3),
    ]
    assert snapshot.entries[0]["kioskId"] == "k1"
    assert snapshot.entries[0]["timestamp"]
    # history expires and is evicted; the state does not shrink
    await store.append(locker_event("k2", "L9", "open"))
    store_factory.clock.advance(120)
    await store.cleanup()
    assert (await store.page(LOCKERS, limit=10)).events == []
    after = await store.read_state("lockers")
    assert [(e["kioskId"], e["lockerId"]) for e in after.entries] == [
        ("k1", "L1"),
        ("k1", "L2"),
        ("k2", "L9"),
    ]
    assert after.last_seq == 4


async def test_state_holds_open_help_requests(store: EventStore) -> None:
    await store.append(help_event(7, "open", kiosk="k1"))
    await store.append(help_event(3, "open", kiosk="k2"))
    await store.append(help_update(7, "open", "assigned", agent="ann"))
    snapshot = await store.read_state("help")
    assert snapshot.last_seq == 3
    assert [(e["id"], e["status"], e["seq"]) for e in snapshot.entries] == [
        (3, "open", 2),
        (7, "assigned", 3),
    ]
    seven = snapshot.entries[1]
    assert (seven["kiosk_id"], seven["agent_id"], seven["category"]) == ("k1", "ann", "other")
    await store.append(help_update(7, "assigned", "resolved"))
    assert [e["id"] for e in (await store.read_state("help")).entries] == [3]
    # a resolved id may be opened again
    reopened = await store.append(help_event(7, "open"))
    assert reopened["seq"] == 5
    assert [e["id"] for e in (await store.read_state("help")).entries] == [3, 7]


async def test_help_conflicts_are_refused_without_a_seq(store: EventStore) -> None:
    await store.append(help_event(1, "open"))
    with pytest.raises(ConflictError) as reused:
        await store.append(help_event(1, "open"))
    assert reused.value.code == "conflict"
    assert reused.value.http_status == 409
    with pytest.raises(ConflictError, match="not open"):
        await store.append(help_update(2, "open", "assigned"))
    with pytest.raises(ConflictError, match="is open, not assigned"):
        await store.append(help_update(1, "assigned", "resolved"))
    assert await store.last_seq(HELP) == 1, "a refusal consumes no seq"
    assert (await store.append(help_update(1, "open", "assigned")))["seq"] == 2
    with pytest.raises(ConflictError):
        await store.append(help_update(1, "open", "assigned"))
    snapshot = await store.read_state("help")
    assert [(e["id"], e["status"]) for e in snapshot.entries] == [(1, "assigned")]


async def test_a_resent_help_event_is_a_duplicate_not_a_conflict(store: EventStore) -> None:
    """The id is decided before the state (§12 before §11), singly and in a batch."""
    opened = await store.append(help_event(9, "open"))
    moved = await store.append(help_update(9, "open", "assigned"))
    for resent, stored in ((opened, opened), (moved, moved)):
        again = {k: v for k, v in resent.items() if k not in ("seq", "epoch")}
        with pytest.raises(DuplicateEvent) as caught:
            await store.append(again)
        assert caught.value.event == stored
        [outcome] = await store.append_many([again])
        assert isinstance(outcome, DuplicateEvent) and outcome.event == stored
    # the same help id under a new event id: that is the state's conflict
    with pytest.raises(ConflictError):
        await store.append(help_event(9, "open"))
    assert await store.last_seq(HELP) == 2
    assert [(e["id"], e["status"]) for e in (await store.read_state("help")).entries] == [
        (9, "assigned")
    ]


async def test_append_many_checks_and_writes_the_state_per_item(store: EventStore) -> None:
    batch = [
        help_event(1, "open"),
        help_event(1, "open"),  # a new event id opening an open request: refused alone
        help_update(1, "open", "assigned"),
        help_update(2, "open", "assigned"),  # never opened: refused alone
        locker_event("k1", "L1", "open"),
    ]
    outcomes = await store.append_many(batch)
    assert [o["seq"] if isinstance(o, dict) else type(o) for o in outcomes] == [
        1,
        ConflictError,
        2,
        ConflictError,
        1,
    ]
    assert [(e["id"], e["status"], e["seq"]) for e in (await store.read_state("help")).entries] == [
        (1, "assigned", 2)
    ]
    lockers = await store.read_state("lockers")
    assert [(e["lockerId"], e["seq"]) for e in lockers.entries] == [("L1", 1)]
    # a refused item took no seq and holds no id: the same event may come again later
    again = await store.append_many([batch[3]])
    assert isinstance(again[0], ConflictError)


async def test_racing_help_updates_exactly_one_wins(store_factory: Factory) -> None:
    first = await store_factory()
    # a second handle on the same store where the backend is shared (not memory)
    second = first if store_factory.backend.name == "memory" else await store_factory.again()
    await first.append(help_event(40, "open"))
    outcomes = await asyncio.gather(
        *(
            (first if i % 2 else second).append(help_update(40, "open", "assigned", f"a{i}"))
            for i in range(10)
        ),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, dict)]
    assert len(won) == 1
    assert all(isinstance(o, ConflictError) for o in outcomes if o not in won)
    entries = (await first.read_state("help")).entries
    assert entries[0]["agent_id"] == won[0]["data"]["agent_id"]


async def test_loading_the_state_then_resuming_from_its_last_seq_is_gap_free(
    store: EventStore,
) -> None:
    await store.append(locker_event("k1", "L1", "open"))
    snapshot = await store.read_state("lockers")
    await store.append(locker_event("k1", "L1", "closed"))
    resumed = await store.replay(LOCKERS, after_seq=snapshot.last_seq, limit=10)
    assert resumed.recovered is True
    assert seqs(resumed.events) == [snapshot.last_seq + 1]


async def test_rebuild_state_from_the_history_held(store_factory: Factory) -> None:
    store = await store_factory(ttl_seconds=60)
    await store.append(locker_event("k1", "L1", "open"))
    store_factory.clock.advance(61)  # L1's event expires; the state keeps it
    await store.append(locker_event("k1", "L2", "open"))
    await store.append(help_event(70))
    await store.append(help_update(70, "open", "assigned"))
    await store.append(help_event(71))
    before = await store.read_state("help")
    assert len((await store.read_state("lockers")).entries) == 2
    assert await store.rebuild_state() == 3, "L2 and two help requests: L1's history is gone"
    assert await store.read_state("help") == before
    assert [e["lockerId"] for e in (await store.read_state("lockers")).entries] == ["L2"]
    with pytest.raises(ConflictError):
        await store.append(help_event(70))


# -- lifecycle --------------------------------------------------------------------


async def test_check_and_close(store: EventStore) -> None:
    await store.check()
    await store.append(make_event())
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailableError):
        await store.check()
    with pytest.raises(StoreUnavailableError):
        await store.append(make_event())
    with pytest.raises(StoreUnavailableError):
        await store.replay(LOCKERS, after_seq=0, limit=10)


async def test_a_store_not_started_is_unavailable(store_factory: Factory, tmp_path: Path) -> None:
    url = store_factory.backend.url(tmp_path, "unstarted")
    store = open_store(url, StoreOptions())
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.check()
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.append(make_event())
    await store.close()


async def test_async_context_manager(store_factory: Factory, tmp_path: Path) -> None:
    url = store_factory.backend.url(tmp_path, "ctx")
    async with open_store(url, StoreOptions()) as store:
        await store.check()
        assert (await store.append(make_event()))["seq"] == 1
    with pytest.raises(StoreUnavailableError):
        await store.check()
