-- Feed items per user per minute (docs/design/ingest.md, "A bound per user"): the ingest statement
-- adds each delivery's items to its users' rows and makes only those that fit. A table of its
-- own, not a column of users: the relay locks users rows to number items, and must not wait here.
CREATE TABLE feed_budget (
    user_id      bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    used         integer NOT NULL
);
