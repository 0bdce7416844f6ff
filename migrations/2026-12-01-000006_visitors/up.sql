-- External chat, the visitor side: what a widget reports about its visitor, the session that
-- resumes them, the tenant's identity-verification setting, and the lookup indexes of the
-- visitor flow. Tables keep the foundation's rules: tenant_id leads every key, composite
-- foreign keys, FORCEd row-level security.

ALTER TABLE visitors
  ADD COLUMN external_user_id text,
  ADD COLUMN page_url text NOT NULL DEFAULT '',
  ADD COLUMN referrer text NOT NULL DEFAULT '';
-- A verified external user id finds the same visitor from any device.
CREATE UNIQUE INDEX visitors_by_external_user ON visitors (tenant_id, external_user_id)
  WHERE external_user_id IS NOT NULL;

-- The widget's session ids: the same session id resumes the same visitor. An identified
-- visitor may hold several (one per device).
CREATE TABLE visitor_sessions (
  tenant_id uuid NOT NULL,
  session_id text NOT NULL,
  visitor_id uuid NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, session_id),
  FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, visitor_id) ON DELETE CASCADE
);
CREATE INDEX visitor_sessions_by_visitor ON visitor_sessions (tenant_id, visitor_id);

-- Identity verification: the tenant's HMAC-SHA256 secret, stored as is (verifying a proof
-- needs the secret itself, so a hash would not do), and whether a proof is required.
CREATE TABLE identity_settings (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  secret bytea,
  required boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id)
);

-- A visitor's chats, newest first, and the open one.
CREATE INDEX conversations_by_visitor_time ON conversations (tenant_id, visitor_id, created_at DESC)
  WHERE visitor_id IS NOT NULL;

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['visitor_sessions', 'identity_settings']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
      WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO chat_engine_app', t);
  END LOOP;
END $$;
