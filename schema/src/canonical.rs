//! Taking over a database written by Canonical's planner (`canonical/github-runner-operators`).
//!
//! Canonical's planner migrates its database with golang-migrate (`schema_migrations(version,
//! dirty)`, versions 1 and 2) into three tables:
//! - `auth(pk, name, token)`: `token` is the lowercase hex SHA-256 of the token's 32 random bytes
//!   (the token handed out is those bytes in base64url without padding);
//! - `flavor(pk, platform, name, labels, priority, is_disabled, minimum_pressure)`;
//! - `job(pk, platform, id TEXT, labels, created_at, started_at, completed_at, raw JSONB,
//!   assigned_flavor)`: `raw` maps each `workflow_job` action received (`queued`, `in_progress`,
//!   `completed`) to that delivery's whole body; `labels` are lowercased without GitHub's
//!   implicit `self-hosted` and `linux`; `started_at`/`completed_at` are set by the deliveries or
//!   by `PATCH /api/v1/jobs/...`, and a job is open while `completed_at` is NULL.
//!
//! [`take_over`] recognises that shape and converts it in place, in one transaction, into this
//! crate's schema at [`CONVERTS_TO`] (later migrations then run as usual):
//! - flavors are kept (labels lowercased, as ours are stored);
//! - tokens are kept: the hash is decoded from hex into `auth.token_sha256`, which is what ours
//!   compute for a token of that encoding, so every token stays valid;
//! - jobs are kept with their times and assigned flavor; the status follows the times (completed
//!   when `completed_at` is set, else in progress when `started_at` is, else queued), so the open
//!   jobs, and with them the pressure, are those Canonical's planner counted; labels, repository,
//!   run, workflow, job and runner names and conclusion come from the payloads (the most advanced
//!   action that has each, as the job store picks them), labels falling back to Canonical's column;
//! - every payload of `raw` becomes a `job_payload` row.
//!
//! Anything else is refused before anything is touched: tables that are neither Canonical's nor
//! ours, a dirty or unknown golang-migrate version, golang-migrate's table beside ours, or rows
//! that cannot be carried over (a job id that is not a number, a token hash that is not hex, a
//! negative priority, a payload under a key that is not an action). The error names what was
//! found. A database already converted (or ours from the start, or empty) is left to the
//! migrations: running the conversion again does nothing.

use std::fmt;

use diesel::{
    connection::Connection,
    pg::PgConnection,
    sql_query,
    sql_types::{BigInt, Bool, Nullable, Text},
    QueryableByName, RunQueryDsl,
};
use diesel_migrations::MigrationHarness;

/// The version of our schema the conversion writes (the migrations after it run as usual).
pub const CONVERTS_TO: &str = "20261123000011";

/// golang-migrate's bookkeeping table.
const GOLANG_MIGRATE_TABLE: &str = "schema_migrations";

/// diesel's bookkeeping table.
const DIESEL_TABLE: &str = "__diesel_schema_migrations";

/// The golang-migrate versions of Canonical's schema that can be converted (both have the same
/// tables; version 2 lowercased the labels).
const CANONICAL_VERSIONS: [i64; 2] = [1, 2];

/// Canonical's tables and their columns (name, PostgreSQL type), in order.
const CANONICAL_TABLES: [(&str, &[(&str, &str)]); 3] = [
    (
        "auth",
        &[("pk", "int8"), ("name", "text"), ("token", "text")],
    ),
    (
        "flavor",
        &[
            ("pk", "int8"),
            ("platform", "text"),
            ("name", "text"),
            ("labels", "_text"),
            ("priority", "int4"),
            ("is_disabled", "bool"),
            ("minimum_pressure", "int4"),
        ],
    ),
    (
        "job",
        &[
            ("pk", "int8"),
            ("platform", "text"),
            ("id", "text"),
            ("labels", "_text"),
            ("created_at", "timestamptz"),
            ("started_at", "timestamptz"),
            ("completed_at", "timestamptz"),
            ("raw", "jsonb"),
            ("assigned_flavor", "text"),
        ],
    ),
];

/// Serialises takeovers of one database (two planners starting at once): the second waits and
/// then finds the database converted.
const TAKEOVER_LOCK: i64 = 736_465_015;

/// What the database holds, as far as the takeover is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// No tables: our migrations create everything.
    Empty,
    /// Our schema (diesel's bookkeeping table is there): our migrations take it from here.
    Ours,
    /// Canonical's schema at this golang-migrate version, not dirty.
    Canonical { version: i64 },
}

/// What a conversion carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Converted {
    /// The golang-migrate version of Canonical's schema.
    pub version: i64,
    pub flavors: usize,
    pub tokens: usize,
    pub jobs: usize,
    /// Jobs not completed (they count towards pressure when they have a flavor).
    pub open_jobs: usize,
    pub payloads: usize,
}

