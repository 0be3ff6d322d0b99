-- Tenants and their API keys. Keys are stored only as SHA-256 hashes of their secret part.
CREATE TABLE tenants (
    name       TEXT PRIMARY KEY NOT NULL,
    tier       TEXT NOT NULL,
    quota      TEXT NOT NULL DEFAULT '{}',   -- JSON: per-tenant overrides of the tier's limits
    created_at INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    tenant     TEXT NOT NULL REFERENCES tenants (name),
    hash       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
-- The tenant an event concerns (its environment's), so tenants see only their own.
ALTER TABLE events ADD COLUMN tenant TEXT;
UPDATE events SET tenant = (SELECT tenant FROM environments WHERE environments.id = events.environment_id);
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX environments_tenant ON environments (tenant);
