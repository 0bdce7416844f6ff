DROP INDEX IF EXISTS conversations_by_visitor_time;
DROP TABLE IF EXISTS identity_settings;
DROP TABLE IF EXISTS visitor_sessions;
DROP INDEX IF EXISTS visitors_by_external_user;
ALTER TABLE visitors
  DROP COLUMN IF EXISTS referrer,
  DROP COLUMN IF EXISTS page_url,
  DROP COLUMN IF EXISTS external_user_id;
