-- The whole product's data model. Every tenant-owned table leads its primary key with
-- tenant_id, references other rows through composite (tenant_id, x_id) foreign keys, and is
-- guarded by a FORCEd row-level-security policy keyed on the per-transaction setting
-- app.tenant_id. The server itself runs as chat_engine_app, which owns nothing.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chat_engine_app') THEN
    CREATE ROLE chat_engine_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
  -- Lets a deployment with a single owner URL still drop to the app role per connection.
  BEGIN
    EXECUTE format('GRANT chat_engine_app TO %I', current_user);
  EXCEPTION WHEN others THEN NULL;
  END;
END $$;

CREATE TABLE tenants (
  tenant_id uuid PRIMARY KEY,
  name text NOT NULL,
  slug text NOT NULL,
  widget jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- Slugs are global (login names the tenant by slug); this is the one index not led by
-- tenant_id, on what would be a reference table under Citus.
CREATE UNIQUE INDEX tenants_slug_key ON tenants (slug);

CREATE TABLE users (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  user_id uuid NOT NULL,
  email text NOT NULL,
  display_name text NOT NULL,
  role text NOT NULL CHECK (role IN ('admin', 'agent')),
  status text NOT NULL DEFAULT 'offline' CHECK (status IN ('available', 'busy', 'away', 'offline')),
  max_concurrent_chats integer NOT NULL DEFAULT 3 CHECK (max_concurrent_chats BETWEEN 0 AND 100),
  password_hash text NOT NULL,
  active boolean NOT NULL DEFAULT true,
  last_assigned_at timestamptz,
  last_seen_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, user_id),
  UNIQUE (tenant_id, email)
);

CREATE TABLE agent_skills (
  tenant_id uuid NOT NULL,
  user_id uuid NOT NULL,
  skill text NOT NULL,
  level smallint NOT NULL CHECK (level BETWEEN 1 AND 10),
  PRIMARY KEY (tenant_id, user_id, skill),
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX agent_skills_by_skill ON agent_skills (tenant_id, skill, level DESC);

CREATE TABLE refresh_tokens (
  tenant_id uuid NOT NULL,
  token_id uuid NOT NULL,
  family_id uuid NOT NULL,
  user_id uuid NOT NULL,
  secret_hash bytea NOT NULL,
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  rotated_at timestamptz,
  revoked_at timestamptz,
  PRIMARY KEY (tenant_id, token_id),
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (tenant_id, family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (tenant_id, user_id);

CREATE TABLE api_keys (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  key_id uuid NOT NULL,
  name text NOT NULL,
  prefix text NOT NULL,
  secret_hash bytea NOT NULL,
  allowed_domains text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz,
  PRIMARY KEY (tenant_id, key_id)
);

CREATE TABLE visitors (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  visitor_id uuid NOT NULL,
  name text NOT NULL DEFAULT '',
  email text NOT NULL DEFAULT '',
  country text NOT NULL DEFAULT '',
  language text NOT NULL DEFAULT '',
  visitor_type text NOT NULL DEFAULT 'new' CHECK (visitor_type IN ('new', 'returning', 'identified')),
  attributes jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, visitor_id)
);

CREATE TABLE conversations (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  conversation_id uuid NOT NULL,
  kind text NOT NULL CHECK (kind IN ('direct', 'group', 'external')),
  status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'queued', 'closed')),
  title text NOT NULL DEFAULT '',
  -- "lo:hi" of the two agent ids, so a direct conversation between two agents is unique.
  direct_key text,
  visitor_id uuid,
  assigned_agent_id uuid,
  last_seq bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_activity_at timestamptz NOT NULL DEFAULT now(),
  closed_at timestamptz,
  PRIMARY KEY (tenant_id, conversation_id),
  UNIQUE (tenant_id, direct_key),
  FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, visitor_id),
  FOREIGN KEY (tenant_id, assigned_agent_id) REFERENCES users (tenant_id, user_id)
);
CREATE INDEX conversations_by_visitor ON conversations (tenant_id, visitor_id);
CREATE INDEX conversations_by_assignee ON conversations (tenant_id, assigned_agent_id) WHERE status <> 'closed';

