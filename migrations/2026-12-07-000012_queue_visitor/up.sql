-- Each waiting chat's visitor, kept with its queue entry, so that reading the whole queue
-- (every waiting visitor's place, several times a second under load) is one index scan of
-- one table. As a join to conversations it depended on the plan: a generic plan prepared
-- while the tables were small (a new database's first rush) joined the two with a filter
-- per row pair, and a queue of 8,000 took 15 s to read. A chat's visitor never changes.
ALTER TABLE queue_entries ADD COLUMN visitor_id uuid;
UPDATE queue_entries q SET visitor_id = c.visitor_id
  FROM conversations c
 WHERE c.tenant_id = q.tenant_id AND c.conversation_id = q.conversation_id;
-- Only external chats wait, and they always have a visitor.
DELETE FROM queue_entries WHERE visitor_id IS NULL;
ALTER TABLE queue_entries ALTER COLUMN visitor_id SET NOT NULL;

-- The queue's whole order, so that no read of it sorts.
DROP INDEX queue_entries_order;
CREATE INDEX queue_entries_order ON queue_entries (tenant_id, priority DESC, enqueued_at, conversation_id);
