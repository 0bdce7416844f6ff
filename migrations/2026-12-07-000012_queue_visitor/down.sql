DROP INDEX queue_entries_order;
CREATE INDEX queue_entries_order ON queue_entries (tenant_id, priority DESC, enqueued_at);
ALTER TABLE queue_entries DROP COLUMN visitor_id;
