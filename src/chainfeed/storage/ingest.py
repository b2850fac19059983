"""Idempotent storage of one webhook: event, transfers, quarantine and the watchers' feed items.

One statement per webhook, whatever its size, in its own implicit transaction: the transfers
travel as one JSON document expanded by ``jsonb_to_recordset``, and data-modifying CTEs record
the event and the quarantined activities, upsert the transfers, find the watchers of either
side, and insert their feed items and the items' ids in ``feed_outbox`` (what the relay
publishes). One round trip: under load every extra await is an event-loop turn of latency.

Idempotency lives in the unique keys: ``transactions (network, hash, transfer_key)``, one
``feed_items`` row per (transfer, user) that is not an update (``ref IS NULL``), and
``quarantined_activities (event_id, position)``. A repeated transfer creates nothing.

Re-orgs update the stored row instead of adding one (docs/design/ingest.md):

- ``removed: true`` for the block the row is in (or with no block hash to compare) marks it
  removed (``removed``) and remembers that block in ``left_blocks``; for another block it only
  remembers that block (``noted``);
- a block hash the row has never left places it there (``restored`` when it was removed, ``moved``
  when it was in another block, ``located`` when it had none), and the old block joins ``left_blocks``;
- a copy for a block in ``left_blocks`` (a late retry of the original) changes nothing.

An item is made when a transfer is new and not removed, or restored, for each watcher without
one. A change to a transfer already in feeds marks it ``reorg_pending`` in the same statement;
:func:`settle_reorgs` then brings its items up to date in a transaction of its own (their
payloads take the new state, and a removal, restoration or move adds a ``transaction_updated``
item naming the item it updates), with a snapshot taken after it locked the transfer, so it sees
items a concurrent delivery committed. A crash in between leaves the mark for
:func:`settle_pending` (the relay's sweep): nothing is lost, and nothing is made twice.

Rows are upserted in natural-key order so concurrent webhooks lock them in the same order
(no deadlocks); feed items get their ids in payload order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
import msgspec

from chainfeed.domain.transfers import Quarantined, Transfer, Webhook
from chainfeed.storage.outbox import Connection
from chainfeed.storage.pool import bounded_connection, bounded_transaction

__all__ = ["StoredWebhook", "settle_pending", "settle_reorgs", "store_transfers", "store_webhook"]

# Conditions on an incoming copy (EXCLUDED) of a stored transfer (t); see the module docstring.
_REMOVES = (
    "(EXCLUDED.removed AND NOT t.removed AND (EXCLUDED.block_hash IS NULL OR t.block_hash IS NULL"
    " OR EXCLUDED.block_hash = t.block_hash))"
)
_NOTES = (
    "(EXCLUDED.removed AND EXCLUDED.block_hash <> t.block_hash"
    " AND NOT EXCLUDED.block_hash = ANY(t.left_blocks))"
)
_PLACES = (
    "(NOT EXCLUDED.removed AND EXCLUDED.block_hash IS DISTINCT FROM t.block_hash"
    " AND EXCLUDED.block_hash IS NOT NULL AND NOT EXCLUDED.block_hash = ANY(t.left_blocks))"
)

_EVENT = """
event AS (
    INSERT INTO webhook_events AS e (id, webhook_id, type, network, activity_count)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (id) DO UPDATE SET deliveries = e.deliveries + 1, last_seen_at = now()
    RETURNING deliveries
),
quarantine AS (
    INSERT INTO quarantined_activities (event_id, position, network, reason, detail, raw)
    SELECT $1, q.position, $4, q.reason, q.detail, q.raw
    FROM unnest($9::integer[], $10::text[], $11::text[], $12::text[]) AS q (position, reason, detail, raw)
    ON CONFLICT (event_id, position) DO NOTHING
    RETURNING reason
),"""

# The transfers, their items and outbox rows; {rows}, {traceparent}, {tracestate} and {per_minute}
# (each user's item budget per minute) name parameters.
_TRANSFERS = f"""
input AS (
    -- One element per transfer: [hash, transfer_key, payload, the transfer as the parser made it].
    SELECT r.ord, r.item->>0 AS hash, r.item->>1 AS transfer_key, r.item->2 AS payload, i.*
    FROM jsonb_array_elements({{rows}}::text::jsonb) WITH ORDINALITY AS r (item, ord)
    CROSS JOIN LATERAL jsonb_to_record(r.item->3) AS i (
        network text, category text, from_address text, to_address text,
        value double precision, asset text, block_num bigint, block_hash text, removed boolean, raw jsonb)
),
upserted AS (
    INSERT INTO transactions AS t (network, hash, transfer_key, category, from_address, to_address,
                                   value, asset, block_num, block_hash, removed, raw)
    SELECT network, hash, transfer_key, category, from_address, to_address,
           value, asset, block_num, block_hash, removed, raw
    FROM input ORDER BY network, hash, transfer_key
    ON CONFLICT (network, hash, transfer_key) DO UPDATE SET
        last_change = CASE WHEN {_REMOVES} THEN 'removed'
                           WHEN {_PLACES} AND t.removed THEN 'restored'
                           WHEN {_PLACES} AND t.block_hash IS NOT NULL THEN 'moved'
                           WHEN {_PLACES} THEN 'located'
                           ELSE 'noted' END,
        removed = CASE WHEN {_REMOVES} THEN true WHEN {_PLACES} THEN false ELSE t.removed END,
        block_hash = CASE WHEN {_PLACES} THEN EXCLUDED.block_hash
                          ELSE COALESCE(t.block_hash, EXCLUDED.block_hash) END,
        block_num = CASE WHEN {_PLACES} THEN COALESCE(EXCLUDED.block_num, t.block_num)
                         ELSE COALESCE(t.block_num, EXCLUDED.block_num) END,
        left_blocks = CASE
            WHEN {_REMOVES} AND COALESCE(t.block_hash, EXCLUDED.block_hash) IS NOT NULL
                THEN t.left_blocks || COALESCE(t.block_hash, EXCLUDED.block_hash)
            WHEN {_NOTES} THEN t.left_blocks || EXCLUDED.block_hash
            WHEN {_PLACES} AND t.block_hash IS NOT NULL AND NOT t.block_hash = ANY(t.left_blocks)
                THEN t.left_blocks || t.block_hash
            ELSE t.left_blocks END,
        raw = CASE WHEN {_NOTES} THEN t.raw ELSE EXCLUDED.raw END,
        reorg_pending = t.reorg_pending OR {_REMOVES} OR {_PLACES},
        updated_at = now()
    WHERE {_REMOVES} OR {_NOTES} OR {_PLACES}
    RETURNING t.id, t.network, t.hash, t.transfer_key, t.removed, t.last_change, (t.xmax = 0) AS inserted
),
matches AS (
    SELECT DISTINCT ON (w.user_id, u.id)
           w.user_id, u.id AS transaction_id, i.ord, i.payload, w.address, i.from_address, i.to_address
    FROM upserted u
    JOIN input i USING (network, hash, transfer_key)
    CROSS JOIN LATERAL (VALUES (i.from_address), (i.to_address)) AS side (address)
    JOIN watched_addresses w ON w.address = side.address
    WHERE NOT u.removed AND (u.inserted OR u.last_change = 'restored')
    -- A user watching both sides gets one item, told from the sender's side.
    ORDER BY w.user_id, u.id, (w.address = i.from_address) DESC
),
budget AS (
    -- Items per user in the current minute: this delivery's are added (one row per user, locked
    -- in user order; a table of its own, so the relay's users.feed_seq updates never wait on it).
    INSERT INTO feed_budget AS b (user_id, window_start, used)
    SELECT user_id, date_trunc('minute', now()), count(*) FROM matches GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET
        window_start = EXCLUDED.window_start,
        used = CASE WHEN b.window_start = EXCLUDED.window_start THEN b.used + EXCLUDED.used
                    ELSE EXCLUDED.used END
    RETURNING user_id, used
),
allowed AS (
    -- The user's first items of this delivery that still fit in the minute's budget.
    SELECT m.* FROM (
        SELECT m.*, row_number() OVER (PARTITION BY m.user_id ORDER BY m.ord) AS n,
               count(*) OVER (PARTITION BY m.user_id) AS mine
        FROM matches m
    ) m JOIN budget b USING (user_id)
    WHERE b.used - m.mine + m.n <= {{per_minute}}
),
items AS (
    INSERT INTO feed_items (user_id, transaction_id, payload)
    SELECT user_id, transaction_id,
           payload || jsonb_build_object(
               'address', address,
               'direction', CASE WHEN from_address = to_address THEN 'self'
                                 WHEN address = from_address THEN 'out' ELSE 'in' END,
               'counterparty', CASE WHEN address = from_address THEN to_address ELSE from_address END)
    FROM allowed ORDER BY ord, user_id
    ON CONFLICT (transaction_id, user_id) WHERE ref IS NULL DO NOTHING
    RETURNING id
),
outboxed AS (
    INSERT INTO feed_outbox (feed_item_id, traceparent, tracestate)
    SELECT id, {{traceparent}}, {{tracestate}} FROM items
)"""  # noqa: S608 - built from this module's constants

_STORE = f"""
WITH {_EVENT}
{_TRANSFERS.format(rows="$6", traceparent="$7", tracestate="$8", per_minute="$13")}
SELECT (SELECT deliveries FROM event) AS deliveries,
       (SELECT count(*) FROM upserted WHERE inserted) AS inserted,
       (SELECT count(*) FROM upserted WHERE NOT inserted AND last_change <> 'noted') AS updated,
       (SELECT array_agg(id) FROM items) AS new_items,
       (SELECT array_agg(id) FROM upserted WHERE NOT inserted AND last_change <> 'noted') AS changed,
       (SELECT array_agg(reason) FROM quarantine) AS quarantined,
       (SELECT count(*) FROM matches) - (SELECT count(*) FROM allowed) AS suppressed
