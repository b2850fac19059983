-- The trace context of the ingest that created a feed item, so the outbox relay's PRODUCER span
-- (published later, possibly by another instance) continues the webhook's trace.
ALTER TABLE feed_items ADD COLUMN traceparent text;
ALTER TABLE feed_items ADD COLUMN tracestate text;
