"""Feed items for stream entries that arrived without one (a hand XADD), created exactly once.

The entry id is the natural key (``feed_items.source_entry_id`` is UNIQUE), so a redelivered or
reclaimed entry finds the item made the first time instead of making a second one.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg

__all__ = ["StoredEntry", "persist_entry"]

# published_at is set: the item is on the stream already, the outbox relay must not publish it.
_INSERT = """
INSERT INTO feed_items (user_id, type, payload, source_entry_id, published_at)
SELECT $1, $2, $3::text::jsonb, $4, now()
WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)
ON CONFLICT (source_entry_id) DO NOTHING
RETURNING id, created_at
"""
_EXISTING = "SELECT id, created_at FROM feed_items WHERE source_entry_id = $1"


class StoredEntry(NamedTuple):
    """The feed item a stream entry became."""

    item_id: int
    created_at: datetime


async def persist_entry(
    pool: asyncpg.Pool, *, entry_id: str, user_id: int, type_: str, payload_json: str
) -> StoredEntry | None:
    """The feed item made for the entry (made now or the first time); None when the user does not exist.

    The lookup after a conflict is a separate statement on purpose: when another consumer's
    insert of the same entry commits while ours waits, only a new snapshot sees its row.
    """
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_INSERT, user_id, type_, payload_json, entry_id)
        if row is None:
            row = await conn.fetchrow(_EXISTING, entry_id)
    if row is None:
        return None
    return StoredEntry(int(row["id"]), row["created_at"])
