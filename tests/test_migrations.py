"""Migrations on a database that already holds data: what it had keeps working afterwards."""

from __future__ import annotations

import json
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from chainfeed.domain.alchemy import parse_webhook
from chainfeed.storage import migrate
from chainfeed.storage.ingest import store_webhook
from chainfeed.storage.migrate import available_migrations, create_database, drop_database
from chainfeed.storage.pool import create_pool
from tests.ingest_support import BLOCK_HASH, OTHER_BLOCK_HASH, activity, address, tx_hash, webhook

ME, ALICE = address(0xA11CE0), address(0xA11CE1)


async def test_008_keeps_a_removed_transfer_removed_and_its_item_updatable(migrated: tuple[str, str]) -> None:
    """A transfer removed by a re-org before 008 (its item marked removed): after 008 a late copy
    of its original block changes nothing (the block is remembered as left), and its inclusion in
    another block restores it with a transaction_updated item for the existing item."""
    name = f"mig_{secrets.token_hex(4)}"
    await create_database(migrated[0], name)
    url = urlunsplit(urlsplit(migrated[0])._replace(path=f"/{name}"))
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, file, sql in available_migrations():
                if version < 8:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, file)
            user = await conn.fetchval(
                "INSERT INTO users (username, password_hash) VALUES ('old', 'x') RETURNING id"
            )
            await conn.execute("INSERT INTO watched_addresses (user_id, address) VALUES ($1, $2)", user, ME)
            tx = tx_hash()
            mined = activity("token", frm=ALICE, to=ME, hash_=tx, log_index=4)
            transfer = await conn.fetchval(
                "INSERT INTO transactions (network, hash, transfer_key, category, from_address,"
                " to_address, block_hash, removed, raw)"
                " VALUES ('ETH_MAINNET', $1, 'log:4', 'token', $2, $3, $4, true, $5) RETURNING id",
                tx, ALICE, ME, BLOCK_HASH, json.dumps(mined),
            )  # fmt: skip
            item = await conn.fetchval(
                "INSERT INTO feed_items (user_id, transaction_id, payload, seq, published_at)"
                " VALUES ($1, $2, '{\"removed\": true}', 1, now()) RETURNING id",
                user, transfer,
            )  # fmt: skip
        finally:
            await conn.close()

        assert await migrate(url) == [
            "008_quarantine_and_reorgs.sql",
            "009_reorg_pending.sql",
            "010_feed_budget.sql",
        ]
        pool = await create_pool(url, max_size=2)
        try:
            stale = await store_webhook(pool, parse_webhook(json.dumps(webhook(mined)).encode()))
            assert (stale.updated_transfers, stale.new_feed_items) == (0, 0)
            moved = activity("token", frm=ALICE, to=ME, hash_=tx, log_index=4, block_hash=OTHER_BLOCK_HASH)
            restored = await store_webhook(pool, parse_webhook(json.dumps(webhook(moved)).encode()))
            assert (restored.updated_transfers, restored.update_items) == (1, 1)
            rows = await pool.fetch("SELECT type, ref, payload FROM feed_items ORDER BY id")
            assert [(r["type"], r["ref"]) for r in rows] == [
                ("new_transaction", None),
                ("transaction_updated", item),
            ]
            assert rows[0]["payload"]["removed"] is False
            late = await store_webhook(pool, parse_webhook(json.dumps(webhook(mined)).encode()))
            assert (late.updated_transfers, late.new_feed_items) == (0, 0)
            assert await pool.fetchval("SELECT block_hash FROM transactions") == OTHER_BLOCK_HASH
        finally:
            await pool.close()
    finally:
        await drop_database(migrated[0], name)
