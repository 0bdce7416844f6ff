ALTER TABLE conversation_events DROP CONSTRAINT conversation_events_not_posts;
ALTER TABLE conversation_events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE messages NO FORCE ROW LEVEL SECURITY;
INSERT INTO conversation_events (tenant_id, conversation_id, seq, kind, message_id, actor_id,
                                 payload, created_at)
SELECT tenant_id, conversation_id, seq, 'message_posted', message_id, sender_id, 'null'::jsonb,
       created_at
  FROM messages;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation_events FORCE ROW LEVEL SECURITY;
