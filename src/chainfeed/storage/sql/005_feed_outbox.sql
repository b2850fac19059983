-- The outbox becomes a narrow table of its own; feed_items.published_at stays a record of when an
-- item reached the stream, but is no longer how the relay finds its work.
--
-- Finding work through a partial index on published_at made every "mark published" UPDATE of a
-- wide feed_items row a non-HOT update: a new row version plus an entry in each of its indexes,
-- about a third of PostgreSQL's work per ingested activity. Now ingest inserts the item's id here
-- in the same statement as the item, and the relay, once the item is on the stream, deletes the
-- id and sets published_at (read by the delivery side's resume). With no index on published_at
-- and room left on each page (fillfactor), that UPDATE is a HOT update: no index is touched.
--
-- No foreign key: a feed item deleted before it was published (its user deleted) leaves an id the
-- relay finds no item for, and simply drops.
CREATE TABLE feed_outbox (
    feed_item_id bigint PRIMARY KEY
);

-- Whatever the old marker still held is carried over, so nothing committed is lost on upgrade.
INSERT INTO feed_outbox (feed_item_id)
SELECT id FROM feed_items WHERE published_at IS NULL AND source_entry_id IS NULL;

DROP INDEX feed_items_unpublished;

-- Room on each new page for the published_at update to stay on it (HOT).
ALTER TABLE feed_items SET (fillfactor = 90);

-- A re-org updates the stored payloads of a transfer's feed items, found by transaction.
CREATE INDEX feed_items_transaction_id ON feed_items (transaction_id);
