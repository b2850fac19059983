"""Outbox queries: ``feed_outbox`` holds the ids of committed feed items not yet on the stream
(with the trace context of the ingest that created them).

Ingest inserts the ids in the same statement as the feed items (``storage.ingest``). The relay calls
:func:`lock_outbox`, :func:`unpublished` and :func:`mark_published` inside one transaction. The
transaction-level advisory lock lets one relay at a time publish, cluster-wide, so the stream
receives items in id order (per-user order included) even with several instances; a waiting
relay then sees, in a fresh snapshot, only what the previous one left.

Publishing also sets ``feed_items.published_at``: the delivery side's resume uses it to find
items committed late (a lower id that reached the stream after a higher one).

Items that enter from the stream (hand XADDs recorded by the delivery side) never get an outbox
row, so they are never published back to it.
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

# The batch is chosen on the outbox's primary key alone, then each item is fetched by its primary
# key (the LIMIT 1 keeps the lateral subquery from being flattened into a join the planner might
# answer with a scan of all feed_items while its statistics are young). An id without a feed item
# (deleted since) comes back with NULL columns and is only removed.
_UNPUBLISHED = """
SELECT o.feed_item_id AS id, f.user_id, f.type, f.payload, f.created_at, o.traceparent, o.tracestate
FROM (
    SELECT feed_item_id, traceparent, tracestate FROM feed_outbox ORDER BY feed_item_id LIMIT $1
) AS o
LEFT JOIN LATERAL (
    SELECT user_id, type, payload::text AS payload, created_at
    FROM feed_items WHERE id = o.feed_item_id LIMIT 1
) AS f ON true
ORDER BY o.feed_item_id
"""


async def lock_outbox(conn: Connection, *, lock_timeout: float) -> None:
    """Wait (at most ``lock_timeout`` s) until no other relay publishes; held until the transaction ends.

    Must be its own statement: under READ COMMITTED the next statement then takes a snapshot that
    no longer contains what the previous holder published.
    """
    # One round trip (simple protocol, two statements); both values are ours, not input.
    await conn.execute(
        f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms';"
        f" SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})"
    )


async def unpublished(conn: Connection, *, limit: int) -> tuple[list[OutboxItem], list[int]]:
    """The oldest ``limit`` outbox entries: (items to publish in id order, every id taken)."""
    rows = await conn.fetch(_UNPUBLISHED, limit)
    items = [
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
        if row["user_id"] is not None
    ]
    return items, [row["id"] for row in rows]


# statement_timestamp(), not now(): a relay that waited for the lock began its transaction before
# the previous batch committed, and published_at must grow from batch to batch (the delivery side's
# resume compares it). One value per batch, taken after the lock.
_MARK = """
WITH published AS (
    UPDATE feed_items SET published_at = statement_timestamp() WHERE id = ANY($1::bigint[])
)
DELETE FROM feed_outbox WHERE feed_item_id = ANY($1::bigint[])
"""


async def mark_published(conn: Connection, ids: list[int]) -> None:
    """Take ``ids`` out of the outbox and record when they were published (visible on commit)."""
    await conn.execute(_MARK, ids)


async def backlog(pool: asyncpg.Pool) -> int:
    """How many committed feed items are not yet on the stream."""
    count = await pool.fetchval("SELECT count(*) FROM feed_outbox", timeout=5)
    return int(count or 0)
