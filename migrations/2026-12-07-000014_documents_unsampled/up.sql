-- ANALYZE samples up to 30,000 rows of a table and computes statistics on every column. For
-- the columns below it decompressed each sampled value: an assignment's reasons are about
-- 9 KB of JSON with 50 agents. Autoanalyze of `assignments` then took 0.29 s of CPU each time,
-- and all autovacuum work took 6.4 s of CPU in a 60 s run 1 (BENCHMARKS.md, session 18).
-- No statement filters, joins or groups on these columns: they are written whole and read
-- back whole. So their statistics were never used; ANALYZE now skips them.
ALTER TABLE assignments ALTER COLUMN reasons SET STATISTICS 0;
ALTER TABLE assignments ALTER COLUMN queued SET STATISTICS 0;
ALTER TABLE conversation_events ALTER COLUMN payload SET STATISTICS 0;
ALTER TABLE analytics_chats ALTER COLUMN contributions SET STATISTICS 0;
