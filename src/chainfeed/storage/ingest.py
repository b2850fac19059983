"""Idempotent storage of one webhook: event, transfers and the watchers' feed items in one statement.

One round trip and one implicit transaction per webhook, whatever its size: the transfers travel
as one JSON document expanded by ``jsonb_to_recordset``, and data-modifying CTEs upsert the
transfers, find the watchers of either side, and insert their feed items and the items' ids in
``feed_outbox`` (what the relay publishes). Either all of it commits or none of it does.

Idempotency lives in the unique keys: ``transactions (network, hash, transfer_key)`` and
``feed_items (user_id, transaction_id)``. A repeated transfer creates nothing; feed items are only
made for transfers this statement inserted (and not already removed by a re-org), so a retry after
a user started watching does not resurface an old transfer as "new".

Re-orgs update the stored row instead of adding one (and the stored feed item payloads follow):

- ``removed: true`` for the block the row is in (or with no block hash to compare) marks it removed;
- a different block hash (re-included elsewhere) moves it there and clears ``removed``;
- a stale copy (``removed: false`` for the block it was already removed from) changes nothing.

Rows are upserted in natural-key order so concurrent webhooks lock them in the same order
(no deadlocks); feed items get their ids in payload order.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import msgspec

from chainfeed.domain.alchemy import Transfer, Webhook

__all__ = ["StoredWebhook", "store_webhook"]

_STORE = """
WITH event AS (
    INSERT INTO webhook_events AS e (id, webhook_id, type, network, activity_count)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (id) DO UPDATE SET deliveries = e.deliveries + 1, last_seen_at = now()
    RETURNING deliveries
),
input AS (
    -- One element per transfer: [transfer_key, payload, the transfer as the parser made it].
    SELECT r.ord, r.item->>0 AS transfer_key, r.item->1 AS payload, i.*
    FROM jsonb_array_elements($6::text::jsonb) WITH ORDINALITY AS r (item, ord)
    CROSS JOIN LATERAL jsonb_to_record(r.item->2) AS i (
        network text, hash text, category text, from_address text, to_address text,
        value double precision, asset text, block_num bigint, block_hash text, removed boolean, raw jsonb)
),
upserted AS (
    INSERT INTO transactions AS t (network, hash, transfer_key, category, from_address, to_address,
                                   value, asset, block_num, block_hash, removed, raw)
    SELECT network, hash, transfer_key, category, from_address, to_address,
           value, asset, block_num, block_hash, removed, raw
    FROM input ORDER BY network, hash, transfer_key
    ON CONFLICT (network, hash, transfer_key) DO UPDATE SET
        removed = EXCLUDED.removed,
        block_hash = COALESCE(EXCLUDED.block_hash, t.block_hash),
        block_num = COALESCE(EXCLUDED.block_num, t.block_num),
        raw = EXCLUDED.raw,
        updated_at = now()
    WHERE (EXCLUDED.removed AND NOT t.removed
           AND (EXCLUDED.block_hash IS NULL OR t.block_hash IS NULL OR EXCLUDED.block_hash = t.block_hash))
       OR (NOT EXCLUDED.removed AND EXCLUDED.block_hash IS DISTINCT FROM t.block_hash
           AND EXCLUDED.block_hash IS NOT NULL)
       OR (NOT EXCLUDED.removed AND EXCLUDED.block_hash IS NULL AND t.block_hash IS NULL
           AND EXCLUDED.block_num IS DISTINCT FROM t.block_num AND EXCLUDED.block_num IS NOT NULL)
    RETURNING t.id, t.network, t.hash, t.transfer_key, t.removed, t.block_hash, t.block_num,
              (t.xmax = 0) AS inserted
),
reorged AS (
    -- The items of a re-orged transfer, found through its watchers and the unique
    -- (user_id, transaction_id) index; a user who has stopped watching keeps the old payload.
    UPDATE feed_items f
    SET payload = f.payload || jsonb_build_object(
        'removed', u.removed, 'block_hash', u.block_hash, 'block_num', u.block_num)
    FROM upserted u
    JOIN input i USING (network, hash, transfer_key)
    CROSS JOIN LATERAL (VALUES (i.from_address), (i.to_address)) AS side (address)
    JOIN watched_addresses w ON w.address = side.address
    WHERE NOT u.inserted AND f.user_id = w.user_id AND f.transaction_id = u.id
    RETURNING f.id
),
matches AS (
    SELECT DISTINCT ON (w.user_id, u.id)
           w.user_id, u.id AS transaction_id, i.ord, i.payload, w.address, i.from_address, i.to_address
    FROM upserted u
    JOIN input i USING (network, hash, transfer_key)
    CROSS JOIN LATERAL (VALUES (i.from_address), (i.to_address)) AS side (address)
    JOIN watched_addresses w ON w.address = side.address
    WHERE u.inserted AND NOT u.removed
    -- A user watching both sides gets one item, told from the sender's side.
    ORDER BY w.user_id, u.id, (w.address = i.from_address) DESC
),
items AS (
    INSERT INTO feed_items (user_id, transaction_id, payload)
    SELECT user_id, transaction_id,
           payload || jsonb_build_object(
               'address', address,
               'direction', CASE WHEN from_address = to_address THEN 'self'
                                 WHEN address = from_address THEN 'out' ELSE 'in' END,
               'counterparty', CASE WHEN address = from_address THEN to_address ELSE from_address END)
    FROM matches ORDER BY ord, user_id
    ON CONFLICT (user_id, transaction_id) DO NOTHING
    RETURNING id
),
outboxed AS (
    INSERT INTO feed_outbox (feed_item_id, traceparent, tracestate) SELECT id, $7, $8 FROM items
)
SELECT (SELECT deliveries FROM event) AS deliveries,
       (SELECT count(*) FROM upserted WHERE inserted) AS inserted,
       (SELECT count(*) FROM upserted WHERE NOT inserted) AS updated,
       (SELECT count(*) FROM reorged) AS reorged_items,
       (SELECT count(*) FROM items) AS new_feed_items
"""


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """What one webhook changed: new and re-org-updated transfers, new feed items, delivery count."""

    deliveries: int
    new_transfers: int
    updated_transfers: int
    new_feed_items: int


_encoder = msgspec.json.Encoder()


def _rows(transfers: tuple[Transfer, ...]) -> bytes:
    """The transfers for ``jsonb_array_elements``: each with its key and the payload watchers see."""
    return _encoder.encode([(t.transfer_key, t.payload(), t) for t in transfers])


async def store_webhook(
    pool: asyncpg.Pool, webhook: Webhook, *, traceparent: str | None = None, tracestate: str | None = None
) -> StoredWebhook:
    """Record ``webhook`` and create its feed items, atomically and idempotently (one round trip).

    ``traceparent``/``tracestate`` are kept with the new items' outbox rows, so their publication
    joins the trace of this ingest.
    """
    row = await pool.fetchrow(
        _STORE,
        webhook.event_id,
        webhook.webhook_id,
        webhook.type,
        webhook.network,
        webhook.activity_count,
        _rows(webhook.transfers).decode(),
        traceparent,
        tracestate,
    )
    assert row is not None
    return StoredWebhook(
        deliveries=row["deliveries"],
        new_transfers=row["inserted"],
        updated_transfers=row["updated"],
        new_feed_items=row["new_feed_items"],
    )
