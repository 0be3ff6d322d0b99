-- Warm pools, lifecycles, declarative sources.
ALTER TABLE environments ADD COLUMN spec_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE environments ADD COLUMN pool TEXT;
ALTER TABLE environments ADD COLUMN pool_version TEXT;
ALTER TABLE environments ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
ALTER TABLE environments ADD COLUMN replace_resource INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN max_retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN exit_code INTEGER;
ALTER TABLE environments ADD COLUMN finished_at INTEGER;
-- Claims look for a running, unclaimed member of a pool with this spec.
CREATE INDEX environments_pool ON environments (pool, observed) WHERE pool IS NOT NULL;

CREATE TABLE pools (
    name       TEXT PRIMARY KEY NOT NULL,
    spec       TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    min        INTEGER NOT NULL,
    max        INTEGER NOT NULL,
    version    TEXT NOT NULL,
    lifecycle  TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX pools_spec_hash ON pools (spec_hash);
