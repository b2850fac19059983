"""Feed queries: a page of history (REST) and everything after an id (WebSocket resume)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from chainfeed.domain.feed import feed_frame

__all__ = ["feed_page", "feed_published_since", "feed_resume", "feed_since"]

_COLUMNS = "id, user_id, type, payload, created_at"
#: The user's items published after item ``$2`` but numbered below it (see feed_resume).
_LATE = (
    f"SELECT {_COLUMNS} FROM feed_items"  # noqa: S608
    " WHERE user_id = $1 AND id < $2"
    "   AND published_at > (SELECT published_at FROM feed_items WHERE id = $2 AND user_id = $1)"
    " ORDER BY id LIMIT 1000"
)


def _frame(row: asyncpg.Record) -> dict[str, Any]:
    return feed_frame(
        item_id=row["id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        payload=row["payload"],
        type_=row["type"],
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


async def feed_since(
    pool: asyncpg.Pool, user_id: int, since: int, *, limit: int = 1000
) -> list[dict[str, Any]]:
    """Items with id > ``since``, oldest first (at most ``limit``; callers page on the last id)."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM feed_items WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3",  # noqa: S608
        user_id,
        since,
        limit,
    )
    return [_frame(row) for row in rows]


async def feed_resume(
    pool: asyncpg.Pool, user_id: int, since: int, *, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a resume from ``since`` sends first, in one round trip: the late items and the first
    page after ``since`` (:func:`feed_since`).

    Late items have ids below ``since`` but reached the stream after item ``since`` did.
    Ids come from a sequence when a row is inserted, but transactions commit in any order: an
    item can get id 10, commit after item 11, and be published after a client already saw 11. A
    client that was away then resumes with ``since=11`` and would never see 10. The outbox
    publishes in id order among committed rows, so such late items are exactly those published
    after the ``since`` item; resume sends them too (clients drop repeats by id).
    """
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM (({_LATE}) UNION ALL"  # noqa: S608
        f" (SELECT {_COLUMNS} FROM feed_items WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3))"
        " AS items ORDER BY id",
        user_id,
        since,
        limit,
    )
    frames = [_frame(row) for row in rows]
    first = next((n for n, frame in enumerate(frames) if frame["id"] > since), len(frames))
    return frames[:first], frames[first:]


async def feed_published_since(pool: asyncpg.Pool, user_id: int, at: datetime) -> list[dict[str, Any]]:
    """The user's items that reached the stream at or after ``at``, oldest first (at most 1000).

    For a live connection that has sent nothing yet when its instance's PUB/SUB connection was
    re-established: what it may have missed is what was published since it opened.
    """
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM feed_items WHERE user_id = $1 AND published_at >= $2"  # noqa: S608
        " ORDER BY id LIMIT 1000",
        user_id,
        at,
    )
    return [_frame(row) for row in rows]
