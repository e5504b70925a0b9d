DROP INDEX job_reconcile_due;
ALTER TABLE job DROP COLUMN reconciled_at;
