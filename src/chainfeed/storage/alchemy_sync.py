"""Durable record of what the Alchemy webhook should cover, and claims on it by the sync worker.

:func:`record_watch_change` runs inside the watch-list transaction, so a change can never be
committed without its sync record. The worker claims dirty rows with a short lease
(``FOR UPDATE SKIP LOCKED`` in a brief transaction, then no lock held during the HTTP call), so
several instances never send the same batch at once and the user's API call never waits on Alchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

__all__ = [
    "Claim",
    "claim_dirty",
    "mark_failed",
    "mark_replaced",
    "mark_synced",
    "max_attempts",
    "pending_count",
    "record_watch_change",
    "watched_addresses",
]

LEASE_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows leased to this worker: addresses to add and to remove."""

    add: list[str]
    remove: list[str]


async def record_watch_change(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, address: str
) -> None:
    """After a watch-list change of ``address`` in ``conn``'s transaction, record whether it is watched.

    The upsert locks the address's row first; the count that follows is a new statement, so it
    sees every concurrent change of the same address that committed before we got the lock.
    """
    await conn.execute(
        "INSERT INTO alchemy_addresses (address, desired) VALUES ($1, true)"
        " ON CONFLICT (address) DO UPDATE SET updated_at = now()",
        address,
    )
    await conn.execute(
        "UPDATE alchemy_addresses SET desired = EXISTS (SELECT 1 FROM watched_addresses WHERE address = $1),"
        " next_attempt_at = CASE WHEN attempts = 0 THEN now() ELSE next_attempt_at END"
        " WHERE address = $1",
        address,
    )


async def claim_dirty(pool: asyncpg.Pool, *, limit: int) -> Claim:
    """Lease up to ``limit`` rows whose desired state Alchemy does not have yet and that are due."""
    rows = await pool.fetch(
        "UPDATE alchemy_addresses SET lease_until = now() + make_interval(secs => $2)"
        " WHERE address IN ("
        "   SELECT address FROM alchemy_addresses"
        "   WHERE desired IS DISTINCT FROM synced AND next_attempt_at <= now()"
        "     AND (lease_until IS NULL OR lease_until < now())"
        "   ORDER BY next_attempt_at, address LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING address, desired",
        limit,
        float(LEASE_SECONDS),
    )
    return Claim(
        add=sorted(r["address"] for r in rows if r["desired"]),
        remove=sorted(r["address"] for r in rows if not r["desired"]),
    )


async def mark_synced(pool: asyncpg.Pool, *, added: list[str], removed: list[str]) -> None:
    """Alchemy now has ``added`` and not ``removed``; rows changed since stay dirty for the next round."""
    await pool.execute(
        "UPDATE alchemy_addresses AS a SET synced = s.state, attempts = 0, last_error = NULL,"
        " lease_until = NULL, next_attempt_at = now()"
        " FROM (SELECT unnest($1::text[]) AS address, true AS state"
        "       UNION ALL SELECT unnest($2::text[]), false) AS s"
        " WHERE a.address = s.address",
        added,
        removed,
    )


async def mark_failed(pool: asyncpg.Pool, addresses: list[str], *, error: str, delay_seconds: float) -> None:
    """Count a failed attempt and hold the rows back for ``delay_seconds``."""
    await pool.execute(
        "UPDATE alchemy_addresses SET attempts = attempts + 1, last_error = $2, lease_until = NULL,"
        " next_attempt_at = now() + make_interval(secs => $3) WHERE address = ANY($1::text[])",
        addresses,
        error,
        delay_seconds,
    )


async def pending_count(pool: asyncpg.Pool) -> int:
    """Addresses whose change Alchemy has not yet acknowledged."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM alchemy_addresses WHERE desired IS DISTINCT FROM synced"
    )
    return count


async def watched_addresses(pool: asyncpg.Pool) -> list[str]:
    """Every address at least one user watches (the webhook's whole list, for ``--full``)."""
    rows = await pool.fetch("SELECT DISTINCT address FROM watched_addresses ORDER BY address")
    return [row["address"] for row in rows]


async def max_attempts(pool: asyncpg.Pool, addresses: list[str]) -> int:
    """The most failed attempts among ``addresses`` (the next back-off grows from it)."""
    value = await pool.fetchval(
        "SELECT max(attempts) FROM alchemy_addresses WHERE address = ANY($1::text[])", addresses
    )
    return int(value or 0)


async def mark_replaced(pool: asyncpg.Pool, addresses: list[str]) -> None:
    """After a full replacement: exactly ``addresses`` are synced; rows missing for them are made."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE alchemy_addresses SET synced = (address = ANY($1::text[])), attempts = 0,"
            " last_error = NULL, lease_until = NULL",
            addresses,
        )
        # Repair rows for addresses that were watched without a sync record (e.g. loaded by hand).
        await conn.execute(
            "INSERT INTO alchemy_addresses (address, desired, synced)"
            " SELECT a, true, true FROM unnest($1::text[]) AS a ON CONFLICT (address) DO NOTHING",
            addresses,
        )
