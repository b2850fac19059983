-- A re-org recorded by a delivery whose items are not brought up to date yet: the delivery
-- settles it right after its commit; a crash in between leaves it here for the relay's sweep.
ALTER TABLE transactions ADD COLUMN reorg_pending boolean NOT NULL DEFAULT false;
CREATE INDEX transactions_reorg_pending ON transactions (id) WHERE reorg_pending;
