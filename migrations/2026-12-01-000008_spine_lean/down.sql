DROP POLICY spine_follower ON spine_entries;
DROP POLICY spine_follower ON spine_heads;
ALTER TABLE spine_entries ADD FOREIGN KEY (tenant_id, shard) REFERENCES spine_heads (tenant_id, shard) ON DELETE CASCADE;
