-- The event spine. Every transaction that commits domain events also writes one entry per
-- shard it touched: a gapless position within (tenant, shard), taken under the head row's
-- lock, so entries of a shard become visible strictly in commit order and a reader that
-- sees position N has seen every position before it. An entry names what committed
-- (conversation seq ranges, agent changes, ...); the rows themselves stay where they are.
-- The same transaction sends NOTIFY chatengine_spine, which PostgreSQL delivers to every
-- node at commit, whether or not the committing node survives it.
CREATE TABLE spine_heads (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  shard smallint NOT NULL CHECK (shard >= 0),
  last_pos bigint NOT NULL,
  PRIMARY KEY (tenant_id, shard)
);

CREATE TABLE spine_entries (
  tenant_id uuid NOT NULL,
  shard smallint NOT NULL,
  pos bigint NOT NULL,
  created_at timestamptz NOT NULL,
  events jsonb NOT NULL,
  PRIMARY KEY (tenant_id, shard, pos),
  FOREIGN KEY (tenant_id, shard) REFERENCES spine_heads (tenant_id, shard) ON DELETE CASCADE
);

-- Where each in-process consumer (reactor) stands in each shard of a tenant. A node works on
-- a share while it holds this row's lock, so two nodes never process the same share at once.
CREATE TABLE reactor_cursors (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  consumer text NOT NULL,
  shard smallint NOT NULL,
  pos bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, consumer, shard)
);

-- Durable timers: fired once their due time has passed, after a restart too; claimed with
-- FOR UPDATE SKIP LOCKED and deleted in the transaction that fires them.
CREATE TABLE timers (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  timer_id uuid NOT NULL,
  kind text NOT NULL,
  due_at timestamptz NOT NULL,
  payload jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, timer_id)
);
CREATE INDEX timers_by_due ON timers (tenant_id, due_at);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['spine_heads', 'spine_entries', 'reactor_cursors', 'timers']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
      WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO chat_engine_app', t);
  END LOOP;
END $$;
