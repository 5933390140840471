"""Replay decisions for a reconnecting client (contract §6), kept pure.

Every store answers "can this client's gap be filled exactly?" the same way,
so the arithmetic lives here, free of I/O, clocks and sockets, and is tested
on its own.  A store supplies the facts (its epoch, the namespace's last seq,
how many events it still holds in a seq range) and reads what the plan says.

Seqs in a namespace are assigned 1, 2, 3, ... with no holes, so a gap is
recoverable exactly when the store holds every seq in it: counting what is
held is enough to detect loss to TTL, capacity or corruption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What to send: the newest ``limit`` held events with ``after_seq < seq <= last_seq``.

    Sent oldest first.  ``recovered`` says whether that is every event the
    client missed (True) or the newest events it must rebuild from (False).
    """

    recovered: bool
    after_seq: int
    last_seq: int
    limit: int


def missed(after_seq: int, last_seq: int) -> int:
    """How many events were assigned after ``after_seq`` (negative: client is ahead)."""
    return last_seq - after_seq


def recoverable_gap(
    *,
    after_seq: int,
    requested_epoch: str | None,
    epoch: str,
    last_seq: int,
    limit: int,
) -> int | None:
    """The number of events to replay if an exact replay is possible at all, else None.

    Impossible when the client names another epoch (its seqs mean nothing
    here), names a position this store never issued (negative, or beyond
    ``last_seq``), or missed more than ``limit`` events.  ``requested_epoch``
    None counts as the current epoch (contract §6).
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    if requested_epoch is not None and requested_epoch != epoch:
        return None
    gap = missed(after_seq, last_seq)
    if after_seq < 0 or gap < 0 or gap > limit:
        return None
    return gap


def plan_replay(
    *,
    after_seq: int,
    requested_epoch: str | None,
    epoch: str,
    last_seq: int,
    limit: int,
    count_held: Callable[[int, int], int],
) -> ReplayPlan:
    """Decide a seq-based replay.

    ``count_held(lo, hi)`` returns how many events with ``lo < seq <= hi`` the
    store still holds (unexpired, uncorrupted).  It is called at most once, and
    only when an exact replay is still possible, so a store may make it costly.
    """
    gap = recoverable_gap(
        after_seq=after_seq,
        requested_epoch=requested_epoch,
        epoch=epoch,
        last_seq=last_seq,
        limit=limit,
    )
    if gap is not None and (gap == 0 or count_held(after_seq, last_seq) == gap):
        return ReplayPlan(recovered=True, after_seq=after_seq, last_seq=last_seq, limit=gap)
    return newest_plan(last_seq=last_seq, limit=limit)


def newest_plan(*, last_seq: int, limit: int) -> ReplayPlan:
    """The fallback: the newest ``limit`` events the store holds for the namespace."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    return ReplayPlan(recovered=False, after_seq=0, last_seq=last_seq, limit=limit)


def decide(
    *,
    after_seq: int | None,
    requested_epoch: str | None,
    epoch: str,
    last_seq: int,
    limit: int,
    count_held: Callable[[int, int], int],
) -> tuple[ReplayPlan, bool | None]:
    """The plan for any replay request, and the ``recovered`` to report.

    With ``after_seq`` it is :func:`plan_replay`; without (a time-based or
    default replay) the newest events, and ``recovered`` None (contract §6).
    """
    if after_seq is None:
        return newest_plan(last_seq=last_seq, limit=limit), None
    plan = plan_replay(
        after_seq=after_seq,
        requested_epoch=requested_epoch,
        epoch=epoch,
        last_seq=last_seq,
        limit=limit,
        count_held=count_held,
    )
    return plan, plan.recovered
