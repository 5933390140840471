"""Who is where across instances, kept in Redis: live instances and kiosk connections.

Commands (contract §5, §9) must reach a kiosk on whichever instance holds it,
and ``kiosk_offline`` must mean that none does.  Each instance records its
kiosk connections (``P:kiosk:<id>`` hash: sid -> instance) and keeps a
heartbeat key with an expiry (``P:instance:<id>``, holding its connection
counts).  An entry whose instance's heartbeat expired is ignored and removed,
so an instance that crashed stops counting within ``ttl_seconds``.

It is also the cluster's :class:`lockerbus.kiosks.KioskBook` (contract §11):
``P:kconn:<id>`` (hash: sid -> instance) holds a kiosk's connections on every
namespace, ``P:kinfo:<id>`` (hash) its last_seen, announced status and latest
system_status, ``P:kiosks`` (set) every kiosk seen.  The announced status is
claimed with one script, so one instance publishes each announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson
from redis.exceptions import RedisError

from .errors import StoreUnavailableError
from .log import server_logger
from .redisconn import connect, split_url

TTL_SECONDS: Final = 15.0
# KEYS: P:kinfo:<id>; ARGV: status -> 1 when it was not the announced status (now it is)
_CLAIM: Final = """
if redis.call('HGET', KEYS[1], 'announced') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'announced', ARGV[1])
return 1
"""
HEARTBEAT_SECONDS: Final = 5.0
LISTING_BATCH: Final = 500  # kiosks per pipelined round trip of listing()


class PresenceError(StoreUnavailableError):
    """Redis could not answer a presence question (503 ``store_unavailable`` over HTTP)."""


class Presence:
    """This instance's view of the cluster's instances and kiosks."""

    def __init__(self, url: str, *, instance_id: str | None = None) -> None:
        plain_url, prefix = split_url(url)
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._prefix = prefix
        self._redis = connect(plain_url, retry=False)  # bounded: a partition fails fast
        self._own: dict[str, str] = {}  # sid -> kiosk id, to restore after Redis lost them
        self._conns: dict[str, str] = {}  # the same for kiosk connections on every namespace
        self._claim = self._redis.register_script(_CLAIM)

    def _kiosk_key(self, kiosk_id: str) -> str:
        return f"{self._prefix}:kiosk:{kiosk_id}"

    def _instance_key(self, instance_id: str) -> str:
        return f"{self._prefix}:instance:{instance_id}"

    async def add(self, kiosk_id: str, sid: str) -> None:
        """Record a kiosk connection of this instance (best effort: logged on failure)."""
        self._own[sid] = kiosk_id
        try:
            await self._redis.hset(self._kiosk_key(kiosk_id), sid, self.instance_id)
        except (RedisError, OSError) as exc:
            server_logger.warning("presence: could not record kiosk %s: %s", kiosk_id, exc)

    async def remove(self, kiosk_id: str, sid: str) -> None:
        """Forget a kiosk connection of this instance."""
        self._own.pop(sid, None)
        try:
            await self._redis.hdel(self._kiosk_key(kiosk_id), sid)
        except (RedisError, OSError) as exc:
            server_logger.warning("presence: could not forget kiosk %s: %s", kiosk_id, exc)

    async def find(self, kiosk_id: str) -> list[tuple[str, str]]:
        """(instance, sid) of the kiosk's connections on live instances, newest last."""
        return await self._live(self._kiosk_key(kiosk_id))

    async def _live(self, key: str) -> list[tuple[str, str]]:
        """(instance, sid) in hash ``key`` whose instance is alive; the others removed."""
        try:
            entries: dict[Any, Any] = await self._redis.hgetall(key)
            if not entries:
                return []
            live = await self._alive({host.decode() for host in entries.values()})
            dead = [sid for sid, host in entries.items() if host.decode() not in live]
            if dead:
                await self._redis.hdel(key, *dead)
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc
        return [(host.decode(), sid.decode()) for sid, host in entries.items() if sid not in dead]

    async def _alive(self, hosts: set[str]) -> set[str]:
        """The instances of ``hosts`` whose heartbeat has not expired."""
        if not hosts:
            return set()
        ordered = sorted(hosts)
        beats = await self._redis.mget([self._instance_key(h) for h in ordered])
        return {h for h, beat in zip(ordered, beats, strict=True) if beat is not None}

    # -- the cluster's KioskBook (lockerbus.kiosks) --------------------------------
    # Failures raise PresenceError; the tracker logs them (an announcement is late,
    # never wrong: the next connection or disconnection decides again).

    async def opened(self, kiosk_id: str, sid: str, at: float) -> None:
        """Record a kiosk connection (any namespace) of this instance."""
        self._conns[sid] = kiosk_id
        await self._kiosk_write(kiosk_id, sid, at, add=True)

    async def closed(self, kiosk_id: str, sid: str, at: float) -> int:
        """Forget one; the kiosk's connections left on every live instance."""
        self._conns.pop(sid, None)
        await self._kiosk_write(kiosk_id, sid, at, add=False)
        return await self.count(kiosk_id)

    async def _kiosk_write(self, kiosk_id: str, sid: str, at: float, *, add: bool) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                key = f"{self._prefix}:kconn:{kiosk_id}"
                pipe.hset(key, sid, self.instance_id) if add else pipe.hdel(key, sid)
                pipe.hset(f"{self._prefix}:kinfo:{kiosk_id}", "last_seen", repr(at))
                pipe.sadd(f"{self._prefix}:kiosks", kiosk_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc

    async def count(self, kiosk_id: str) -> int:
        """The kiosk's connections on every live instance."""
        return len(await self._live(f"{self._prefix}:kconn:{kiosk_id}"))

    async def claim(self, kiosk_id: str, status: str) -> bool:
        """Make ``status`` the announced one; True for the one instance that changed it."""
        try:
            return bool(await self._claim(keys=[f"{self._prefix}:kinfo:{kiosk_id}"], args=[status]))
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc

    async def note_status(self, kiosk_id: str, status: str, health_score: float) -> None:
        """Keep the kiosk's latest system_status."""
        try:
            await self._redis.hset(
                f"{self._prefix}:kinfo:{kiosk_id}",
                mapping={"status": status, "health_score": repr(health_score)},
            )
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc

    async def listing(self) -> list[dict[str, Any]]:
        """Every kiosk seen, with its connections on live instances.

        The sweep asks this every few seconds: a few pipelined round trips for
        all kiosks, not three per kiosk (10,000 kiosks took ~3 s of CPU)."""
        try:
            members: set[Any] = await self._redis.smembers(f"{self._prefix}:kiosks")
            ids = sorted(m.decode() for m in members)
            infos: list[dict[Any, Any]] = []
            conns: list[dict[Any, Any]] = []
            for start in range(0, len(ids), LISTING_BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for kiosk_id in ids[start : start + LISTING_BATCH]:
                        pipe.hgetall(f"{self._prefix}:kinfo:{kiosk_id}")
                        pipe.hgetall(f"{self._prefix}:kconn:{kiosk_id}")
                    replies = await pipe.execute()
                infos += replies[0::2]
                conns += replies[1::2]
            live = await self._alive({h.decode() for c in conns for h in c.values()})
            dead = {
                kiosk_id: [sid for sid, host in entries.items() if host.decode() not in live]
                for kiosk_id, entries in zip(ids, conns, strict=True)
            }
            if any(dead.values()):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for kiosk_id, sids in dead.items():
                        if sids:
                            pipe.hdel(f"{self._prefix}:kconn:{kiosk_id}", *sids)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc
        listed = []
        for kiosk_id, raw, entries in zip(ids, infos, conns, strict=True):
            info = {k.decode(): v.decode() for k, v in raw.items()}
            health = info.get("health_score")
            listed.append(
                {
                    "kioskId": kiosk_id,
                    "connections": len(entries) - len(dead[kiosk_id]),
                    "last_seen": float(info.get("last_seen", "0")),
                    "announced": info.get("announced"),
                    "status": info.get("status"),
                    "health_score": None if health is None else float(health),
                }
            )
        return listed

    async def remember(
        self,
        kiosk_id: str,
        *,
        last_seen: float,
        announced: str | None,
        status: str | None,
        health_score: float | None,
    ) -> None:
        """Record a kiosk known from the store's history, unless Redis knows it."""
        fields: dict[str, str | None] = {
            "last_seen": repr(last_seen),
            "announced": announced,
            "status": status,
            "health_score": None if health_score is None else repr(health_score),
        }
        try:
            if await self._redis.sadd(f"{self._prefix}:kiosks", kiosk_id):
                mapping: dict[Any, Any] = {k: v for k, v in fields.items() if v is not None}
                await self._redis.hset(f"{self._prefix}:kinfo:{kiosk_id}", mapping=mapping)
        except (RedisError, OSError) as exc:
            raise PresenceError(str(exc)) from exc

    async def heartbeat(self, connections: dict[str, int]) -> None:
        """Say this instance is alive, with its connection counts; re-record its kiosks
        if Redis lost them (restarted without persistence)."""
        key = self._instance_key(self.instance_id)
        body = orjson.dumps({"connections": connections})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, body, ex=int(TTL_SECONDS))
            pipe.sadd(f"{self._prefix}:instances", self.instance_id)
            for sid, kiosk_id in self._own.items():
                pipe.hset(self._kiosk_key(kiosk_id), sid, self.instance_id)
            for sid, kiosk_id in self._conns.items():
                pipe.hset(f"{self._prefix}:kconn:{kiosk_id}", sid, self.instance_id)
            await pipe.execute()

    async def instances(self) -> dict[str, Any]:
        """Live instances and their connection counts (as of their last heartbeat)."""
        raw: set[Any] = await self._redis.smembers(f"{self._prefix}:instances")
        members = sorted(m.decode() for m in raw)
        if not members:
            return {}
        beats = await self._redis.mget([self._instance_key(m) for m in members])
        dead = [m for m, beat in zip(members, beats, strict=True) if beat is None]
        if dead:
            await self._redis.srem(f"{self._prefix}:instances", *dead)
        return {
            m: orjson.loads(beat)
            for m, beat in zip(members, beats, strict=True)
            if beat is not None
        }

    async def run(self, connections: Callable[[], dict[str, int]]) -> None:
        """Background task: heartbeat until cancelled."""
        while True:
            try:
                await self.heartbeat(connections())
            except (RedisError, OSError) as exc:
                server_logger.warning("presence heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def close(self) -> None:
        """Leave the cluster now rather than when the heartbeat expires."""
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._instance_key(self.instance_id))
                pipe.srem(f"{self._prefix}:instances", self.instance_id)
                for sid, kiosk_id in self._own.items():
                    pipe.hdel(self._kiosk_key(kiosk_id), sid)
                for sid, kiosk_id in self._conns.items():
                    pipe.hdel(f"{self._prefix}:kconn:{kiosk_id}", sid)
                await pipe.execute()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
