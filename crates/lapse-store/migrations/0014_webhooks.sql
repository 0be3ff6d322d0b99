-- Lifecycle webhooks (issue 13): the hooks, their cursor into the events table (the outbox),
-- and one row per delivery. The events table is written in the same transaction as every
-- change it reports, so a delivery row made from it and the cursor's advance (one
-- transaction) lose nothing across a crash.
CREATE TABLE webhooks (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant       TEXT,                        -- NULL: the operator's hook, every tenant's events
    url          TEXT NOT NULL,
    events       TEXT NOT NULL,               -- JSON array of event names ("*" for all)
    secret       TEXT NOT NULL,
    source       TEXT NOT NULL,               -- 'api' | 'config'
    name         TEXT,                        -- a config file's key
    cursor       INTEGER NOT NULL,            -- the last events.seq looked at
    failures     INTEGER NOT NULL DEFAULT 0,  -- consecutive failed attempts
    created_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhooks_config_name ON webhooks (name) WHERE source = 'config';

CREATE TABLE webhook_deliveries (
    ord             INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order deliveries were made
    id              TEXT NOT NULL UNIQUE,               -- the Lapse-Delivery id, stable across retries
    webhook_id      TEXT NOT NULL,
    seq             INTEGER,                            -- the event it reports (NULL: a ping)
    event           TEXT NOT NULL,
    environment_id  TEXT,
    body            TEXT NOT NULL,                      -- the JSON body, fixed when made
    status          TEXT NOT NULL,                      -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    response_code   INTEGER,
    error           TEXT,
    next_attempt_at INTEGER,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (status, webhook_id, environment_id, ord);
CREATE INDEX webhook_deliveries_of ON webhook_deliveries (webhook_id, id);

-- Pre-expiry warnings: the marks (ms before expires_at, JSON array) and which of them fired
-- for the current lease (JSON array of the marks' deadlines), and when the last one fired.
ALTER TABLE environments ADD COLUMN warn_before TEXT;
ALTER TABLE environments ADD COLUMN warned TEXT;
ALTER TABLE environments ADD COLUMN warned_at INTEGER;
