//! Queries as plain functions over a connection. Callers own transactions.

use chrono::{DateTime, Utc};
use diesel::{
    dsl::{count_star, now},
    pg::PgConnection,
    prelude::*,
    sql_types::{Array, Nullable, Text},
};

use crate::{
    models::{Flavor, FlavorChanges, Job, NewFlavor, TextArray},
    schema::{auth, delivery, flavor, job},
};

/// Job statuses of jobs that have not started yet, and may still move to another flavor.
pub const NOT_STARTED: [&str; 2] = ["queued", "waiting"];

/// Advisory lock key (two-int form, distinct from any single-bigint key) that orders flavor
/// changes against job events: job events hold it shared, flavor changes exclusively, so a
/// re-match never misses a job that is being inserted at the same moment.
const FLAVOR_LOCK: (i32, i32) = (0x706c_616e, 1);

// ---------------------------------------------------------------------------------------------
// Flavors

/// Every flavor, by name.
pub fn list_flavors(conn: &mut PgConnection) -> QueryResult<Vec<Flavor>> {
    flavor::table
        .order(flavor::name.asc())
        .select(Flavor::as_select())
        .load(conn)
}

/// Every flavor of one platform, by name.
pub fn list_platform_flavors(conn: &mut PgConnection, platform: &str) -> QueryResult<Vec<Flavor>> {
    flavor::table
        .filter(flavor::platform.eq(platform))
        .order(flavor::name.asc())
        .select(Flavor::as_select())
        .load(conn)
}

/// One flavor by name.
pub fn get_flavor(conn: &mut PgConnection, name: &str) -> QueryResult<Option<Flavor>> {
    flavor::table
        .find(name)
        .select(Flavor::as_select())
        .first(conn)
        .optional()
}

/// Creates a flavor; `false` when one of that name exists already.
pub fn insert_flavor(conn: &mut PgConnection, new: &NewFlavor) -> QueryResult<bool> {
    let inserted = diesel::insert_into(flavor::table)
        .values(new)
        .on_conflict(flavor::name)
        .do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}

/// Changes a flavor; `None` when there is none of that name.
pub fn update_flavor(
    conn: &mut PgConnection,
    name: &str,
    changes: &FlavorChanges,
) -> QueryResult<Option<Flavor>> {
    diesel::update(flavor::table.find(name))
        .set((changes, flavor::updated_at.eq(now)))
        .returning(Flavor::as_returning())
        .get_result(conn)
        .optional()
}

/// Deletes a flavor; `None` when there is none of that name. Its jobs keep its name.
pub fn delete_flavor(conn: &mut PgConnection, name: &str) -> QueryResult<Option<Flavor>> {
    diesel::delete(flavor::table.find(name))
        .returning(Flavor::as_returning())
        .get_result(conn)
        .optional()
}

/// Takes the flavor-change lock exclusively until the end of the transaction.
pub fn lock_flavors_exclusive(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.0)
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.1)
        .execute(conn)
        .map(drop)
}

/// Takes the flavor-change lock shared until the end of the transaction.
pub fn lock_flavors_shared(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.0)
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.1)
        .execute(conn)
        .map(drop)
}

/// Number of `queued` or `in_progress` jobs assigned to each of `names` (absent: none).
pub fn open_job_counts(
    conn: &mut PgConnection,
    names: &[String],
) -> QueryResult<Vec<(String, i64)>> {
    job::table
        .filter(job::assigned_flavor.eq_any(names))
        .filter(job::status.eq_any(["queued", "in_progress"]))
        .group_by(job::assigned_flavor)
        .select((job::assigned_flavor.assume_not_null(), count_star()))
        .load(conn)
}

/// One flavor's inputs to pressure, as [`flavor_pressures`] reads them.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct FlavorPressureRow {
    /// The flavor.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// Disabled flavors report their minimum pressure only.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub is_disabled: bool,
    /// Runners to keep however few jobs there are.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub minimum_pressure: i32,
    /// `queued` or `in_progress` jobs assigned to the flavor, created within the age limit.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub open_jobs: i64,
    /// Milliseconds until the oldest of those jobs passes the age limit (`None`: no open job).
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    pub oldest_expires_in_ms: Option<f64>,
}

/// Every flavor with its count of open jobs (`queued` or `in_progress`, created less than
/// `max_age_seconds` ago) and when the oldest of them ages out: everything pressure needs, in
/// one statement (an index-only scan of `job_open_by_flavor` plus the flavor table).
pub fn flavor_pressures(
    conn: &mut PgConnection,
    max_age_seconds: f64,
) -> QueryResult<Vec<FlavorPressureRow>> {
    diesel::sql_query(
        "WITH open AS ( \
             SELECT assigned_flavor, count(*) AS n, min(created_at) AS oldest \
             FROM job \
             WHERE status IN ('queued', 'in_progress') \
               AND assigned_flavor IS NOT NULL \
               AND created_at > now() - make_interval(secs => $1) \
             GROUP BY assigned_flavor \
         ) \
         SELECT f.name, f.is_disabled, f.minimum_pressure, \
                coalesce(o.n, 0)::bigint AS open_jobs, \
                (extract(epoch FROM (o.oldest + make_interval(secs => $1) - now())) * 1000)::float8 \
                    AS oldest_expires_in_ms \
         FROM flavor f LEFT JOIN open o ON o.assigned_flavor = f.name",
    )
    .bind::<diesel::sql_types::Double, _>(max_age_seconds)
    .load(conn)
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Inserts a job unless one with its key exists; `true` when inserted.
pub fn insert_job_if_absent(conn: &mut PgConnection, row: &Job) -> QueryResult<bool> {
    let inserted = diesel::insert_into(job::table)
        .values(row)
        .on_conflict((job::platform, job::id))
        .do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}

/// Reads a job and locks its row until the end of the transaction.
pub fn lock_job(conn: &mut PgConnection, platform: &str, id: i64) -> QueryResult<Option<Job>> {
    job::table
        .find((platform, id))
        .select(Job::as_select())
        .for_update()
        .first(conn)
        .optional()
}

/// Overwrites every column of a job but its key.
pub fn update_job(conn: &mut PgConnection, row: &Job) -> QueryResult<()> {
    diesel::update(job::table.find((&row.platform, row.id)))
        .set(row)
        .execute(conn)
        .map(drop)
}

/// One job.
pub fn get_job(conn: &mut PgConnection, platform: &str, id: i64) -> QueryResult<Option<Job>> {
    job::table
        .find((platform, id))
        .select(Job::as_select())
        .first(conn)
        .optional()
}

/// Filters of [`list_jobs`]; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<String>,
    pub flavor: Option<String>,
    pub repository: Option<String>,
    /// Only jobs strictly older than this `(created_at, id)` (the keyset cursor).
    pub before: Option<(DateTime<Utc>, i64)>,
}

