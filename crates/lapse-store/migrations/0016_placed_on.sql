-- With replicas on PostgreSQL, the replica whose local provider holds an environment (the
-- column exists here too, so both stores keep one schema and `lapse migrate` copies it).
ALTER TABLE environments ADD COLUMN placed_on TEXT;
