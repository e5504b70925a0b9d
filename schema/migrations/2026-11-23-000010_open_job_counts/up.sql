-- Pressure without counting every open job on each recompute (issue 4: recompute under 10 ms at
-- 100k open jobs). An open job is one that is `queued` or `in_progress` and has a flavor.
--
-- `job_open_delta` holds signed counts of open jobs per flavor: statement triggers on `job` add a
-- row for every statement that opens or closes jobs (or moves them between flavors), in the same
-- transaction as the change, so in every snapshot sum(delta) per flavor is exactly that flavor's
-- number of open jobs. Writers only ever insert here, so planners applying jobs at the same time
-- never wait on each other (a counter row updated in place would serialise them and could
-- deadlock). The pressure calculator compacts the rows (deletes them and inserts their sums in
-- one statement) when there are many, so reading the counts stays a scan of a few rows.
CREATE TABLE job_open_delta (
    flavor TEXT   NOT NULL,
    delta  BIGINT NOT NULL
);

CREATE FUNCTION job_open_delta_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_open_delta (flavor, delta)
        SELECT assigned_flavor, count(*) FROM new_rows
        WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL
        GROUP BY assigned_flavor;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO job_open_delta (flavor, delta)
        SELECT flavor, sum(delta) FROM (
            SELECT assigned_flavor AS flavor, 1 AS delta FROM new_rows
            WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL
            UNION ALL
            SELECT assigned_flavor, -1 FROM old_rows
            WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL
        ) moved
        GROUP BY flavor
        HAVING sum(delta) <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_open_delta (flavor, delta)
        SELECT assigned_flavor, -count(*) FROM old_rows
        WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL
        GROUP BY assigned_flavor;
    ELSE -- TRUNCATE
        -- Not DELETE: it would miss the sums a compaction running at this moment commits.
        TRUNCATE job_open_delta;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_open_delta_insert AFTER INSERT ON job
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_open_delta_record();
CREATE TRIGGER job_open_delta_update AFTER UPDATE ON job
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_open_delta_record();
CREATE TRIGGER job_open_delta_delete AFTER DELETE ON job
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_open_delta_record();
CREATE TRIGGER job_open_delta_truncate AFTER TRUNCATE ON job
    FOR EACH STATEMENT EXECUTE FUNCTION job_open_delta_record();

-- The jobs already there (the triggers above hold off writers until this migration commits).
INSERT INTO job_open_delta (flavor, delta)
SELECT assigned_flavor, count(*) FROM job
WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL
GROUP BY assigned_flavor;

-- What the counts leave to the recompute: the open jobs of a flavor that are past the age limit
-- (subtracted; few, since reconciliation completes stale jobs) and the oldest one that is not
-- (when the next recompute is due). Both are range scans of this index per flavor, so their cost
-- grows with aged jobs and flavors, not with open jobs or history. It replaces
-- `job_open_by_flavor`, which every recompute read in full.
DROP INDEX job_open_by_flavor;
CREATE INDEX job_open_by_flavor_age ON job (assigned_flavor, created_at)
    WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL;
