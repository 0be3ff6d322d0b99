-- Environments: desired state (written by entry points) and observed state (written by the
-- reconciler and the drift sweep) side by side, one row each.
CREATE TABLE environments (
    id                TEXT PRIMARY KEY NOT NULL,
    name              TEXT,
    tenant            TEXT NOT NULL,
    owner             TEXT NOT NULL,
    labels            TEXT NOT NULL,          -- JSON object
    spec              TEXT NOT NULL,          -- JSON, lapse_core::model::Spec
    provider          TEXT NOT NULL,          -- spec.provider, for filters and metrics
    lifecycle         TEXT NOT NULL,
    desired           TEXT NOT NULL,
    observed          TEXT NOT NULL,
    reason            TEXT,
    provider_ref      TEXT,
    endpoints         TEXT NOT NULL,          -- JSON array
    expires_at        INTEGER,                -- ms since the epoch
    on_expiry         TEXT NOT NULL,
    expired_at        INTEGER,
    restart_on_extend INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX environments_owner ON environments (owner);
CREATE INDEX environments_observed ON environments (observed);
CREATE INDEX environments_provider ON environments (provider);

-- The audit trail: append-only.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    environment_id TEXT,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    message        TEXT NOT NULL
);
CREATE INDEX events_environment ON events (environment_id, seq);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
