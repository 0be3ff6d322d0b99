-- How a tenant's vCPU, memory and disk limits are held: 'summed' over its live environments
-- (Lapse's default) or 'per_request', each environment's own request (github.gg's
-- orchestrator). Any other value refuses the tenant's requests (quotas fail closed).
ALTER TABLE tenants ADD COLUMN quota_check TEXT NOT NULL DEFAULT 'summed';
