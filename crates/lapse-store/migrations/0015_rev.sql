-- Every write of an environment row increments its revision: a read-modify-write writes
-- only if the row is still at the revision it read (the store's writer batches writes).
ALTER TABLE environments ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;

-- The warm claim's own index: a pool's members by spec, oldest first.
CREATE INDEX environments_warm ON environments (spec_hash, id) WHERE pool IS NOT NULL;
