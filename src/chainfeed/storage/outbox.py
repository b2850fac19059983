"""Outbox queries: feed items whose ``published_at`` is still NULL, oldest first, and marking them.

The relay calls :func:`lock_outbox` then :func:`unpublished` then :func:`mark_published` inside one
transaction. The transaction-level advisory lock makes one relay at a time publish, cluster-wide,
so the stream receives items in id order (per user order included) even with several instances;
a waiting relay then sees, in a fresh snapshot, only what the previous one left.

Items with a ``source_entry_id`` entered *from* the stream (a hand XADD recorded by the delivery
side); they are never published back to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from chainfeed.domain.outbox import OutboxItem

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["OUTBOX_LOCK_KEY", "Connection", "backlog", "lock_outbox", "mark_published", "unpublished"]

#: A connection taken from the pool (the relay holds one for a whole batch transaction).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

#: Advisory lock shared by every relay ("outb"); distinct from the migrations' lock.
OUTBOX_LOCK_KEY = 0x6F757462

_UNPUBLISHED = """
SELECT id, user_id, type, payload::text AS payload, created_at, traceparent, tracestate
FROM feed_items
WHERE published_at IS NULL AND source_entry_id IS NULL
ORDER BY id
LIMIT $1
"""


async def lock_outbox(conn: Connection, *, lock_timeout: float) -> None:
    """Wait (at most ``lock_timeout`` s) until no other relay publishes; held until the transaction ends.

    Must be its own statement: under READ COMMITTED the next statement then takes a snapshot that
    includes what the previous holder marked published.
    """
    # One round trip (simple protocol, two statements); both values are ours, not input.
    await conn.execute(
        f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms';"
        f" SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})"
    )


async def unpublished(conn: Connection, *, limit: int) -> list[OutboxItem]:
    """Up to ``limit`` unpublished feed items in id order."""
    rows = await conn.fetch(_UNPUBLISHED, limit)
    return [
        OutboxItem(
            id=row["id"],
            user_id=row["user_id"],
            type=row["type"],
            payload=row["payload"],
            created_at=row["created_at"],
            traceparent=row["traceparent"],
            tracestate=row["tracestate"],
        )
        for row in rows
    ]


async def mark_published(conn: Connection, ids: list[int]) -> None:
    """Record that ``ids`` are on the stream (visible to others when the transaction commits)."""
    await conn.execute("UPDATE feed_items SET published_at = now() WHERE id = ANY($1::bigint[])", ids)


async def backlog(pool: asyncpg.Pool) -> int:
    """How many committed feed items are not yet on the stream (uses the partial index)."""
    count = await pool.fetchval(
        "SELECT count(*) FROM feed_items WHERE published_at IS NULL AND source_entry_id IS NULL", timeout=5
    )
    return int(count or 0)
