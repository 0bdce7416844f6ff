-- Open subscribe streams per agent and node: an agent is online while any node that is still
-- alive (fresh heartbeat) holds a stream for them.
CREATE TABLE agent_presence (
  tenant_id uuid NOT NULL,
  user_id uuid NOT NULL,
  node_id uuid NOT NULL,
  streams integer NOT NULL CHECK (streams >= 0),
  heartbeat_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, user_id, node_id),
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);

ALTER TABLE agent_presence ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_presence FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_presence
  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON agent_presence TO chat_engine_app;
