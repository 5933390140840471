"""The replay decisions of contract §6, without any store."""

from __future__ import annotations

import pytest

from lockerbus.recovery import ReplayPlan, decide, newest_plan, plan_replay, recoverable_gap

EPOCH = "e1"


class Counter:
    """A count_held that answers from a set of held seqs and records its calls."""

    def __init__(self, held: set[int]) -> None:
        self.held = held
        self.calls: list[tuple[int, int]] = []

    def __call__(self, lo: int, hi: int) -> int:
        self.calls.append((lo, hi))
        return sum(1 for seq in self.held if lo < seq <= hi)


def plan(
    after_seq: int,
    *,
    last_seq: int = 10,
    held: set[int] | None = None,
    limit: int = 100,
    epoch: str | None = EPOCH,
) -> tuple[ReplayPlan, Counter]:
    counter = Counter(set(range(1, last_seq + 1)) if held is None else held)
    result = plan_replay(
        after_seq=after_seq,
        requested_epoch=epoch,
        epoch=EPOCH,
        last_seq=last_seq,
        limit=limit,
        count_held=counter,
    )
    return result, counter


def test_everything_held_is_recovered_exactly() -> None:
    result, counter = plan(4)
    assert result == ReplayPlan(recovered=True, after_seq=4, last_seq=10, limit=6)
    assert counter.calls == [(4, 10)]


def test_from_zero_with_everything_held() -> None:
    result, _ = plan(0)
    assert result == ReplayPlan(recovered=True, after_seq=0, last_seq=10, limit=10)


def test_up_to_date_client_needs_nothing_and_no_count() -> None:
    result, counter = plan(10)
    assert result == ReplayPlan(recovered=True, after_seq=10, last_seq=10, limit=0)
    assert counter.calls == []


def test_empty_namespace() -> None:
    result, _ = plan(0, last_seq=0, held=set())
    assert result.recovered is True
    assert result.limit == 0


def test_a_hole_in_the_gap_is_not_recovered() -> None:
    result, _ = plan(4, held={1, 2, 3, 4, 5, 7, 8, 9, 10})
    assert result == ReplayPlan(recovered=False, after_seq=0, last_seq=10, limit=100)


def test_events_lost_before_the_gap_do_not_matter() -> None:
    result, _ = plan(4, held={5, 6, 7, 8, 9, 10})
    assert result.recovered is True


def test_expired_oldest_of_the_gap_is_not_recovered() -> None:
    result, _ = plan(4, held={6, 7, 8, 9, 10})
    assert result.recovered is False


def test_more_missed_than_limit_is_not_recovered_and_not_counted() -> None:
    result, counter = plan(2, limit=5)
    assert result == ReplayPlan(recovered=False, after_seq=0, last_seq=10, limit=5)
    assert counter.calls == []


def test_exactly_limit_missed_is_recovered() -> None:
    result, _ = plan(5, limit=5)
    assert result == ReplayPlan(recovered=True, after_seq=5, last_seq=10, limit=5)


def test_other_epoch_is_not_recovered_and_not_counted() -> None:
    result, counter = plan(4, epoch="old")
    assert result.recovered is False
    assert result.after_seq == 0
    assert counter.calls == []


def test_no_epoch_counts_as_current() -> None:
    result, _ = plan(4, epoch=None)
    assert result.recovered is True


@pytest.mark.parametrize("after_seq", [11, 1000, -1])
def test_a_position_never_issued_is_not_recovered(after_seq: int) -> None:
    result, counter = plan(after_seq)
    assert result.recovered is False
    assert counter.calls == []


def test_limit_zero() -> None:
    assert plan(10, limit=0)[0].recovered is True
    assert plan(9, limit=0)[0] == ReplayPlan(recovered=False, after_seq=0, last_seq=10, limit=0)


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        plan(0, limit=-1)
    with pytest.raises(ValueError, match="limit"):
        newest_plan(last_seq=3, limit=-1)


def test_recoverable_gap() -> None:
    def gap(after_seq: int) -> int | None:
        return recoverable_gap(
            after_seq=after_seq, requested_epoch=None, epoch=EPOCH, last_seq=10, limit=5
        )

    assert gap(7) == 3
    assert gap(4) is None
    assert gap(10) == 0


def test_newest_plan() -> None:
    assert newest_plan(last_seq=42, limit=7) == ReplayPlan(False, 0, 42, 7)


def test_does_not_import_sockets() -> None:
    import subprocess
    import sys

    code = (
        "import sys, lockerbus.recovery\nprint('socketio' in sys.modules, 'aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_decide_reports_recovered_only_for_seq_based_replays() -> None:
    def held(lo: int, hi: int) -> int:
        return hi - lo

    plan, recovered = decide(
        after_seq=None, requested_epoch=None, epoch="e", last_seq=9, limit=5, count_held=held
    )
    assert recovered is None
    assert (plan.after_seq, plan.last_seq, plan.limit) == (0, 9, 5)
    plan, recovered = decide(
        after_seq=6, requested_epoch="e", epoch="e", last_seq=9, limit=5, count_held=held
    )
    assert recovered is True
    assert (plan.after_seq, plan.limit) == (6, 3)
    plan, recovered = decide(
        after_seq=6, requested_epoch="other", epoch="e", last_seq=9, limit=5, count_held=held
    )
    assert recovered is False
