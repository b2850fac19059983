"""Feed items for stream entries that arrived without one (a hand XADD), created exactly once.

The entry id is the natural key (``feed_items.source_entry_id`` is UNIQUE), so a redelivered or
reclaimed entry finds the item made the first time instead of making a second one.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg

__all__ = ["StoredEntry", "persist_entry"]

_LOCK_USER = "SELECT feed_seq FROM users WHERE id = $1 FOR UPDATE"
_EXISTING = "SELECT id, created_at, seq FROM feed_items WHERE source_entry_id = $1"
# published_at is set: the item is on the stream already, the outbox relay must not publish it.
_INSERT = """
WITH counter AS (UPDATE users SET feed_seq = feed_seq + 1 WHERE id = $1 RETURNING feed_seq)
INSERT INTO feed_items (user_id, type, payload, source_entry_id, published_at, seq)
SELECT $1, $2, $3::text::jsonb, $4, now(), counter.feed_seq FROM counter
RETURNING id, created_at, seq
"""


class StoredEntry(NamedTuple):
    """The feed item a stream entry became, with its position in the user's feed."""

    item_id: int
    created_at: datetime
    seq: int


async def persist_entry(
    pool: asyncpg.Pool, *, entry_id: str, user_id: int, type_: str, payload_json: str
) -> StoredEntry | None:
    """The feed item made for the entry (made now or the first time); None when the user does not exist.

    The user's row is locked first, so two consumers persisting the same entry take turns and the
    second finds the first's item (a new statement sees its commit): a number is never handed
    out for an item that is then not inserted, and a user's feed has no hole.
    """
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(_LOCK_USER, user_id) is None:
            return None
        row = await conn.fetchrow(_EXISTING, entry_id)
        if row is None:
            row = await conn.fetchrow(_INSERT, user_id, type_, payload_json, entry_id)
    assert row is not None
    return StoredEntry(int(row["id"]), row["created_at"], int(row["seq"]))