/// Why a database is not taken over.
#[derive(Debug)]
pub enum TakeoverError {
    /// The database is of a shape we do not know; nothing was changed.
    Refused(String),
    /// PostgreSQL failed (the transaction was rolled back).
    Database(diesel::result::Error),
    /// Our migrations failed during the conversion (rolled back).
    Migration(String),
}

impl fmt::Display for TakeoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TakeoverError::Refused(why) => write!(
                f,
                "refusing to migrate this database (nothing was changed): {why}"
            ),
            TakeoverError::Database(err) => {
                write!(f, "converting Canonical's planner database failed: {err}")
            }
            TakeoverError::Migration(err) => write!(
                f,
                "converting Canonical's planner database failed in our migrations: {err}"
            ),
        }
    }
}

impl std::error::Error for TakeoverError {}

impl From<diesel::result::Error> for TakeoverError {
    fn from(err: diesel::result::Error) -> Self {
        TakeoverError::Database(err)
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
}

#[derive(QueryableByName)]
struct MigrateVersion {
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
    #[diesel(sql_type = Nullable<Bool>)]
    dirty: Option<bool>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Names of the tables (and views) of the current schema, sorted.
fn tables(conn: &mut PgConnection) -> diesel::QueryResult<Vec<String>> {
    Ok(sql_query(
        "SELECT c.relname::text AS name FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
         ORDER BY 1",
    )
    .load::<Name>(conn)?
    .into_iter()
    .map(|row| row.name)
    .collect())
}

/// Recognises the database behind `conn` (reads only).
pub fn detect(conn: &mut PgConnection) -> Result<Shape, TakeoverError> {
    let found = tables(conn)?;
    let has = |name: &str| found.iter().any(|table| table == name);
    if has(DIESEL_TABLE) {
        if has(GOLANG_MIGRATE_TABLE) {
            return Err(TakeoverError::Refused(format!(
                "it has both our {DIESEL_TABLE} and golang-migrate's {GOLANG_MIGRATE_TABLE} \
                 (Canonical's planner may have been started on it after the conversion); \
                 tables found: {}",
                found.join(", ")
            )));
        }
        return Ok(Shape::Ours);
    }
    if found.is_empty() {
        return Ok(Shape::Empty);
    }
    let expected: Vec<&str> = CANONICAL_TABLES
        .iter()
        .map(|(name, _)| *name)
        .chain([GOLANG_MIGRATE_TABLE])
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_unstable();
    if found != expected_sorted {
        return Err(TakeoverError::Refused(format!(
            "its tables are neither ours (no {DIESEL_TABLE}) nor those of Canonical's planner \
             ({}); tables found: {}",
            expected.join(", "),
            found.join(", ")
        )));
    }
    let versions: Vec<MigrateVersion> =
        sql_query(format!("SELECT version, dirty FROM {GOLANG_MIGRATE_TABLE}")).load(conn)?;
    let version = match versions.as_slice() {
        [MigrateVersion {
            version: Some(version),
            dirty: Some(false),
        }] if CANONICAL_VERSIONS.contains(version) => *version,
        [MigrateVersion {
            version,
            dirty: Some(true),
        }] => {
            return Err(TakeoverError::Refused(format!(
                "golang-migrate's {GOLANG_MIGRATE_TABLE} says version {} is dirty (a migration \
                 of Canonical's planner failed half-way); repair it with Canonical's tools first",
                version.map_or("NULL".to_owned(), |v| v.to_string())
            )))
        }
        [MigrateVersion { version, .. }] => {
            return Err(TakeoverError::Refused(format!(
                "golang-migrate's {GOLANG_MIGRATE_TABLE} is at version {}, not one of the \
                 versions of Canonical's planner this planner converts ({CANONICAL_VERSIONS:?})",
                version.map_or("NULL".to_owned(), |v| v.to_string())
            )))
        }
        rows => {
            return Err(TakeoverError::Refused(format!(
                "golang-migrate's {GOLANG_MIGRATE_TABLE} has {} rows, not one",
                rows.len()
            )))
        }
    };
    let columns: Vec<Column> = sql_query(
        "SELECT table_name::text, column_name::text, udt_name::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name IN ('auth', 'flavor', 'job') \
         ORDER BY table_name, ordinal_position",
    )
    .load(conn)?;
    for (table, expected) in CANONICAL_TABLES {
        let actual: Vec<(&str, &str)> = columns
            .iter()
            .filter(|column| column.table_name == table)
            .map(|column| (column.column_name.as_str(), column.udt_name.as_str()))
            .collect();
        if actual != expected {
            return Err(TakeoverError::Refused(format!(
                "table {table} does not have the columns of Canonical's planner: expected \
                 {}, found {}",
                describe(expected),
                describe(&actual)
            )));
        }
    }
    Ok(Shape::Canonical { version })
}

fn describe(columns: &[(&str, &str)]) -> String {
    columns
        .iter()
        .map(|(name, kind)| format!("{name} {kind}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts a database of Canonical's planner in place (see the module documentation), in one
/// transaction; `None` when there was nothing to convert (empty, or ours). Refuses, changing
/// nothing, a database of another shape. Call it before [`crate::run_migrations`].
pub fn take_over(conn: &mut PgConnection) -> Result<Option<Converted>, TakeoverError> {
    conn.transaction(|conn| {
        sql_query(format!("SELECT pg_advisory_xact_lock({TAKEOVER_LOCK})")).execute(conn)?;
        let version = match detect(conn)? {
            Shape::Empty | Shape::Ours => return Ok(None),
            Shape::Canonical { version } => version,
        };
        // Canonical's planner, if still running, waits (and then fails) rather than writing
        // rows the conversion would miss.
        sql_query("SET LOCAL lock_timeout = '30s'").execute(conn)?;
        sql_query("LOCK TABLE auth, flavor, job, schema_migrations IN ACCESS EXCLUSIVE MODE")
            .execute(conn)?;
        check_rows(conn)?;
        convert(conn, version).map(Some)
    })
}

/// First few values of a query's `name` column, for an error message.
fn offenders(conn: &mut PgConnection, sql: &str) -> diesel::QueryResult<Vec<String>> {
    Ok(sql_query(format!("{sql} LIMIT 5"))
        .load::<Name>(conn)?
        .into_iter()
        .map(|row| row.name)
        .collect())
}

/// Refuses rows our schema cannot hold; names them (ids and names only, never tokens or
/// payloads).
fn check_rows(conn: &mut PgConnection) -> Result<(), TakeoverError> {
    let checks: [(&str, &str); 5] = [
        (
            "job ids that are not numbers (GitHub's job ids are)",
            "SELECT id AS name FROM job \
             WHERE CASE WHEN id ~ '^[0-9]{1,19}$' THEN id::numeric > 9223372036854775807 \
             ELSE true END ORDER BY pk",
        ),
        (
            "jobs whose ids are the same number",
            // Every id is a number by now (the check above).
            "SELECT platform || '/' || id::numeric::text AS name FROM job \
             GROUP BY platform, id::numeric HAVING count(*) > 1",
        ),
        (
            "jobs whose raw payloads are not an object of actions (queued, in_progress, \
             completed, waiting)",
            "SELECT id AS name FROM job WHERE jsonb_typeof(raw) <> 'object' OR EXISTS \
             (SELECT 1 FROM jsonb_object_keys(CASE WHEN jsonb_typeof(raw) = 'object' \
              THEN raw ELSE '{}' END) AS key \
              WHERE key NOT IN ('queued', 'waiting', 'in_progress', 'completed')) ORDER BY pk",
        ),
        (
            "tokens whose stored hash is not 64 hex digits",
            "SELECT name FROM auth WHERE token !~ '^[0-9a-fA-F]{64}$' ORDER BY pk",
        ),
        (
            "flavors with a negative priority or minimum_pressure (ours are at least 0)",
            "SELECT name FROM flavor WHERE priority < 0 OR minimum_pressure < 0 ORDER BY pk",
        ),
    ];
    for (what, sql) in checks {
        let found = offenders(conn, sql)?;
        if !found.is_empty() {
            return Err(TakeoverError::Refused(format!(
                "Canonical's planner database has {what}: {}",
                found.join(", ")
            )));
        }
    }
    Ok(())
}

/// Moves Canonical's tables aside, creates ours, copies the rows, drops Canonical's.
fn convert(conn: &mut PgConnection, version: i64) -> Result<Converted, TakeoverError> {
    // Aside under other names (their primary keys too: ours are named the same).
    for table in ["auth", "flavor", "job"] {
        sql_query(format!("ALTER TABLE {table} RENAME TO canonical_{table}")).execute(conn)?;
        sql_query(format!(
            "ALTER TABLE canonical_{table} RENAME CONSTRAINT {table}_pkey \
             TO canonical_{table}_pkey"
        ))
        .execute(conn)?;
    }
    loop {
        let applied = conn
            .run_next_migration(crate::MIGRATIONS)
            .map_err(|err| TakeoverError::Migration(err.to_string()))?;
        if applied.to_string() == CONVERTS_TO {
            break;
        }
    }

    let flavors = sql_query(
        "INSERT INTO flavor (name, platform, labels, priority, is_disabled, minimum_pressure) \
         SELECT f.name, f.platform, \
           ARRAY(SELECT l FROM (SELECT DISTINCT ON (lower(x)) lower(x) AS l, o \
                                FROM unnest(f.labels) WITH ORDINALITY AS u(x, o) \
                                WHERE x IS NOT NULL ORDER BY lower(x), o) AS lowered \
                 ORDER BY o), \
           f.priority, f.is_disabled, f.minimum_pressure \
         FROM canonical_flavor f",
    )
    .execute(conn)?;
    let tokens = sql_query(
        "INSERT INTO auth (name, token_sha256) \
         SELECT name, decode(lower(token), 'hex') FROM canonical_auth",
    )
    .execute(conn)?;
    let jobs = sql_query(CONVERT_JOBS).execute(conn)?;
    let payloads = sql_query(
        "INSERT INTO job_payload (platform, job_id, action, payload) \
         SELECT j.platform, j.id::bigint, p.key, p.value \
         FROM canonical_job j, jsonb_each(j.raw) AS p",
    )
    .execute(conn)?;
    let open_jobs = sql_query("SELECT count(*) AS n FROM canonical_job WHERE completed_at IS NULL")
        .get_result::<Count>(conn)?
        .n;
    sql_query("DROP TABLE canonical_job, canonical_flavor, canonical_auth, schema_migrations")
        .execute(conn)?;
    Ok(Converted {
        version,
        flavors,
        tokens,
        jobs,
        open_jobs: usize::try_from(open_jobs).unwrap_or_default(),
        payloads,
    })
}

/// Canonical's jobs into ours. `p` holds the payloads, most advanced action first; each
/// descriptive field is the first payload's that has it (as the job store picks them), labels
/// normalised as ours are (trimmed, lowercased, no empty ones, first of duplicates).
const CONVERT_JOBS: &str = r#"
INSERT INTO job (platform, id, labels, status, conclusion, repository, run_id, run_attempt,
                 workflow_name, job_name, runner_name, created_at, started_at, completed_at,
                 assigned_flavor, updated_at)
SELECT j.platform, j.id::bigint,
       ARRAY(SELECT l FROM (SELECT DISTINCT ON (lower(btrim(x))) lower(btrim(x)) AS l, o
                            FROM unnest(labels.source) WITH ORDINALITY AS u(x, o)
                            WHERE x IS NOT NULL AND btrim(x) <> ''
                            ORDER BY lower(btrim(x)), o) AS normalised
             ORDER BY o),
       CASE WHEN j.completed_at IS NOT NULL THEN 'completed'
            WHEN j.started_at IS NOT NULL THEN 'in_progress'
            ELSE 'queued' END,
       j.raw #>> '{completed,workflow_job,conclusion}',
       COALESCE(j.raw #>> '{completed,repository,full_name}',
                j.raw #>> '{in_progress,repository,full_name}',
                j.raw #>> '{queued,repository,full_name}', ''),
       CASE WHEN fields.run_id ~ '^-?[0-9]{1,18}$' THEN fields.run_id::bigint END,
       CASE WHEN fields.run_attempt ~ '^-?[0-9]{1,18}$' THEN fields.run_attempt::bigint END,
       fields.workflow_name, fields.job_name,
       COALESCE(j.raw #>> '{completed,workflow_job,runner_name}',
                j.raw #>> '{in_progress,workflow_job,runner_name}'),
       j.created_at, j.started_at, j.completed_at, j.assigned_flavor, now()
FROM canonical_job j
CROSS JOIN LATERAL (
    SELECT COALESCE(j.raw #>> '{completed,workflow_job,run_id}',
                    j.raw #>> '{in_progress,workflow_job,run_id}',
                    j.raw #>> '{queued,workflow_job,run_id}') AS run_id,
           COALESCE(j.raw #>> '{completed,workflow_job,run_attempt}',
                    j.raw #>> '{in_progress,workflow_job,run_attempt}',
                    j.raw #>> '{queued,workflow_job,run_attempt}') AS run_attempt,
           COALESCE(j.raw #>> '{completed,workflow_job,workflow_name}',
                    j.raw #>> '{in_progress,workflow_job,workflow_name}',
                    j.raw #>> '{queued,workflow_job,workflow_name}') AS workflow_name,
           COALESCE(j.raw #>> '{completed,workflow_job,name}',
                    j.raw #>> '{in_progress,workflow_job,name}',
                    j.raw #>> '{queued,workflow_job,name}') AS job_name
) AS fields
CROSS JOIN LATERAL (
    SELECT COALESCE(
        (SELECT ARRAY(SELECT jsonb_array_elements_text(a.labels))
         FROM (VALUES (1, j.raw #> '{completed,workflow_job,labels}'),
                      (2, j.raw #> '{in_progress,workflow_job,labels}'),
                      (3, j.raw #> '{queued,workflow_job,labels}')) AS a(rank, labels)
         WHERE jsonb_typeof(a.labels) = 'array'
         ORDER BY a.rank LIMIT 1),
        j.labels) AS source
) AS labels
"#;
