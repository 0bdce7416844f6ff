DROP AGGREGATE analytics_sum(integer[]);
DROP TABLE analytics_days;
ALTER TABLE tenants DROP COLUMN time_zone;
