"""Outbox queries: ``feed_outbox`` holds the ids of committed feed items not yet on the stream
(with the trace context of the ingest that created them).

Ingest inserts the ids in the same statement as the feed items (``storage.ingest``). A relay
publishes a batch in three steps: :func:`take_batch` (one transaction, under a cluster-wide
advisory lock) numbers the batch's items in their users' feeds (``seq``, from ``users.feed_seq``)
and leases the batch, and commits; the relay XADDs; :func:`mark_published` removes the batch
from the outbox. Because the numbers are committed before any XADD, every number below one a
client sees is already readable in PostgreSQL (what a connection's gap fill relies on), and a
batch that is published again (a relay died between XADD and delete, its lease ran out) carries
the same numbers. :func:`release_batch` gives a batch back at once when its XADDs failed.

Items that enter from the stream (hand XADDs recorded by the delivery side) never get an outbox
row, so they are never published back to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from chainfeed.domain.outbox import OutboxItem

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "LEASE_SECONDS",
    "OUTBOX_LOCK_KEY",
    "Connection",
    "backlog",
    "mark_published",
    "move_past_restore",
    "release_batch",
    "take_batch",
]

#: A connection taken from the pool (the relay holds one for a whole batch transaction).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

#: Advisory lock shared by every relay ("outb"); distinct from the migrations' lock.
OUTBOX_LOCK_KEY = 0x6F757462
#: How long a relay's batch is its own before another relay may publish it again.
LEASE_SECONDS = 10

# The batch: the oldest unleased outbox entries (the outbox's primary key alone), leased; its
# items not numbered yet get the next numbers of their users' feeds in id order (the users'
# counters are bumped by the count of their new items); then every item of the batch with its
# number. An id without a feed item (deleted since) comes back with NULL columns, to be removed.
_TAKE = """
WITH batch AS (
    SELECT feed_item_id FROM feed_outbox
    WHERE lease_until IS NULL OR lease_until < clock_timestamp()
    ORDER BY feed_item_id LIMIT $1
),
leased AS (
    UPDATE feed_outbox o SET lease_until = clock_timestamp() + make_interval(secs => $2)
    FROM batch WHERE o.feed_item_id = batch.feed_item_id
    RETURNING o.feed_item_id, o.traceparent, o.tracestate
),
fresh AS (
    SELECT f.id, f.user_id, row_number() OVER (PARTITION BY f.user_id ORDER BY f.id) AS n
    FROM leased l JOIN feed_items f ON f.id = l.feed_item_id
    WHERE f.seq IS NULL
),
bumped AS (
    UPDATE users u SET feed_seq = u.feed_seq + c.count
    FROM (SELECT user_id, count(*) AS count FROM fresh GROUP BY user_id) AS c
    WHERE u.id = c.user_id
    RETURNING u.id, u.feed_seq - c.count AS base
),
numbered AS (
    UPDATE feed_items f SET seq = b.base + fresh.n
    FROM fresh JOIN bumped b ON b.id = fresh.user_id
    WHERE f.id = fresh.id
    RETURNING f.id, f.seq
)
SELECT l.feed_item_id AS id, f.user_id, f.type, f.ref, f.payload::text AS payload, f.created_at,
       COALESCE(n.seq, f.seq) AS seq, l.traceparent, l.tracestate
FROM leased l
LEFT JOIN feed_items f ON f.id = l.feed_item_id
LEFT JOIN numbered n ON n.id = l.feed_item_id
ORDER BY l.feed_item_id
"""


async def take_batch(
    conn: Connection, *, limit: int, lock_timeout: float
) -> tuple[list[OutboxItem], list[int]]:
    """Number and lease the oldest ``limit`` outbox entries and commit: (items, every id taken).

    One relay at a time numbers (the advisory lock), so numbers follow outbox order; the lock is
    held only for this short transaction, not while the batch goes to Redis.
    """
    async with conn.transaction():
        # Its own statement: under READ COMMITTED the next one then takes a snapshot that holds
        # what the previous holder committed. Both values are ours, not input.
        await conn.execute(
            f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms';"
            f" SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})"
        )
        rows = await conn.fetch(_TAKE, limit, float(LEASE_SECONDS))
    items = [
        OutboxItem(
            id=row["id"],
            user_id=row["user_id"],
            seq=row["seq"],
            type=row["type"],
            payload=row["payload"],
            created_at=row["created_at"],
            traceparent=row["traceparent"],
            tracestate=row["tracestate"],
            ref=row["ref"],
        )
        for row in rows
        if row["user_id"] is not None
    ]
    return items, [row["id"] for row in rows]


_MARK = """
WITH published AS (
    UPDATE feed_items SET published_at = statement_timestamp() WHERE id = ANY($1::bigint[])
)
DELETE FROM feed_outbox WHERE feed_item_id = ANY($1::bigint[])
"""


async def mark_published(conn: Connection, ids: list[int]) -> None:
    """The batch is on the stream: out of the outbox, with the time it got there."""
    await conn.execute(_MARK, ids)


async def release_batch(conn: Connection, ids: list[int]) -> None:
    """The batch's XADDs failed: end its lease now, so the next pass publishes it again."""
    await conn.execute(
        "UPDATE feed_outbox SET lease_until = NULL WHERE feed_item_id = ANY($1::bigint[])", ids
    )


async def backlog(pool: asyncpg.Pool) -> int:
    """How many committed feed items are not yet on the stream."""
    count = await pool.fetchval("SELECT count(*) FROM feed_outbox", timeout=5)
    return int(count or 0)


async def move_past_restore(pool: asyncpg.Pool, high_water: int) -> int:
    """After a restore of PostgreSQL: hand out nothing a client may have seen; returns the shift.

    ``high_water`` is the highest item id the relays ever published (kept in Redis). When the
    id sequence is behind it, the database went back in time: every id up to ``high_water``, and
    every number of a user's feed up to its counter plus the items made since the backup (at most
    ``high_water - last id``), may be on a screen. So the sequence moves to ``high_water`` and
    every user's counter by that difference: new items come after anything served (a client sees
    a jump in ``seq``, resumes, and starts over if its last item is gone). 0 when nothing moved.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})")
        last = await conn.fetchval("SELECT last_value FROM feed_items_id_seq")
        shift = high_water - int(last)
        if shift <= 0:
            return 0
        await conn.execute("SELECT setval('feed_items_id_seq', $1)", high_water)
        await conn.execute("UPDATE users SET feed_seq = feed_seq + $1", shift)
        return shift
