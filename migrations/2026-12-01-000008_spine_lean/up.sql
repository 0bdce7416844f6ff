-- A spine entry is only ever written by the statement that advances its head under the head
-- row's lock (storage::spine::append), so its reference to the head cannot break; checking it
-- anyway cost a foreign-key trigger (a row lock and a lookup) on every send batch.
ALTER TABLE spine_entries DROP CONSTRAINT spine_entries_tenant_id_shard_fkey;

-- Every node follows every tenant's spine heads (domain::follower): a node that died between
-- a commit and its announcement leaves positions nobody announced, and the others fetch
-- them. Reading heads and entries across tenants needs this one setting, like app.operator
-- for the tenants table; it grants reads of the spine only, which names ids and seqs.
CREATE POLICY spine_follower ON spine_heads FOR SELECT
  USING (current_setting('app.spine_follower', true) = 'on');
CREATE POLICY spine_follower ON spine_entries FOR SELECT
  USING (current_setting('app.spine_follower', true) = 'on');