"""  # noqa: S608

# Replaying quarantined activities: the same transfer statement, without counting a delivery.
_REPLAY = f"""
WITH {_TRANSFERS.format(rows="$1", traceparent="$2", tracestate="$3", per_minute="$4")}
SELECT 1 AS deliveries,
       (SELECT count(*) FROM upserted WHERE inserted) AS inserted,
       (SELECT count(*) FROM upserted WHERE NOT inserted AND last_change <> 'noted') AS updated,
       (SELECT array_agg(id) FROM items) AS new_items,
       (SELECT array_agg(id) FROM upserted WHERE NOT inserted AND last_change <> 'noted') AS changed,
       NULL::text[] AS quarantined,
       (SELECT count(*) FROM matches) - (SELECT count(*) FROM allowed) AS suppressed
"""  # noqa: S608

# Settling re-orgs of the transfers $1 (locked by the caller, reorg_pending): every item of one
# whose payload does not show the transfer's state takes it, and gets a transaction_updated item
# when it was removed or restored, or moved between two known blocks (a block filled in where
# there was none only refreshes). Items made with the current state (new ones) are left alone,
# so settling twice, or after a crash, adds nothing.
_SETTLE = """
WITH changed AS (
    SELECT id, removed, block_hash, block_num FROM transactions WHERE id = ANY($1::bigint[])
),
stale AS (
    SELECT f.id, f.user_id, f.transaction_id,
           (f.payload->>'removed')::boolean IS DISTINCT FROM c.removed
           OR (c.block_hash IS NOT NULL AND f.payload->>'block_hash' <> c.block_hash) AS updated,
           f.payload || jsonb_build_object(
               'removed', c.removed, 'block_hash', c.block_hash, 'block_num', c.block_num) AS payload
    FROM changed c JOIN feed_items f ON f.transaction_id = c.id AND f.ref IS NULL
    WHERE (f.payload->>'removed')::boolean IS DISTINCT FROM c.removed
       OR f.payload->'block_hash' IS DISTINCT FROM COALESCE(to_jsonb(c.block_hash), 'null'::jsonb)
       OR f.payload->'block_num' IS DISTINCT FROM COALESCE(to_jsonb(c.block_num), 'null'::jsonb)
),
refreshed AS (
    UPDATE feed_items f SET payload = s.payload FROM stale s WHERE f.id = s.id
),
updates AS (
    INSERT INTO feed_items (user_id, transaction_id, type, ref, payload)
    SELECT user_id, transaction_id, 'transaction_updated', id, payload FROM stale WHERE updated ORDER BY id
    RETURNING id
),
outboxed AS (
    INSERT INTO feed_outbox (feed_item_id, traceparent, tracestate) SELECT id, $2, $3 FROM updates
),
settled AS (
    UPDATE transactions SET reorg_pending = false WHERE id = ANY($1::bigint[])
)
SELECT count(*) AS updates FROM updates
"""
_LOCK_PENDING = (
    "SELECT id FROM transactions WHERE id = ANY($1::bigint[]) AND reorg_pending ORDER BY id FOR UPDATE"
)
_FIND_PENDING = "SELECT id FROM transactions WHERE reorg_pending ORDER BY id LIMIT $1"


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """What one webhook changed: transfers new and re-orged, items, quarantine, delivery count."""

    deliveries: int
    new_transfers: int
    updated_transfers: int
    new_feed_items: int
    #: ``transaction_updated`` items made for transfers already in feeds.
    update_items: int = 0
    #: The reasons of activities quarantined for the first time by this delivery.
    quarantined: tuple[str, ...] = ()
    #: Items not made because their user was over the per-minute budget.
    suppressed: int = 0


_encoder = msgspec.json.Encoder()
#: Feed items one user may get per minute (CHAINFEED_FEED_ITEMS_PER_USER_MINUTE); see docs/design/ingest.md.
DEFAULT_ITEMS_PER_MINUTE = 600


def _rows(transfers: tuple[Transfer, ...]) -> str:
    """The transfers for ``jsonb_array_elements``: each with its key and the payload watchers see."""
    return _encoder.encode([(t.hash_key, t.transfer_key, t.payload(), t) for t in transfers]).decode()


def _quarantine_columns(
    entries: tuple[Quarantined, ...],
) -> tuple[list[int], list[str], list[str], list[str]]:
    """Positions, reasons, details and raw texts as four arrays, for ``unnest``."""
    positions = [q.position for q in entries]
    return positions, [q.reason for q in entries], [q.detail for q in entries], [q.raw for q in entries]


async def store_webhook(
    pool: asyncpg.Pool,
    webhook: Webhook,
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
    budget: float = 10.0,
    items_per_minute: int = DEFAULT_ITEMS_PER_MINUTE,
) -> StoredWebhook:
    """Record ``webhook`` and create its feed items, atomically and idempotently (one statement).

    ``traceparent``/``tracestate`` are kept with the new items' outbox rows, so their publication
    joins the trace of this ingest. ``TimeoutError`` when it was not committed within ``budget``
    seconds (pool wait included): nothing of it is stored then. A re-org it recorded is settled
    right after (:func:`settle_reorgs`, its own transaction); a crash in between leaves the
    transfers ``reorg_pending``, which :func:`settle_pending` finds.
    """
    started = time.monotonic()
    envelope = (webhook.event_id, webhook.webhook_id, webhook.type, webhook.network, webhook.activity_count)
    args = (
        *envelope,
        _rows(webhook.transfers),
        traceparent,
        tracestate,
        *_quarantine_columns(webhook.quarantined),
        items_per_minute,
    )
    async with bounded_connection(pool, budget) as conn:
        row = await conn.fetchrow(_STORE, *args)
    assert row is not None
    updates = 0
    if row["changed"]:
        left = max(budget - (time.monotonic() - started), 0.5)
        async with bounded_transaction(pool, left) as conn:
            updates = await settle_reorgs(
                conn, list(row["changed"]), traceparent=traceparent, tracestate=tracestate
            )
    return _stored(row, updates)


async def store_transfers(
    conn: Connection,
    transfers: tuple[Transfer, ...],
    *,
    traceparent: str | None = None,
    items_per_minute: int = DEFAULT_ITEMS_PER_MINUTE,
) -> StoredWebhook:
    """Store transfers outside a delivery (a quarantine replay), in the caller's transaction."""
    row = await conn.fetchrow(_REPLAY, _rows(transfers), traceparent, None, items_per_minute)
    assert row is not None
    updates = await settle_reorgs(conn, list(row["changed"] or ()), traceparent=traceparent)
    return _stored(row, updates)


