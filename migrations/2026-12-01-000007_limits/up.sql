-- A tenant's overrides of the global rate limits, by limit name:
-- {"login_per_account": {"per_minute": 5, "burst": 5}, ...}; absent names use the defaults.
ALTER TABLE tenants ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '{}'::jsonb;
