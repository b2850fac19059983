"""Quarantined activities: what an operator lists, and the rows a replay takes in turn.

Rows are written by the ingest statement (``storage.ingest``); a replay takes a batch with
``FOR UPDATE SKIP LOCKED`` (two operators replaying at once never take the same row), and either
marks each row replayed or records the reason the current parser still gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from chainfeed.storage.outbox import Connection

__all__ = ["QuarantineRow", "count_open", "list_open", "mark_replayed", "requarantine", "take_batch"]


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """One quarantined activity, as stored."""

    id: int
    event_id: str
    position: int
    network: str | None
    reason: str
    detail: str
    raw: str
    created_at: datetime
    replayed_at: datetime | None


_COLUMNS = "id, event_id, position, network, reason, detail, raw, created_at, replayed_at"


def _row(record: asyncpg.Record) -> QuarantineRow:
    return QuarantineRow(**dict(record))


async def list_open(pool: asyncpg.Pool, *, limit: int) -> list[QuarantineRow]:
    """The oldest ``limit`` activities not replayed yet."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM quarantined_activities WHERE replayed_at IS NULL ORDER BY id LIMIT $1",  # noqa: S608
        limit,
    )
    return [_row(r) for r in rows]


async def count_open(pool: asyncpg.Pool) -> int:
    """How many activities wait in quarantine."""
    return int(await pool.fetchval("SELECT count(*) FROM quarantined_activities WHERE replayed_at IS NULL"))


async def take_batch(
    conn: Connection, *, after: int, limit: int, ids: list[int] | None = None
) -> list[QuarantineRow]:
    """Lock the next ``limit`` open rows with id > ``after`` (only ``ids`` when given)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM quarantined_activities"  # noqa: S608
        " WHERE replayed_at IS NULL AND id > $1 AND ($2::bigint[] IS NULL OR id = ANY($2))"
        " ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
        after,
        ids,
        limit,
    )
    return [_row(r) for r in rows]


async def mark_replayed(conn: Connection, ids: list[int]) -> None:
    """These rows became transfers: kept for the record, no longer open."""
    await conn.execute(
        "UPDATE quarantined_activities SET replayed_at = now() WHERE id = ANY($1::bigint[])", ids
    )


async def requarantine(conn: Connection, row_id: int, *, reason: str, detail: str) -> None:
    """Still unusable: the current parser's reason replaces the old one."""
    await conn.execute(
        "UPDATE quarantined_activities SET reason = $2, detail = $3 WHERE id = $1", row_id, reason, detail
    )
