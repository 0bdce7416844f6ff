-- The tenant default workflow: applies when no other workflow matches. At most one per
-- tenant, enforced here so that two concurrent "make this the default" calls cannot both win.
ALTER TABLE workflows ADD COLUMN is_default boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX workflows_one_default ON workflows (tenant_id) WHERE is_default;
