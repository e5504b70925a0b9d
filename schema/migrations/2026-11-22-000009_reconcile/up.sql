-- Reconciliation with GitHub's API (issue 9): when a planner last asked GitHub about an open job.
-- NULL: never. A job is due once it has been open, and unchecked, for APP_RECONCILE_AFTER.
ALTER TABLE job ADD COLUMN reconciled_at TIMESTAMPTZ;
-- Open jobs by the time they became due (most overdue first); only open rows, so it stays small.
CREATE INDEX job_reconcile_due ON job ((COALESCE(reconciled_at, created_at)))
    WHERE status <> 'completed';
