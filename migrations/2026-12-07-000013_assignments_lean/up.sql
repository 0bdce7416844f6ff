-- An assignment's reasons list every candidate (8-9 KB of JSON with 50 agents), so each
-- stored assignment was compressed with pglz: a twentieth of PostgreSQL's CPU while routing (run 1 of BENCHMARKS.md).
-- lz4 does the same several times faster. Rows already stored keep their compression.
-- A server built without lz4 keeps pglz.
DO $$
BEGIN
  ALTER TABLE assignments ALTER COLUMN reasons SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'lz4 is not available; assignments keep pglz';
END $$;

-- (tenant_id, conversation_id, assigned_at DESC) serves every look-up this one did: one
-- index fewer to write per assignment.
DROP INDEX assignments_by_conversation;
