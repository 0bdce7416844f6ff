-- Analytics (issue 10): incrementally maintained aggregates per tenant and UTC 15-minute
-- slot (every IANA zone's offset is a multiple of 15 minutes, so local hours and days are
-- whole slots), for the tenant, per agent and per workflow; what each chat last contributed
-- to them (so a change to the chat applies only the difference); and the agents' state
-- history (status, capacity) that utilisation and online time are computed from.
-- Definitions of every figure: docs/analytics.md.

-- The workflow that routed an external chat (NULL: the built-in defaults), kept past the
-- chat's queue entry so missed chats still count for it.
ALTER TABLE conversations ADD COLUMN workflow_id uuid;

-- Live figures: chats started and visitors seen since the local midnight, open chats.
CREATE INDEX conversations_external_by_time ON conversations (tenant_id, created_at)
  WHERE kind = 'external';
CREATE INDEX conversations_external_open ON conversations (tenant_id, assigned_agent_id)
  WHERE kind = 'external' AND status = 'open';
CREATE INDEX visitors_by_last_seen ON visitors (tenant_id, last_seen_at);
-- ListRatings: newest first, by agent.
CREATE INDEX csat_ratings_newest ON csat_ratings (tenant_id, created_at DESC, conversation_id DESC);
CREATE INDEX csat_ratings_by_agent_time ON csat_ratings (tenant_id, agent_id, created_at DESC, conversation_id DESC);

-- An agent's routing state from `at` on, written in the transaction that changed it; a row
-- is written only when status, capacity or the active flag differ from the previous one.
-- `counted`: the period that ends at the next row has been added to analytics_slots.
CREATE TABLE agent_state_log (
  tenant_id uuid NOT NULL,
  user_id uuid NOT NULL,
  at timestamptz NOT NULL,
  status text NOT NULL,
  capacity integer NOT NULL,
  active boolean NOT NULL,
  counted boolean NOT NULL DEFAULT false,
  PRIMARY KEY (tenant_id, user_id, at),
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);

-- dim: 0 the tenant, 1 an agent, 2 a workflow; dim_id the agent or workflow (the nil UUID
-- for the tenant and for chats routed by the built-in defaults). Histograms are counts per
-- fixed bucket (bounds in domain::analytics::figures). Durations in milliseconds.
CREATE TABLE analytics_slots (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  dim smallint NOT NULL,
  dim_id uuid NOT NULL,
  slot timestamptz NOT NULL,
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
  PRIMARY KEY (tenant_id, dim, dim_id, slot)
);

-- What a chat contributes to analytics_slots now (a JSON list of slot, dim, dim_id and
-- figures); recomputed from the chat's events whenever one of them comes.
CREATE TABLE analytics_chats (
  tenant_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  contributions jsonb NOT NULL,
  PRIMARY KEY (tenant_id, conversation_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE
);

-- Element-wise sum of two histograms (the shorter one padded with zeros).
CREATE FUNCTION analytics_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['agent_state_log', 'analytics_slots', 'analytics_chats']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
      WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO chat_engine_app', t);
  END LOOP;
END $$;
