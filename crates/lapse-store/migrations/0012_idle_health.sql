-- Idle stop and health probes (issue 12, items 3 and 4). Every column has a default, so rows
-- written before read as environments without an idle timeout and without a probe.
-- `idle_timeout` in ms; `last_active_at` is written in batches by the activity flusher.
ALTER TABLE environments ADD COLUMN idle_timeout INTEGER;
ALTER TABLE environments ADD COLUMN on_idle TEXT NOT NULL DEFAULT 'stop';
ALTER TABLE environments ADD COLUMN last_active_at INTEGER;
ALTER TABLE environments ADD COLUMN idled_at INTEGER;
-- `starting`, `healthy`, `unhealthy` while a probed environment runs; NULL without a probe.
ALTER TABLE environments ADD COLUMN health TEXT;
ALTER TABLE environments ADD COLUMN ready_at INTEGER;
ALTER TABLE environments ADD COLUMN restart_requested INTEGER NOT NULL DEFAULT 0;
-- The prober's scan: running environments with a probe.
CREATE INDEX environments_probed ON environments (observed) WHERE health IS NOT NULL;
