-- Which addresses the Alchemy webhook should cover, and what we last told Alchemy.
-- A row is dirty while desired differs from synced; the sync worker sends dirty rows in batches.
-- Changes are written in the same transaction as the watch-list change that causes them.
CREATE TABLE alchemy_addresses (
    address         text PRIMARY KEY,
    desired         boolean NOT NULL,          -- watched by at least one user
    synced          boolean,                   -- what Alchemy has, as far as we know (NULL: never told)
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,               -- an instance is sending this row until then
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alchemy_addresses_dirty ON alchemy_addresses (next_attempt_at)
    WHERE desired IS DISTINCT FROM synced;

-- Addresses watched before this migration are already known to the webhook only if an operator
-- added them by hand; record them as desired so the first sync (or `alchemy sync --full`) covers them.
INSERT INTO alchemy_addresses (address, desired)
SELECT DISTINCT address, true FROM watched_addresses
ON CONFLICT DO NOTHING;
