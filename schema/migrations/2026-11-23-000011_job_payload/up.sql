-- Every action's raw payload of a job, one row each, written once when its delivery is applied.
-- Kept in the job row (`job.payloads`), the payloads were read, parsed, merged and rewritten by
-- every later event of the job, and recompressed each time: most of what a job event cost. lz4
-- compresses them several times faster than PostgreSQL's default pglz.
--
-- The job store writes a job's payloads in the transaction that writes the job. No foreign key
-- checks that again row by row (it cost a sixth of the database's time per delivery); deleting
-- or truncating jobs deletes their payloads through the statement triggers below.
CREATE TABLE job_payload (
    platform TEXT   NOT NULL,
    job_id   BIGINT NOT NULL,
    action   TEXT   NOT NULL CHECK (action IN ('queued', 'waiting', 'in_progress', 'completed')),
    payload  JSONB  COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (platform, job_id, action)
);

CREATE FUNCTION job_payload_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM job_payload p USING old_rows o
        WHERE p.platform = o.platform AND p.job_id = o.id;
    ELSE -- TRUNCATE
        TRUNCATE job_payload;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER job_payload_forget_deleted AFTER DELETE ON job
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_payload_forget();
CREATE TRIGGER job_payload_forget_truncated AFTER TRUNCATE ON job
    FOR EACH STATEMENT EXECUTE FUNCTION job_payload_forget();

INSERT INTO job_payload (platform, job_id, action, payload)
SELECT job.platform, job.id, payload.key, payload.value
FROM job, jsonb_each(job.payloads) AS payload
WHERE jsonb_typeof(job.payloads) = 'object'
  AND payload.key IN ('queued', 'waiting', 'in_progress', 'completed');

ALTER TABLE job DROP COLUMN payloads;
