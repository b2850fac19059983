-- Tolerant ingest and re-orgs on the screen (docs/design/ingest.md).

-- An activity the parser could not use, kept raw with why; `chainfeed quarantine replay` runs the
-- current parser on it again. One row per (delivery, position): Alchemy's retries add nothing.
-- `raw` is text, not jsonb: an activity may hold what jsonb refuses (a \u0000).
CREATE TABLE quarantined_activities (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL,
    position    integer NOT NULL,
    network     text,
    reason      text NOT NULL,
    detail      text NOT NULL,
    raw         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (event_id, position)
);
CREATE INDEX quarantined_activities_open ON quarantined_activities (id) WHERE replayed_at IS NULL;

-- The blocks a transfer has been removed from (or has moved away from): a late copy that places
-- it in one of them is stale and changes nothing. `last_change` says what the latest delivery did
-- to the row (removed, restored, moved, located, noted); the ingest statement reads it back.
ALTER TABLE transactions ADD COLUMN left_blocks text[] NOT NULL DEFAULT '{}';
ALTER TABLE transactions ADD COLUMN last_change text NOT NULL DEFAULT 'new';
UPDATE transactions SET left_blocks = ARRAY[block_hash], last_change = 'removed'
WHERE removed AND block_hash IS NOT NULL;

-- A `transaction_updated` item names the item it updates (`ref`); a user has one item per
-- transfer (`ref IS NULL`) and any number of updates to it. The unique index leads with the
-- transfer, so a re-org finds every item of a transfer, watched still or not.
ALTER TABLE feed_items ADD COLUMN ref bigint;
ALTER TABLE feed_items DROP CONSTRAINT feed_items_user_id_transaction_id_key;
CREATE UNIQUE INDEX feed_items_transfer_user ON feed_items (transaction_id, user_id) WHERE ref IS NULL;
