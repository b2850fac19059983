-- seq: each feed item's position in its user's feed, in the order items become visible
-- (docs/design/delivery.md). The relay numbers outbox items when it takes them; a hand-made
-- stream entry is numbered when it is persisted. users.feed_seq is the last number handed out.
ALTER TABLE users ADD COLUMN feed_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE feed_items ADD COLUMN seq bigint;

-- Items already on the stream get their numbers in id order; the outbox's are numbered by the relay.
WITH numbered AS (
    SELECT f.id, row_number() OVER (PARTITION BY f.user_id ORDER BY f.id) AS seq
    FROM feed_items f
    WHERE NOT EXISTS (SELECT 1 FROM feed_outbox o WHERE o.feed_item_id = f.id)
)
UPDATE feed_items f SET seq = n.seq FROM numbered n WHERE f.id = n.id;
UPDATE users u SET feed_seq = s.last FROM (
    SELECT user_id, max(seq) AS last FROM feed_items GROUP BY user_id
) AS s WHERE s.user_id = u.id AND s.last IS NOT NULL;

-- "The user's items after seq N" is a range read; one number names one item.
CREATE UNIQUE INDEX feed_items_user_seq ON feed_items (user_id, seq);

-- A relay leases the batch it publishes (numbered and committed before the XADDs): another relay
-- takes it over only if the lease runs out (the first one died between XADD and delete).
ALTER TABLE feed_outbox ADD COLUMN lease_until timestamptz;
