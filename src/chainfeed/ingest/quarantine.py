"""Replaying quarantined activities through the current parser (``chainfeed quarantine replay``).

After a parser fix, what was quarantined becomes transfers exactly as if Alchemy had delivered it
now: the same natural keys (the delivery's event id and the activity's position are kept), the
same statement, so replaying twice, or replaying an activity Alchemy also delivered again, adds
nothing. Each batch is one transaction: its transfers, their feed items and outbox rows, and the
rows marked replayed commit together; the running app's relay publishes the items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from chainfeed.domain.alchemy import parse_activity
from chainfeed.domain.transfers import Quarantined, Transfer
from chainfeed.storage import quarantine as store
from chainfeed.storage.ingest import store_transfers
from chainfeed.storage.pool import Pool

__all__ = ["ReplayProgress", "replay"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class ReplayProgress:
    """Running totals of a replay: rows looked at, turned into transfers, still unusable."""

    seen: int = 0
    stored: int = 0
    still_quarantined: int = 0
    new_feed_items: int = 0


async def replay(
    pool: Pool,
    *,
    ids: list[int] | None = None,
    batch_size: int = 500,
    on_batch: Callable[[ReplayProgress], None] | None = None,
) -> ReplayProgress:
    """Parse every open quarantined activity (or those in ``ids``) again; store what is usable."""
    progress = ReplayProgress()
    after = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await store.take_batch(conn, after=after, limit=batch_size, ids=ids)
            if not rows:
                break
            after = rows[-1].id
            transfers: dict[tuple[str, str], Transfer] = {}
            usable: list[int] = []
            for row in rows:
                outcome = parse_activity(
                    row.raw.encode(), row.position, event_id=row.event_id, network=row.network
                )
                if isinstance(outcome, Quarantined):
                    await store.requarantine(conn, row.id, reason=outcome.reason, detail=outcome.detail)
                    progress.still_quarantined += 1
                else:
                    transfers[(outcome.hash_key, outcome.transfer_key)] = outcome
                    usable.append(row.id)
            if transfers:
                stored = await store_transfers(conn, tuple(transfers.values()))
                progress.new_feed_items += stored.new_feed_items
            if usable:
                await store.mark_replayed(conn, usable)
            progress.seen += len(rows)
            progress.stored += len(usable)
        log.info("quarantine replay batch", seen=progress.seen, stored=progress.stored,
                 still_quarantined=progress.still_quarantined,
                 new_feed_items=progress.new_feed_items)  # fmt: skip
        if on_batch is not None:
            on_batch(progress)
    return progress