async def settle_reorgs(
    conn: Connection,
    transfer_ids: list[int],
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> int:
    """Bring the items of re-orged transfers up to date, in the caller's transaction; how many
    ``transaction_updated`` items were made.

    The transfers are locked first, and the work is a statement of its own after the lock: its
    snapshot then holds every item a concurrent delivery committed, so none is missed, and a
    second settler finds them no longer pending.
    """
    if not transfer_ids:
        return 0
    locked = [r["id"] for r in await conn.fetch(_LOCK_PENDING, transfer_ids)]
    if not locked:
        return 0
    return int(await conn.fetchval(_SETTLE, locked, traceparent, tracestate))


async def settle_pending(pool: asyncpg.Pool, *, limit: int = 500, budget: float = 10.0) -> int:
    """Settle re-orgs a crash left between a delivery's commit and its settling; items made."""
    ids = [r["id"] for r in await pool.fetch(_FIND_PENDING, limit, timeout=budget)]
    if not ids:
        return 0
    async with bounded_transaction(pool, budget) as conn:
        return await settle_reorgs(conn, ids)


def _stored(row: asyncpg.Record, updates: int) -> StoredWebhook:
    new_items = len(row["new_items"] or ())
    return StoredWebhook(
        deliveries=row["deliveries"],
        new_transfers=row["inserted"],
        updated_transfers=row["updated"],
        new_feed_items=new_items + updates,
        update_items=updates,
        quarantined=tuple(row["quarantined"] or ()),
        suppressed=int(row["suppressed"] or 0),
    )
