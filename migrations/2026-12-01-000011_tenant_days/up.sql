-- A tenant's own time zone (issue 10): "today" of the live figures, the default zone of
-- reports, and the zone of the daily aggregates below.
ALTER TABLE tenants ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';

-- The aggregates of analytics_slots summed per local day of the tenant's time zone, kept in
-- the same statement as the slots (and recomputed from them when the zone changes), so that
-- day and week reports in the tenant's zone read one row per day instead of 96.
CREATE TABLE analytics_days (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  dim smallint NOT NULL,
  dim_id uuid NOT NULL,
  day date NOT NULL,
  started integer NOT NULL DEFAULT 0,
  answered integer NOT NULL DEFAULT 0,
  missed integer NOT NULL DEFAULT 0,
  abandoned integer NOT NULL DEFAULT 0,
  wait_n integer NOT NULL DEFAULT 0,
  wait_ms bigint NOT NULL DEFAULT 0,
  wait_h integer[] NOT NULL DEFAULT '{}',
  frt_n integer NOT NULL DEFAULT 0,
  frt_ms bigint NOT NULL DEFAULT 0,
  frt_h integer[] NOT NULL DEFAULT '{}',
  resp_n integer NOT NULL DEFAULT 0,
  resp_ms bigint NOT NULL DEFAULT 0,
  dur_n integer NOT NULL DEFAULT 0,
  dur_ms bigint NOT NULL DEFAULT 0,
  csat_n integer NOT NULL DEFAULT 0,
  csat_sum integer NOT NULL DEFAULT 0,
  csat_h integer[] NOT NULL DEFAULT '{}',
  occupied_ms bigint NOT NULL DEFAULT 0,
  available_ms bigint NOT NULL DEFAULT 0,
  online_ms bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, dim, dim_id, day)
);

ALTER TABLE analytics_days ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_days FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_days
  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON analytics_days TO chat_engine_app;

-- Element-wise sum of histograms over rows (the aggregate of analytics_add).
CREATE AGGREGATE analytics_sum(integer[]) (SFUNC = analytics_add, STYPE = integer[], INITCOND = '{}');

-- Days of the aggregates already kept (every tenant's zone is UTC until it is set).
DO $$
DECLARE t uuid;
BEGIN
  PERFORM set_config('app.operator', 'on', true);
  FOR t IN SELECT tenant_id FROM tenants LOOP
    PERFORM set_config('app.tenant_id', t::text, true);
    INSERT INTO analytics_days
      SELECT tenant_id, dim, dim_id, (slot AT TIME ZONE 'UTC')::date,
             sum(started), sum(answered), sum(missed), sum(abandoned),
             sum(wait_n), sum(wait_ms), analytics_sum(wait_h),
             sum(frt_n), sum(frt_ms), analytics_sum(frt_h),
             sum(resp_n), sum(resp_ms), sum(dur_n), sum(dur_ms),
             sum(csat_n), sum(csat_sum), analytics_sum(csat_h),
             sum(occupied_ms), sum(available_ms), sum(online_ms)
        FROM analytics_slots WHERE tenant_id = t
       GROUP BY 1, 2, 3, 4;
  END LOOP;
  PERFORM set_config('app.tenant_id', '', true);
  PERFORM set_config('app.operator', '', true);
END $$;