CREATE TABLE conversation_members (
  tenant_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  user_id uuid NOT NULL,
  read_seq bigint NOT NULL DEFAULT 0,
  joined_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, conversation_id, user_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX conversation_members_by_user ON conversation_members (tenant_id, user_id);

CREATE TABLE messages (
  tenant_id uuid NOT NULL,
  message_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  seq bigint NOT NULL,
  sender_type text NOT NULL CHECK (sender_type IN ('agent', 'visitor', 'system')),
  sender_id uuid,
  body text NOT NULL,
  request_id uuid,
  -- SHA-256 of the request payload, so a reused request_id with other content is refused.
  request_hash bytea,
  created_at timestamptz NOT NULL DEFAULT now(),
  edited_at timestamptz,
  deleted_at timestamptz,
  PRIMARY KEY (tenant_id, message_id),
  UNIQUE (tenant_id, conversation_id, seq),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX messages_request_id ON messages (tenant_id, sender_id, request_id) WHERE request_id IS NOT NULL;

-- Every durable change of a conversation, numbered by the conversation's gapless seq.
CREATE TABLE conversation_events (
  tenant_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  seq bigint NOT NULL,
  kind text NOT NULL,
  message_id uuid,
  actor_id uuid,
  payload jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, conversation_id, seq),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, message_id) REFERENCES messages (tenant_id, message_id) ON DELETE CASCADE
);

CREATE TABLE workflows (
  tenant_id uuid NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
  workflow_id uuid NOT NULL,
  name text NOT NULL,
  enabled boolean NOT NULL DEFAULT true,
  position integer NOT NULL,
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, workflow_id)
);
CREATE INDEX workflows_by_position ON workflows (tenant_id, position);

CREATE TABLE queue_entries (
  tenant_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  workflow_id uuid,
  priority integer NOT NULL DEFAULT 0,
  required_skills text[] NOT NULL DEFAULT '{}',
  enqueued_at timestamptz NOT NULL DEFAULT now(),
  max_wait_at timestamptz,
  PRIMARY KEY (tenant_id, conversation_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, workflow_id) ON DELETE SET NULL (workflow_id)
);
CREATE INDEX queue_entries_order ON queue_entries (tenant_id, priority DESC, enqueued_at);

CREATE TABLE assignments (
  tenant_id uuid NOT NULL,
  assignment_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  agent_id uuid,
  workflow_id uuid,
  reasons jsonb NOT NULL DEFAULT '[]',
  assigned_at timestamptz NOT NULL DEFAULT now(),
  ended_at timestamptz,
  PRIMARY KEY (tenant_id, assignment_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, agent_id) REFERENCES users (tenant_id, user_id)
);
CREATE INDEX assignments_by_conversation ON assignments (tenant_id, conversation_id);
CREATE INDEX assignments_by_agent ON assignments (tenant_id, agent_id) WHERE ended_at IS NULL;

CREATE TABLE csat_ratings (
  tenant_id uuid NOT NULL,
  conversation_id uuid NOT NULL,
  score smallint NOT NULL CHECK (score BETWEEN 1 AND 5),
  comment text NOT NULL DEFAULT '',
  agent_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, conversation_id),
  FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, conversation_id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, agent_id) REFERENCES users (tenant_id, user_id)
);
CREATE INDEX csat_ratings_by_time ON csat_ratings (tenant_id, created_at);

-- Row-level security: the third wall. NULLIF makes "no tenant set" mean "no rows", not an error.
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'users', 'agent_skills', 'refresh_tokens', 'api_keys',
    'visitors', 'conversations', 'conversation_members', 'messages', 'conversation_events',
    'workflows', 'queue_entries', 'assignments', 'csat_ratings']
  LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
      USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
      WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO chat_engine_app', t);
  END LOOP;
END $$;

-- The platform operator manages tenants across tenants; that code path (and only that one)
-- sets app.operator for its transaction. Tenant data behind them stays tenant-scoped.
CREATE POLICY operator_access ON tenants
  USING (current_setting('app.operator', true) = 'on')
  WITH CHECK (current_setting('app.operator', true) = 'on');
