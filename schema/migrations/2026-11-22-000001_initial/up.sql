-- Runner flavors: which runners exist and which job labels they serve.
CREATE TABLE flavor (
    name             TEXT PRIMARY KEY,
    platform         TEXT        NOT NULL,
    -- Lowercased; never contains NULL.
    labels           TEXT[]      NOT NULL CHECK (array_position(labels, NULL) IS NULL),
    priority         INTEGER     NOT NULL CHECK (priority >= 0),
    is_disabled      BOOLEAN     NOT NULL DEFAULT FALSE,
    minimum_pressure INTEGER     NOT NULL DEFAULT 0 CHECK (minimum_pressure >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every self-hosted workflow job the planner has heard of.
CREATE TABLE job (
    platform        TEXT        NOT NULL,
    id              BIGINT      NOT NULL,
    -- The job's `runs-on` labels, lowercased, as GitHub sent them.
    labels          TEXT[]      NOT NULL CHECK (array_position(labels, NULL) IS NULL),
    status          TEXT        NOT NULL
                    CHECK (status IN ('queued', 'waiting', 'in_progress', 'completed')),
    conclusion      TEXT,
    repository      TEXT        NOT NULL,
    run_id          BIGINT,
    run_attempt     BIGINT,
    workflow_name   TEXT,
    job_name        TEXT,
    runner_name     TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ,
    -- Deliberately not a foreign key: deleting a flavor never erases the history of its jobs.
    assigned_flavor TEXT,
    -- The raw webhook payload of each action received, keyed by action.
    payloads        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, id)
);

-- Open jobs per flavor (pressure): only rows that are not completed, so the index stays small
-- however long the history grows.
CREATE INDEX job_open_by_flavor ON job (assigned_flavor, status, created_at)
    WHERE status <> 'completed';
-- Jobs not started yet, re-matched whenever a flavor changes.
CREATE INDEX job_not_started ON job (platform, labels)
    WHERE status IN ('queued', 'waiting');
-- Listing, newest first, with a keyset cursor.
CREATE INDEX job_newest ON job (platform, created_at DESC, id DESC);

-- API tokens: only the SHA-256 of each token is stored, never the token.
CREATE TABLE auth (
    name         TEXT PRIMARY KEY,
    token_sha256 BYTEA       NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every X-GitHub-Delivery seen: a redelivered or duplicated webhook is counted, not applied twice.
CREATE TABLE delivery (
    id            TEXT PRIMARY KEY,
    job_platform  TEXT        NOT NULL,
    job_id        BIGINT      NOT NULL,
    action        TEXT        NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    duplicates    INTEGER     NOT NULL DEFAULT 0
);
CREATE INDEX delivery_job ON delivery (job_platform, job_id);

-- Anything that can move pressure notifies `planner_changes` once per statement, with the table
-- name as payload, so listeners (the pressure engine) need no polling.
CREATE FUNCTION planner_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('planner_changes', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;
CREATE TRIGGER job_changed AFTER INSERT OR UPDATE OR DELETE ON job
    FOR EACH STATEMENT EXECUTE FUNCTION planner_notify_change();
CREATE TRIGGER flavor_changed AFTER INSERT OR UPDATE OR DELETE ON flavor
    FOR EACH STATEMENT EXECUTE FUNCTION planner_notify_change();
