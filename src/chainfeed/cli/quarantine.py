"""``chainfeed quarantine list|replay``: activities Alchemy sent that the parser could not use.

``list`` shows what waits (event id, position, reason, age); ``replay`` runs the current parser
on it again (after a fix), storing what is now usable: idempotent, with a progress line per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from chainfeed import config
from chainfeed.errors import ConfigError
from chainfeed.ingest.quarantine import ReplayProgress, replay
from chainfeed.storage.pool import short_pool
from chainfeed.storage.quarantine import QuarantineRow, count_open, list_open

__all__ = ["list_command", "replay_command"]


def _database_url() -> str:
    settings = config.load(dev=True)
    if not settings.database_url:
        raise ConfigError("CHAINFEED_DATABASE_URL", "is required")
    return settings.database_url


def list_command(args: argparse.Namespace) -> int:
    """Print the oldest open quarantined activities (``--json``: with their raw text)."""
    url = _database_url()

    async def fetch() -> tuple[list[QuarantineRow], int]:
        async with short_pool(url) as pool:
            return await list_open(pool, limit=args.limit), await count_open(pool)

    rows, total = asyncio.run(fetch())
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps([_as_dict(row, now) for row in rows], indent=2))
        return 0
    if not rows:
        print("quarantine is empty")
        return 0
    print(f"{'id':>8}  {'event id':<28} {'pos':>4}  {'reason':<20} {'age':>6}  where")
    for row in rows:
        print(f"{row.id:>8}  {row.event_id[:28]:<28} {row.position:>4}  {row.reason:<20} "
              f"{_age((now - row.created_at).total_seconds()):>6}  {row.detail}")  # fmt: skip
    if total > len(rows):
        print(f"... {total - len(rows)} more (--limit)")
    return 0


def replay_command(args: argparse.Namespace) -> int:
    """Parse the chosen activities again; exit 1 when some are still unusable."""
    url = _database_url()

    def report(progress: ReplayProgress) -> None:
        line = (f"replayed {progress.seen}: {progress.stored} stored, {progress.still_quarantined} still"
                f" quarantined, {progress.new_feed_items} feed item(s)")  # fmt: skip
        print(line, file=sys.stderr, flush=True)

    async def run() -> ReplayProgress:
        async with short_pool(url) as pool:
            return await replay(pool, ids=None if args.all else list(args.ids), on_batch=report)

    progress = asyncio.run(run())
    if progress.seen == 0:
        print("nothing to replay (already replayed, or no such id)")
        return 0
    print(f"done: {progress.stored} of {progress.seen} stored ({progress.new_feed_items} new feed item(s)),"
          f" {progress.still_quarantined} still quarantined")  # fmt: skip
    return 1 if progress.still_quarantined else 0


def _as_dict(row: QuarantineRow, now: datetime) -> dict[str, object]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "position": row.position,
        "network": row.network,
        "reason": row.reason,
        "detail": row.detail,
        "age_seconds": round((now - row.created_at).total_seconds(), 1),
        "created_at": row.created_at.isoformat(),
        "raw": row.raw,
    }


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
