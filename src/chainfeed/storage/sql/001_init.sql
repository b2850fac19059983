-- ChainFeed schema, version 1. Natural keys make every write idempotent.

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE watched_addresses (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address    text NOT NULL CHECK (address ~ '^0x[0-9a-f]{40}$'),
    label      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, address)
);
-- Ingest looks up the watchers of an address.
CREATE INDEX watched_addresses_address ON watched_addresses (address);

-- One row per Alchemy delivery id; retries bump `deliveries`.
CREATE TABLE webhook_events (
    id             text PRIMARY KEY,
    webhook_id     text,
    type           text,
    network        text,
    activity_count integer NOT NULL DEFAULT 0,
    deliveries     integer NOT NULL DEFAULT 1,
    received_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per transfer, keyed naturally: token transfers by log index, internal by trace
-- address, external by category (transfer_key encodes which).
CREATE TABLE transactions (
    id            bigserial PRIMARY KEY,
    network       text NOT NULL,
    hash          text NOT NULL,
    transfer_key  text NOT NULL,
    category      text NOT NULL,
    from_address  text,
    to_address    text,
    value         double precision,
    asset         text,
    block_num     bigint,
    block_hash    text,
    removed       boolean NOT NULL DEFAULT false,
    raw           jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network, hash, transfer_key)
);

-- A feed item is what a user sees; it doubles as the transactional outbox: published_at stays
-- NULL until the relay has XADDed it to the stream.
CREATE TABLE feed_items (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    transaction_id  bigint REFERENCES transactions (id) ON DELETE CASCADE,
    type            text NOT NULL DEFAULT 'new_transaction',
    payload         jsonb NOT NULL,
    -- Set for items that entered through the stream without one (a hand XADD): dedups re-delivery.
    source_entry_id text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    UNIQUE (user_id, transaction_id)
);
CREATE INDEX feed_items_user_id ON feed_items (user_id, id);
CREATE INDEX feed_items_unpublished ON feed_items (id) WHERE published_at IS NULL;
