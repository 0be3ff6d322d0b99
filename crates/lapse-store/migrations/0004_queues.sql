-- Where the provider put the spec's user data (cloud-init) inside the environment.
ALTER TABLE environments ADD COLUMN user_data_path TEXT;
-- Queue messages whose effect is committed, by the tag the consumer gave each one when it moved
-- it to its processing list: a message found there again after a crash is applied only once.
CREATE TABLE queue_receipts (
    tag   TEXT PRIMARY KEY NOT NULL,
    queue TEXT NOT NULL,
    at    INTEGER NOT NULL
);
CREATE INDEX queue_receipts_at ON queue_receipts (queue, at);
-- Messages applied per queue, counted in the transaction that applies them.
CREATE TABLE queue_counters (
    queue     TEXT PRIMARY KEY NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX environments_source ON environments (source, desired);
