-- A key's scope: a tenant's key (tenant set), or a metrics-only key (no tenant) that reads
-- /metrics and nothing else. SQLite cannot drop NOT NULL from a column: the table is rebuilt.
CREATE TABLE api_keys_scoped (
    id         TEXT PRIMARY KEY NOT NULL,
    tenant     TEXT REFERENCES tenants (name),
    scope      TEXT NOT NULL DEFAULT 'tenant' CHECK (scope IN ('tenant', 'metrics')),
    hash       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    CHECK ((scope = 'tenant') = (tenant IS NOT NULL))
);
INSERT INTO api_keys_scoped (id, tenant, scope, hash, created_at, revoked_at)
    SELECT id, tenant, 'tenant', hash, created_at, revoked_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_scoped RENAME TO api_keys;
CREATE INDEX api_keys_tenant ON api_keys (tenant);
