"""What every backend stores: an event's compact JSON, its checksum, its time.

Stores keep the serialized form (orjson bytes) rather than dicts: it is small,
cannot be changed by a caller holding a reference, and is what a checksum can
cover.  Decoding many records at once is one orjson call, which is what keeps a
1,000-event replay within a couple of milliseconds.
"""

from __future__ import annotations

import asyncio
import secrets
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson

from ..events import Event
from ..log import store_logger
from ..tags import tags_of
from .base import Appended, ReplayResult, StoredReplay, StoredRow


def new_epoch() -> str:
    """A fresh name for a sequence space: 64 random bits as hex."""
    return secrets.token_hex(8)


def checksum(blob: bytes) -> int:
    """The checksum stored beside every record (CRC-32 of its bytes)."""
    return zlib.crc32(blob)


def encode(event: Event) -> bytes:
    """An event as compact JSON bytes; raises TypeError for what JSON cannot carry.

    orjson hands back its whole output buffer (about 4 KiB for a 400-byte
    event); a memory store keeps thousands, so keep an exact-size copy.
    """
    return memoryview(orjson.dumps(event)).tobytes()


def as_stored(event: Event, blob: bytes | None = None) -> StoredRow:
    """A decoded event as a stored one; ``blob`` is its stored JSON (encoded here if None).

    A backend that keeps no fields beside the JSON decodes it (one call for many)
    to learn them, and still hands out the bytes it read rather than encoding again.
    """
    json = blob if blob is not None else encode(event)
    return StoredRow(event["seq"], event["type"], event["room"], tags_of(event), json)


def as_stored_replay(result: ReplayResult, blobs: Sequence[bytes] | None = None) -> StoredReplay:
    """``result`` with its events as stored ones (``blobs``: their JSON, in order)."""
    if blobs is None:
        blobs = [encode(event) for event in result.events]
    new = tuple.__new__  # StoredRow without its Python-level __new__: this runs per event
    events = [
        new(StoredRow, (e["seq"], e["type"], e["room"], _tags(e), blob))
        for e, blob in zip(result.events, blobs, strict=True)
    ]
    return StoredReplay(events, result.last_seq, result.epoch, result.recovered, result.has_more)


def _tags(event: Event) -> Mapping[str, str]:
    tags = event.get("tags")
    return tags if type(tags) is dict else tags_of(event)


def event_time(event: Event) -> float:
    """The event's ``timestamp`` as POSIX seconds (what ``since`` is compared with)."""
    raw = event.get("timestamp")
    if not isinstance(raw, str):
        raise ValueError("event has no timestamp string")
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        raise ValueError(f"event timestamp {raw!r} has no zone")
    return parsed.timestamp()


def since_seconds(since: datetime) -> float:
    """``since`` as POSIX seconds; a naive datetime is refused, not guessed at."""
    if since.tzinfo is None:
        raise ValueError("since must be an aware datetime")
    return since.timestamp()


def check_append(event: Event, ttl_seconds: float | None) -> str:
    """The event's namespace, after refusing arguments no store can honour."""
    namespace = event.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("event has no namespace")
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be > 0, not {ttl_seconds}")
    return namespace


def check_limit(limit: int) -> None:
    """Refuse a negative limit early, with a clear message."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")


def decode_many(blobs: Sequence[bytes], seqs: list[int], namespace: str) -> list[Event] | None:
    """Decode verified records in one call; None when any is not the event it claims to be.

    The caller falls back to :func:`decode_one` per record to find the bad one.
    """
    if not blobs:
        return []
    try:
        events: Any = orjson.loads(b"[" + b",".join(blobs) + b"]")
        # One C-level comparison per field rather than a Python call per event.
        if (
            len(events) != len(seqs)
            or [event["seq"] for event in events] != seqs
            or any(event["namespace"] != namespace for event in events)
        ):
            return None
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    return cast("list[Event]", events)


def decode_one(blob: bytes, seq: int, namespace: str) -> Event | None:
    """One record decoded, or None when it no longer deserializes to the event it claims."""
    try:
        event: Any = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    return event if _is_record(event, seq, namespace) else None


def _is_record(event: Any, seq: int, namespace: str) -> bool:
    return (
        isinstance(event, dict) and event.get("seq") == seq and event.get("namespace") == namespace
    )


def log_corrupt(namespace: str, seq: int, why: str) -> None:
    """Say once (the record is removed right after) which record was lost and why."""
    store_logger.warning("corrupt event removed: namespace=%s seq=%d (%s)", namespace, seq, why)


@dataclass(slots=True)
class Append:
    """An append waiting for the writer."""

    event: Event
    at: float
    ttl: float | None
    future: asyncio.Future[Event]


async def append_together(
    events: list[Event],
    ttl_seconds: float | None,
    loop: asyncio.AbstractEventLoop,
    submit: Callable[[list[Append]], None],
) -> list[Appended]:
    """Check each event, hand the good ones to ``submit`` as one group (one write), and
    answer each in order: an event that is refused fails on its own."""
    outcomes: list[Appended | None] = [None] * len(events)
    jobs: list[tuple[int, Append]] = []
    for i, event in enumerate(events):
        try:
            check_append(event, ttl_seconds)
            at = event_time(event)
        except ValueError as exc:
            outcomes[i] = exc
            continue
        jobs.append((i, Append(event, at, ttl_seconds, loop.create_future())))
    if jobs:
        submit([job for _i, job in jobs])
    for i, job in jobs:
        try:
            outcomes[i] = await job.future
        except Exception as exc:
            outcomes[i] = exc
    return [o for o in outcomes if o is not None]
