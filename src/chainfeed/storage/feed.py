"""Feed queries: a page of history (REST), and a user's items in feed order (WebSocket replay).

A user's feed order is ``seq`` (docs/design/delivery.md); ``feed_items (user_id, seq)`` is a
unique index, so every read here that a connection makes is a range read on it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from chainfeed.domain.feed import feed_frame

__all__ = ["feed_after", "feed_page", "start_position"]

_COLUMNS = "id, seq, ref, user_id, type, payload, created_at"


def _frame(row: asyncpg.Record) -> dict[str, Any]:
    return feed_frame(
        item_id=row["id"],
        seq=row["seq"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        payload=row["payload"],
        type_=row["type"],
        ref=row["ref"],
    )


async def feed_page(
    pool: asyncpg.Pool, user_id: int, *, limit: int, before: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` items newest first, older than ``before``; and the cursor for the next page."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM feed_items WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)"  # noqa: S608
        " ORDER BY id DESC LIMIT $3",
        user_id,
        before,
        limit + 1,
    )
    items = [_frame(row) for row in rows[:limit]]
    next_before = items[-1]["id"] if len(rows) > limit else None
    return items, next_before


async def feed_after(
    pool: asyncpg.Pool, user_id: int, after: int, *, before: int | None = None, limit: int
) -> list[dict[str, Any]]:
    """The user's items with ``after`` < seq (< ``before``), in seq order, at most ``limit``."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM feed_items"  # noqa: S608
        " WHERE user_id = $1 AND seq > $2 AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq LIMIT $4",
        user_id,
        after,
        before,
        limit,
    )
    return [_frame(row) for row in rows]


# The user's last number, and (for a resume) the number of the item ``$2`` if it is the user's:
# NULL when it is not, its number once numbered, and the user's last number while it still waits
# in the outbox (it is sent live then, as the next number).
_POSITION = """
SELECT u.feed_seq,
       (SELECT COALESCE(f.seq, u.feed_seq) FROM feed_items f WHERE f.id = $2 AND f.user_id = $1) AS since_seq
FROM users u WHERE u.id = $1
"""


async def start_position(pool: asyncpg.Pool, user_id: int, since: int | None) -> int | None:
    """Where a connection starts in its user's feed: the last number sent before it (0: nothing).

    Without ``since``: the user's last number (it gets what is numbered after it opened). With
    ``since`` = 0: the start. Otherwise the number of item ``since``; None when that is not an
    item of this user (the connection is refused with 4400).
    """
    row = await pool.fetchrow(_POSITION, user_id, since or 0)
    if row is None:
        return None
    if since is None:
        return int(row["feed_seq"])
    if since == 0:
        return 0
    return None if row["since_seq"] is None else int(row["since_seq"])
