-- The dispatcher: a queued chat carries the actions of the workflow that routed it (strategy,
-- skills, max wait and what follows it), so assigning it later needs no second workflow match
-- and a workflow edited meanwhile does not change a chat already waiting. An assignment keeps
-- the routing decision that made it (every candidate and why it was or was not chosen).
ALTER TABLE queue_entries ADD COLUMN actions jsonb NOT NULL DEFAULT '{}';
-- Set when the chat's max wait has passed and its action ran (an overflow widens its needs).
ALTER TABLE queue_entries ADD COLUMN max_wait_fired boolean NOT NULL DEFAULT false;
ALTER TABLE assignments ADD COLUMN strategy text NOT NULL DEFAULT 'round_robin';
-- Who made it: 'dispatcher', 'accepted', 'transfer', 'admin'.
ALTER TABLE assignments ADD COLUMN via text NOT NULL DEFAULT 'dispatcher';
CREATE INDEX assignments_by_conversation_time ON assignments (tenant_id, conversation_id, assigned_at DESC);
-- Agents a waiting chat is not given to again: it was taken back from them (no reply in time,
-- or they went offline past the grace period).
ALTER TABLE queue_entries ADD COLUMN excluded uuid[] NOT NULL DEFAULT '{}';
-- What the chat waited with (priority, actions, since when), so that a chat taken back from its
-- agent returns to the queue at its original place and with its original needs.
ALTER TABLE assignments ADD COLUMN queued jsonb NOT NULL DEFAULT '{}';
