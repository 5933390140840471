"""The outgoing queue's items and their optional on-disk copy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Item:
    id: int
    payload: dict[str, Any]
    attempts: int = 0


class DiskQueue:
    """The unsent events in a small SQLite file, so a rebooted kiosk keeps them.

    aiosqlite runs every statement on its own thread, off the event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Any = None

    async def open(self) -> list[Item]:
        import aiosqlite

        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"
        )
        await self._db.commit()
        async with self._db.execute("SELECT id, payload FROM outbox ORDER BY id") as cursor:
            rows = await cursor.fetchall()
        return [Item(int(row[0]), json.loads(row[1])) for row in rows]

    async def add(self, item: Item) -> None:
        await self._db.execute(
            "INSERT INTO outbox (id, payload) VALUES (?, ?)", (item.id, json.dumps(item.payload))
        )
        await self._db.commit()

    async def remove(self, item_id: int) -> None:
        await self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