/// Jobs of a platform, newest first (`created_at`, then `id`, descending).
pub fn list_jobs(
    conn: &mut PgConnection,
    platform: &str,
    filter: &JobFilter,
    limit: i64,
) -> QueryResult<Vec<Job>> {
    let mut query = job::table
        .filter(job::platform.eq(platform))
        .select(Job::as_select())
        .order((job::created_at.desc(), job::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(status) = &filter.status {
        query = query.filter(job::status.eq(status.clone()));
    }
    if let Some(name) = &filter.flavor {
        query = query.filter(job::assigned_flavor.eq(name.clone()));
    }
    if let Some(repository) = &filter.repository {
        query = query.filter(job::repository.eq(repository.clone()));
    }
    if let Some((created_at, id)) = filter.before {
        query = query.filter(
            job::created_at
                .lt(created_at)
                .or(job::created_at.eq(created_at).and(job::id.lt(id))),
        );
    }
    query.load(conn)
}

/// The distinct label sets of a platform's jobs that have not started.
pub fn not_started_label_sets(
    conn: &mut PgConnection,
    platform: &str,
) -> QueryResult<Vec<Vec<String>>> {
    let sets: Vec<TextArray> = job::table
        .filter(job::platform.eq(platform))
        .filter(job::status.eq_any(NOT_STARTED))
        .select(job::labels)
        .distinct()
        .load(conn)?;
    Ok(sets.into_iter().map(Vec::from).collect())
}

/// Assigns `flavor` to every not-started job of `platform` with exactly `labels`; returns how
/// many rows changed.
pub fn reassign_not_started(
    conn: &mut PgConnection,
    platform: &str,
    labels: &[String],
    flavor: Option<&str>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE job SET assigned_flavor = $3, updated_at = now() \
         WHERE platform = $1 AND status IN ('queued', 'waiting') AND labels = $2 \
         AND assigned_flavor IS DISTINCT FROM $3",
    )
    .bind::<Text, _>(platform)
    .bind::<Array<Text>, _>(labels)
    .bind::<Nullable<Text>, _>(flavor)
    .execute(conn)
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// Records a delivery id; returns how many times it had been seen before (0: first time).
pub fn record_delivery(
    conn: &mut PgConnection,
    id: &str,
    platform: &str,
    job_id: i64,
    action: &str,
) -> QueryResult<i32> {
    diesel::insert_into(delivery::table)
        .values((
            delivery::id.eq(id),
            delivery::job_platform.eq(platform),
            delivery::job_id.eq(job_id),
            delivery::action.eq(action),
        ))
        .on_conflict(delivery::id)
        .do_update()
        .set((
            delivery::duplicates.eq(delivery::duplicates + 1),
            delivery::last_seen_at.eq(now),
        ))
        .returning(delivery::duplicates)
        .get_result(conn)
}

/// Total number of duplicate deliveries seen for one job.
pub fn job_duplicate_count(
    conn: &mut PgConnection,
    platform: &str,
    job_id: i64,
) -> QueryResult<i64> {
    delivery::table
        .filter(delivery::job_platform.eq(platform))
        .filter(delivery::job_id.eq(job_id))
        .select(diesel::dsl::sum(delivery::duplicates))
        .first::<Option<i64>>(conn)
        .map(Option::unwrap_or_default)
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// Stores a token's hash under `name`; `false` when the name is taken.
pub fn insert_token(conn: &mut PgConnection, name: &str, sha256: &[u8]) -> QueryResult<bool> {
    let inserted = diesel::insert_into(auth::table)
        .values((auth::name.eq(name), auth::token_sha256.eq(sha256)))
        .on_conflict(auth::name)
        .do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}

/// Every token name, sorted.
pub fn list_token_names(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    auth::table
        .order(auth::name.asc())
        .select(auth::name)
        .load(conn)
}

/// Deletes a token; `false` when there is none of that name.
pub fn delete_token(conn: &mut PgConnection, name: &str) -> QueryResult<bool> {
    Ok(diesel::delete(auth::table.find(name)).execute(conn)? == 1)
}

/// The name of the token whose SHA-256 is `sha256`, if any.
pub fn token_name_by_hash(conn: &mut PgConnection, sha256: &[u8]) -> QueryResult<Option<String>> {
    auth::table
        .filter(auth::token_sha256.eq(sha256))
        .select(auth::name)
        .first(conn)
        .optional()
}
