ALTER TABLE assignments DROP COLUMN queued;
ALTER TABLE queue_entries DROP COLUMN excluded;
DROP INDEX assignments_by_conversation_time;
ALTER TABLE assignments DROP COLUMN via;
ALTER TABLE assignments DROP COLUMN strategy;
ALTER TABLE queue_entries DROP COLUMN max_wait_fired;
ALTER TABLE queue_entries DROP COLUMN actions;
