CREATE INDEX assignments_by_conversation ON assignments (tenant_id, conversation_id);
ALTER TABLE assignments ALTER COLUMN reasons SET COMPRESSION DEFAULT;
