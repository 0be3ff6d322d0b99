-- Environments without a tenant (the operator's, the queues', unclaimed pool members) were
-- filed under a tenant named `default`, a name anyone could then create and hold a key for.
-- They are now tenantless (''), and `default` is reserved: its keys, if any, are revoked.
UPDATE environments SET tenant = '' WHERE tenant = 'default';
UPDATE events SET tenant = '' WHERE tenant = 'default';
UPDATE api_keys SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
    WHERE tenant = 'default' AND revoked_at IS NULL;
