ALTER TABLE job ADD COLUMN payloads JSONB NOT NULL DEFAULT '{}'::jsonb;
UPDATE job SET payloads = merged.payloads
FROM (
    SELECT platform, job_id, jsonb_object_agg(action, payload) AS payloads
    FROM job_payload GROUP BY platform, job_id
) merged
WHERE job.platform = merged.platform AND job.id = merged.job_id;
DROP TRIGGER job_payload_forget_truncated ON job;
DROP TRIGGER job_payload_forget_deleted ON job;
DROP FUNCTION job_payload_forget();
DROP TABLE job_payload;
