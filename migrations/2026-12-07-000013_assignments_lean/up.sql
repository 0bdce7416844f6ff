-- An assignment's reasons list every candidate: about 10 KB of JSON with 50 agents. As
-- jsonb each one was parsed, then compressed with pglz, and the two took an eighth of
-- PostgreSQL's CPU while routing (run 1 of BENCHMARKS.md). Nothing queries inside them (the
-- server writes them from a typed decision and reads them back whole for
-- ExplainAssignment), so they are kept as the JSON text the server wrote, compressed with
-- lz4: about 20 µs a row instead of 200. Ad-hoc queries can still cast `reasons::jsonb`.
ALTER TABLE assignments ALTER COLUMN reasons DROP DEFAULT;
ALTER TABLE assignments ALTER COLUMN reasons TYPE text USING reasons::text;
ALTER TABLE assignments ALTER COLUMN reasons SET DEFAULT '[]';
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
