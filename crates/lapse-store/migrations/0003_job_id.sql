-- The user's key (seed job_id, config file id): unique among environments not deleted.
ALTER TABLE environments ADD COLUMN job_id TEXT;
CREATE UNIQUE INDEX environments_job_id ON environments (job_id) WHERE job_id IS NOT NULL AND desired != 'deleted';
