-- The ingest's trace context is publication metadata, needed only until the relay publishes: it
-- moves from every feed_items row (where migration 002 put it) to the transient outbox row, which
-- keeps feed_items narrower for the rest of its life.
--
-- And a re-org finds the feed items to update through the unique (user_id, transaction_id) index
-- and the transfer's current watchers, so feed_items needs no index of its own on transaction_id
-- (one index less to maintain on every insert and every published_at update).
ALTER TABLE feed_outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text;

UPDATE feed_outbox o SET traceparent = f.traceparent, tracestate = f.tracestate
FROM feed_items f WHERE f.id = o.feed_item_id;

ALTER TABLE feed_items DROP COLUMN traceparent, DROP COLUMN tracestate;

DROP INDEX feed_items_transaction_id;
