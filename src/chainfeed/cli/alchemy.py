"""``chainfeed alchemy sync [--full]``: push the watch list to the Alchemy webhook by hand."""

from __future__ import annotations

import argparse
import asyncio
import sys

from chainfeed import config
from chainfeed.alchemy_api import AlchemyApi
from chainfeed.config import Settings
from chainfeed.errors import ConfigError
from chainfeed.ingest.alchemy_sync import AlchemySync, full_sync
from chainfeed.storage.alchemy_sync import pending_count
from chainfeed.storage.pool import Pool, short_pool

__all__ = ["sync_command"]


def sync_command(args: argparse.Namespace) -> int:
    """Send what is pending, or with ``--full`` replace the list; prints what was done."""
    settings = config.load(dev=True)
    if not settings.database_url:
        raise ConfigError("CHAINFEED_DATABASE_URL", "is required")
    if not settings.alchemy_auth_token:
        raise ConfigError("CHAINFEED_ALCHEMY_AUTH_TOKEN", "is required for alchemy sync")
    if not settings.alchemy_webhook_id:
        raise ConfigError("CHAINFEED_ALCHEMY_WEBHOOK_ID", "is required for alchemy sync")
    database_url = settings.database_url

    async def run() -> int:
        async with short_pool(database_url) as pool:
            return await _sync(pool, full=args.full, settings=settings)

    return asyncio.run(run())


async def _sync(pool: Pool, *, full: bool, settings: Settings) -> int:
    api = AlchemyApi(
        settings.alchemy_api_url, token=settings.alchemy_auth_token, webhook_id=settings.alchemy_webhook_id
    )
    try:
        if full:  # Alchemy refusing raises UpstreamError: one line and exit 1 (cli.main)
            sent = await full_sync(pool, api)
            print(f"replaced webhook {settings.alchemy_webhook_id} list with {sent} address(es)")
            return 0
        worker = AlchemySync(pool, api)
        rounds = 0
        while await worker.sync_once():
            rounds += 1
            print(f"sent batch {rounds}", flush=True)
        left = await pending_count(pool)
        if worker.paused_reason:
            print(f"chainfeed: alchemy refused our token: {worker.paused_reason}", file=sys.stderr)
            return 1
        print(f"done: {left} change(s) still pending" if left else "done: nothing pending")
        return 1 if left else 0
    finally:
        await api.aclose()
