CREATE INDEX assignments_by_conversation ON assignments (tenant_id, conversation_id);
ALTER TABLE assignments ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE assignments ALTER COLUMN reasons TYPE jsonb USING reasons::jsonb;
ALTER TABLE assignments ALTER COLUMN reasons SET DEFAULT '[]';
ALTER TABLE assignments ALTER COLUMN reasons SET COMPRESSION DEFAULT;
