DROP INDEX job_open_by_flavor_age;
CREATE INDEX job_open_by_flavor ON job (assigned_flavor, status, created_at)
    WHERE status <> 'completed';
DROP TRIGGER job_open_delta_truncate ON job;
DROP TRIGGER job_open_delta_delete ON job;
DROP TRIGGER job_open_delta_update ON job;
DROP TRIGGER job_open_delta_insert ON job;
DROP FUNCTION job_open_delta_record();
DROP TABLE job_open_delta;
