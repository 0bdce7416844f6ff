DROP INDEX workflows_one_default;
ALTER TABLE workflows DROP COLUMN is_default;
