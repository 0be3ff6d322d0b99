-- Every write of an environment row increments its revision (as SQLite's 0015).
ALTER TABLE environments ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
