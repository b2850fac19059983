"""A user's watch list: the addresses whose activity reaches their feed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from chainfeed.errors import ConflictError, NotFoundError
from chainfeed.storage.alchemy_sync import record_watch_change

__all__ = [
    "add_address",
    "list_addresses",
    "recently_watched",
    "remove_address",
]


def _entry(row: asyncpg.Record) -> dict[str, Any]:
    created: datetime = row["created_at"]
    return {"address": row["address"], "label": row["label"], "created_at": created.isoformat()}


async def list_addresses(pool: asyncpg.Pool, user_id: int) -> list[dict[str, Any]]:
    """The watch list, oldest first."""
    rows = await pool.fetch(
        "SELECT address, label, created_at FROM watched_addresses WHERE user_id = $1"
        " ORDER BY created_at, address",
        user_id,
    )
    return [_entry(row) for row in rows]


async def add_address(
    pool: asyncpg.Pool, user_id: int, address: str, label: str | None, *, limit: int
) -> tuple[dict[str, Any], bool]:
    """Watch ``address``; returns the entry and whether it is new.

    Idempotent: an address already watched is returned unchanged (its label updated when one
    is given). The per-user ``limit`` is checked under a row lock on the user, so two
    concurrent adds cannot both slip past it.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        existing = await conn.fetchrow(
            "SELECT address, label, created_at FROM watched_addresses WHERE user_id = $1 AND address = $2",
            user_id,
            address,
        )
        if existing is not None:
            if label is not None and label != existing["label"]:
                existing = await conn.fetchrow(
                    "UPDATE watched_addresses SET label = $3 WHERE user_id = $1 AND address = $2"
                    " RETURNING address, label, created_at",
                    user_id,
                    address,
                    label,
                )
                assert existing is not None
            return _entry(existing), False
        count = await conn.fetchval("SELECT count(*) FROM watched_addresses WHERE user_id = $1", user_id)
        if count >= limit:
            raise ConflictError(f"watch list is full ({limit} addresses at most)")
        row = await conn.fetchrow(
            "INSERT INTO watched_addresses (user_id, address, label) VALUES ($1, $2, $3)"
            " RETURNING address, label, created_at",
            user_id,
            address,
            label,
        )
        assert row is not None
        await record_watch_change(conn, address)
        return _entry(row), True


async def remove_address(pool: asyncpg.Pool, user_id: int, address: str) -> None:
    """Stop watching ``address``; NotFoundError when it was not watched."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "DELETE FROM watched_addresses WHERE user_id = $1 AND address = $2", user_id, address
        )
        if status.endswith(" 0"):
            raise NotFoundError("address is not on the watch list")
        await record_watch_change(conn, address)


async def recently_watched(pool: asyncpg.Pool, *, limit: int) -> list[str]:
    """Distinct watched addresses, the most recently watched first (the simulator's targets)."""
    rows = await pool.fetch(
        "SELECT address FROM watched_addresses GROUP BY address ORDER BY max(created_at) DESC LIMIT $1", limit
    )
    return [row["address"] for row in rows]
