//! Queries as plain functions over a connection. Callers own transactions.

use chrono::{DateTime, Utc};
use diesel::{
    dsl::now,
    pg::PgConnection,
    prelude::*,
    sql_types::{Array, BigInt, Nullable, Text},
};

use crate::{
    models::{Flavor, FlavorChanges, Job, NewFlavor, Status, TextArray},
    schema::{auth, delivery, flavor, job, job_payload},
};

pub mod console;

/// Job statuses of jobs that have not started yet, and may still move to another flavor.
pub const NOT_STARTED: [Status; 2] = [Status::Queued, Status::Waiting];

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

/// Creates a flavor; `None` when one of that name exists already.
pub fn insert_flavor(conn: &mut PgConnection, new: &NewFlavor) -> QueryResult<Option<Flavor>> {
    diesel::insert_into(flavor::table)
        .values(new)
        .on_conflict(flavor::name)
        .do_nothing()
        .returning(Flavor::as_returning())
        .get_result(conn)
        .optional()
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

/// Plans every statement of the rest of the transaction for its actual parameters and the
/// tables as they are now. Prepared statements (diesel caches them) otherwise switch to a
/// generic plan after five runs, and a generic plan made while a table was nearly empty (a new
/// installation) can keep scanning it long after it has grown: reading a batch's jobs by
/// `id = ANY($ids)` became a filter over every job. Planning a batch's few statements costs far
/// less than that.
pub fn plan_for_actual_parameters(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(conn)
        .map(drop)
}

/// Takes the flavor-change lock exclusively until the end of the transaction.
pub fn lock_flavors_exclusive(conn: &mut PgConnection) -> QueryResult<()> {
    lock_flavors(conn, "SELECT pg_advisory_xact_lock($1, $2)")
}

/// Takes the flavor-change lock shared until the end of the transaction.
pub fn lock_flavors_shared(conn: &mut PgConnection) -> QueryResult<()> {
    lock_flavors(conn, "SELECT pg_advisory_xact_lock_shared($1, $2)")
}

/// Runs `sql`, a transaction-level advisory lock function, on the flavor-change lock's keys.
fn lock_flavors(conn: &mut PgConnection, sql: &str) -> QueryResult<()> {
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.0)
        .bind::<diesel::sql_types::Integer, _>(FLAVOR_LOCK.1)
        .execute(conn)
        .map(drop)
}

/// Number of `queued` or `in_progress` jobs assigned to each of `names` (absent: none), from
/// the open-job counts the triggers keep (`job_open_delta`), whatever the jobs' age.
pub fn open_job_counts(
    conn: &mut PgConnection,
    names: &[String],
) -> QueryResult<Vec<(String, i64)>> {
    let counts: Vec<Count> = diesel::sql_query(
        "SELECT flavor, sum(delta)::bigint AS n FROM job_open_delta \
         WHERE flavor = ANY($1) GROUP BY flavor HAVING sum(delta) <> 0",
    )
    .bind::<Array<Text>, _>(names)
    .load(conn)?;
    Ok(counts
        .into_iter()
        .map(|count| (count.flavor, count.n))
        .collect())
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
    /// Rows in `job_open_delta` now (the same on every row): when to compact them.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub delta_rows: i64,
}

/// Every flavor with its count of open jobs (`queued` or `in_progress`, created less than
/// `max_age_seconds` ago) and when the oldest of them ages out: everything pressure needs, in
/// one statement whose cost does not grow with the number of open jobs. The count is the sum of
/// the flavor's `job_open_delta` rows (every open job, kept by triggers) less its open jobs past
/// the age limit; those, and the oldest job within it, are two short range scans of
/// `job_open_by_flavor_age` per flavor. (Written with scalar subqueries rather than `LATERAL`
/// joins: the same plan, planned in a fraction of the time, and it is planned on every run.)
pub fn flavor_pressures(
    conn: &mut PgConnection,
    max_age_seconds: f64,
) -> QueryResult<Vec<FlavorPressureRow>> {
    diesel::sql_query(
        "SELECT f.name, f.is_disabled, f.minimum_pressure, \
                (coalesce(c.n, 0) - ( \
                    SELECT count(*) FROM job j \
                    WHERE j.assigned_flavor = f.name AND j.status IN ('queued', 'in_progress') \
                      AND j.created_at <= now() - make_interval(secs => $1) \
                ))::bigint AS open_jobs, \
                (extract(epoch FROM (( \
                    SELECT min(j.created_at) FROM job j \
                    WHERE j.assigned_flavor = f.name AND j.status IN ('queued', 'in_progress') \
                      AND j.created_at > now() - make_interval(secs => $1) \
                ) + make_interval(secs => $1) - now())) * 1000)::float8 AS oldest_expires_in_ms, \
                (SELECT count(*) FROM job_open_delta) AS delta_rows \
         FROM flavor f \
         LEFT JOIN ( \
             SELECT flavor, sum(delta) AS n FROM job_open_delta GROUP BY flavor \
         ) c ON c.flavor = f.name",
    )
    .bind::<diesel::sql_types::Double, _>(max_age_seconds)
    .load(conn)
}

/// Number of rows in `job_open_delta` (what reading the open-job counts scans).
pub fn open_job_delta_rows(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Rows {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM job_open_delta")
        .get_result::<Rows>(conn)
        .map(|rows| rows.n)
}

/// Replaces the `job_open_delta` rows by one row per flavor holding their sum (none where the
/// sum is zero), in one statement, so readers see either the old rows or the new ones. Rows
/// another planner is compacting at the same moment are skipped, not waited for. Returns the
/// number of rows removed.
pub fn compact_open_job_deltas(conn: &mut PgConnection) -> QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Removed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "WITH gone AS ( \
             DELETE FROM job_open_delta WHERE ctid = ANY (ARRAY( \
                 SELECT ctid FROM job_open_delta FOR UPDATE SKIP LOCKED)) \
             RETURNING flavor, delta \
         ), kept AS ( \
             INSERT INTO job_open_delta (flavor, delta) \
             SELECT flavor, sum(delta) FROM gone GROUP BY flavor HAVING sum(delta) <> 0 \
         ) \
         SELECT count(*) AS n FROM gone",
    )
    .get_result::<Removed>(conn)
    .map(|removed| usize::try_from(removed.n).unwrap_or(0))
}

/// A flavor and a count of its jobs, as the recount queries return them.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = Text)]
    flavor: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Open jobs (`queued` or `in_progress`) per flavor created less than `max_age_seconds` ago,
/// counted in the `job` table itself rather than read from the trigger-kept counts: the
/// definition those counts and [`flavor_pressures`] must agree with. Flavors without open jobs
/// are left out.
pub fn open_jobs_from_scratch(
    conn: &mut PgConnection,
    max_age_seconds: f64,
) -> QueryResult<Vec<(String, i64)>> {
    let counts: Vec<Count> = diesel::sql_query(
        "SELECT assigned_flavor AS flavor, count(*) AS n FROM job \
         WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL \
           AND created_at > now() - make_interval(secs => $1) \
         GROUP BY assigned_flavor",
    )
    .bind::<diesel::sql_types::Double, _>(max_age_seconds)
    .load(conn)?;
    Ok(counts.into_iter().map(|c| (c.flavor, c.n)).collect())
}

/// One flavor whose open-job count [`recount_open_jobs`] corrected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountCorrection {
    pub flavor: String,
    /// What the counts said before.
    pub counted: i64,
    /// What the `job` table says.
    pub actual: i64,
}

/// Rebuilds `job_open_delta` from the `job` table, for when the counts can no longer be
/// trusted (jobs written with triggers disabled, a restored dump): one row per flavor with open
/// jobs. Runs in a transaction of its own holding `SHARE ROW EXCLUSIVE` on `job_open_delta`:
/// it waits for every transaction that has written counts (job writers, whose triggers write
/// them at the end of each statement, and compactions) and holds off new ones until it commits,
/// so the recount sees exactly the committed jobs and no count lands beside it; readers go on,
/// and writers wait only at their trigger. It takes no lock on `job` (writers take `job` first,
/// then the counts), so it cannot deadlock with them. Notifies `planner_changes`, so every
/// planner recomputes pressure. Returns the flavors whose count was wrong, by name.
pub fn recount_open_jobs(conn: &mut PgConnection) -> QueryResult<Vec<CountCorrection>> {
    conn.transaction(|conn| {
        diesel::sql_query("LOCK TABLE job_open_delta IN SHARE ROW EXCLUSIVE MODE").execute(conn)?;
        let counted: Vec<Count> = diesel::sql_query(
            "SELECT flavor, sum(delta)::bigint AS n FROM job_open_delta GROUP BY flavor",
        )
        .load(conn)?;
        diesel::sql_query("DELETE FROM job_open_delta").execute(conn)?;
        let actual: Vec<Count> = diesel::sql_query(
            "INSERT INTO job_open_delta (flavor, delta) \
             SELECT assigned_flavor, count(*) FROM job \
             WHERE status IN ('queued', 'in_progress') AND assigned_flavor IS NOT NULL \
             GROUP BY assigned_flavor \
             RETURNING flavor, delta AS n",
        )
        .load(conn)?;
        diesel::sql_query("SELECT pg_notify('planner_changes', 'job_open_delta')").execute(conn)?;
        let mut counts = std::collections::BTreeMap::<String, (i64, i64)>::new();
        for count in counted {
            counts.entry(count.flavor).or_default().0 = count.n;
        }
        for count in actual {
            counts.entry(count.flavor).or_default().1 = count.n;
        }
        Ok(counts
            .into_iter()
            .filter(|(_, (counted, actual))| counted != actual)
            .map(|(flavor, (counted, actual))| CountCorrection {
                flavor,
                counted,
                actual,
            })
            .collect())
    })
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Takes turns on jobs until the end of the transaction: a transaction-level advisory lock per
/// job key (`platform`, `id`), all of them in one statement and in the order of the lock keys,
/// the same for every caller. Whoever applies events to a job holds its turn from reading the
/// row to writing it back, so planners sharing a queue never overwrite each other's changes,
/// and since every transaction takes its turns in the same order, they never deadlock.
pub fn lock_job_keys(conn: &mut PgConnection, keys: &[(&str, i64)]) -> QueryResult<()> {
    let (platforms, ids): (Vec<&str>, Vec<i64>) = keys.iter().copied().unzip();
    diesel::sql_query(
        "SELECT count(pg_advisory_xact_lock(turn.key)) FROM ( \
             SELECT DISTINCT hashtextextended(k.platform || ':' || k.id::text, 0) AS key \
             FROM unnest($1::text[], $2::bigint[]) AS k(platform, id) \
             ORDER BY key \
         ) turn",
    )
    .bind::<Array<Text>, _>(platforms)
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
    .map(drop)
}

/// The jobs of `platform` among `ids`, by id. Read under the jobs' turns
/// ([`lock_job_keys`]), which every writer of a job's state takes, so no row lock is needed.
pub fn get_jobs(conn: &mut PgConnection, platform: &str, ids: &[i64]) -> QueryResult<Vec<Job>> {
    job::table
        .filter(job::platform.eq(platform))
        .filter(job::id.eq_any(ids))
        .order(job::id.asc())
        .select(Job::as_select())
        .load(conn)
}

/// Inserts jobs and, for those that exist, overwrites every column but the key (one
/// statement). `rows` must have distinct keys; in key order, concurrent writers meet in one
/// order.
pub fn upsert_jobs(conn: &mut PgConnection, rows: &[Job]) -> QueryResult<usize> {
    use diesel::upsert::excluded;
    diesel::insert_into(job::table)
        .values(rows)
        .on_conflict((job::platform, job::id))
        .do_update()
        .set((
            job::labels.eq(excluded(job::labels)),
            job::status.eq(excluded(job::status)),
            job::conclusion.eq(excluded(job::conclusion)),
            job::repository.eq(excluded(job::repository)),
            job::run_id.eq(excluded(job::run_id)),
            job::run_attempt.eq(excluded(job::run_attempt)),
            job::workflow_name.eq(excluded(job::workflow_name)),
            job::job_name.eq(excluded(job::job_name)),
            job::runner_name.eq(excluded(job::runner_name)),
            job::created_at.eq(excluded(job::created_at)),
            job::started_at.eq(excluded(job::started_at)),
            job::completed_at.eq(excluded(job::completed_at)),
            job::assigned_flavor.eq(excluded(job::assigned_flavor)),
            job::updated_at.eq(excluded(job::updated_at)),
        ))
        .execute(conn)
}

/// A raw webhook payload to keep: the job, the action, and the body as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPayload<'a> {
    pub platform: &'a str,
    pub job_id: i64,
    pub action: &'a str,
    /// The body as GitHub sent it (JSON text, stored as it is).
    pub payload: &'a str,
}

/// Stores payloads (one statement); one already stored for the same job and action is
/// replaced. `rows` must have distinct (platform, job, action).
pub fn upsert_payloads<'a>(conn: &mut PgConnection, rows: &[NewPayload<'a>]) -> QueryResult<usize> {
    let column = |f: fn(NewPayload<'a>) -> &'a str| rows.iter().copied().map(f).collect::<Vec<_>>();
    diesel::sql_query(
        "INSERT INTO job_payload (platform, job_id, action, payload) \
         SELECT p.platform, p.job_id, p.action, p.payload \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) \
             AS p(platform, job_id, action, payload) \
         ON CONFLICT (platform, job_id, action) DO UPDATE SET payload = excluded.payload",
    )
    .bind::<Array<Text>, _>(column(|row| row.platform))
    .bind::<Array<BigInt>, _>(rows.iter().map(|row| row.job_id).collect::<Vec<i64>>())
    .bind::<Array<Text>, _>(column(|row| row.action))
    .bind::<Array<Text>, _>(column(|row| row.payload))
    .execute(conn)
}

/// Every payload kept for one job, by action: the bodies as GitHub sent them.
pub fn job_payloads(
    conn: &mut PgConnection,
    platform: &str,
    id: i64,
) -> QueryResult<Vec<(String, String)>> {
    Ok(jobs_payloads(conn, platform, &[id])?
        .into_iter()
        .map(|(_, action, payload)| (action, payload))
        .collect())
}

/// Every payload kept for the jobs `ids` of `platform` (one statement): job id, action and
/// payload (the body as GitHub sent it), by job id, then action.
pub fn jobs_payloads(
    conn: &mut PgConnection,
    platform: &str,
    ids: &[i64],
) -> QueryResult<Vec<(i64, String, String)>> {
    job_payload::table
        .filter(job_payload::platform.eq(platform))
        .filter(job_payload::job_id.eq_any(ids))
        .order((job_payload::job_id.asc(), job_payload::action.asc()))
        .select((
            job_payload::job_id,
            job_payload::action,
            job_payload::payload,
        ))
        .load(conn)
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
    pub status: Option<Status>,
    pub flavor: Option<String>,
    pub repository: Option<String>,
    /// Only jobs strictly newer than this `(created_at, id)` (the keyset cursor).
    pub after: Option<(DateTime<Utc>, i64)>,
}

/// Jobs of a platform, oldest first (`created_at`, then `id`, ascending), as Canonical's planner
/// lists them.
pub fn list_jobs(
    conn: &mut PgConnection,
    platform: &str,
    filter: &JobFilter,
    limit: i64,
) -> QueryResult<Vec<Job>> {
    let mut query = job::table
        .filter(job::platform.eq(platform))
        .select(Job::as_select())
        .order((job::created_at.asc(), job::id.asc()))
        .limit(limit)
        .into_boxed();
    if let Some(status) = &filter.status {
        query = query.filter(job::status.eq(*status));
    }
    if let Some(name) = &filter.flavor {
        query = query.filter(job::assigned_flavor.eq(name.clone()));
    }
    if let Some(repository) = &filter.repository {
        query = query.filter(job::repository.eq(repository.clone()));
    }
    if let Some((created_at, id)) = filter.after {
        query = query.filter(
            job::created_at
                .gt(created_at)
                .or(job::created_at.eq(created_at).and(job::id.gt(id))),
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

/// A delivery to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewDelivery<'a> {
    /// `X-GitHub-Delivery`.
    pub id: &'a str,
    pub platform: &'a str,
    pub job_id: i64,
    pub action: &'a str,
}

/// Records deliveries with distinct ids (one statement, in id order, so concurrent writers meet
/// in one order); answers, for each id, how many times it had been seen before (0: first time).
pub fn record_deliveries<'a>(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery<'a>],
) -> QueryResult<Vec<(String, i32)>> {
    #[derive(QueryableByName)]
    struct Seen {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        duplicates: i32,
    }
    let column =
        |f: fn(NewDelivery<'a>) -> &'a str| deliveries.iter().copied().map(f).collect::<Vec<_>>();
    let seen: Vec<Seen> = diesel::sql_query(
        "INSERT INTO delivery (id, job_platform, job_id, action) \
         SELECT d.id, d.platform, d.job_id, d.action \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) \
             AS d(id, platform, job_id, action) \
         ORDER BY d.id \
         ON CONFLICT (id) DO UPDATE \
             SET duplicates = delivery.duplicates + 1, last_seen_at = now() \
         RETURNING id, duplicates",
    )
    .bind::<Array<Text>, _>(column(|d| d.id))
    .bind::<Array<Text>, _>(column(|d| d.platform))
    .bind::<Array<BigInt>, _>(deliveries.iter().map(|d| d.job_id).collect::<Vec<i64>>())
    .bind::<Array<Text>, _>(column(|d| d.action))
    .load(conn)?;
    Ok(seen.into_iter().map(|s| (s.id, s.duplicates)).collect())
}

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

/// The name of the token whose SHA-256 is one of `hashes`, if any (a token has one hash in
/// each of the forms the planner has stored over time).
pub fn token_name_by_any_hash(
    conn: &mut PgConnection,
    hashes: &[&[u8]],
) -> QueryResult<Option<String>> {
    auth::table
        .filter(auth::token_sha256.eq_any(hashes))
        .select(auth::name)
        .first(conn)
        .optional()
}

/// One job claimed by [`claim_due_jobs`] for a check with GitHub.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    /// `job.platform`.
    #[diesel(sql_type = Text)]
    pub platform: String,
    /// `job.id`.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// `job.repository`.
    #[diesel(sql_type = Text)]
    pub repository: String,
    /// `job.created_at`.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// `reconciled_at` before the claim, restored when the check fails.
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    pub previous: Option<DateTime<Utc>>,
}

/// Reconciliation: claims up to `batch` open jobs of `platform` without news for `after`,
/// most overdue first, stamping `reconciled_at = now()` (`FOR UPDATE SKIP LOCKED`: concurrent
/// claims take disjoint jobs).
pub fn claim_due_jobs(
    conn: &mut PgConnection,
    platform: &str,
    after: std::time::Duration,
    batch: u32,
) -> QueryResult<Vec<Claimed>> {
    let mut claimed: Vec<Claimed> = diesel::sql_query(
        "WITH due AS ( \
             SELECT platform, id, reconciled_at AS previous FROM job \
             WHERE platform = $1 AND status <> 'completed' \
               AND COALESCE(reconciled_at, created_at) < now() - make_interval(secs => $2) \
             ORDER BY COALESCE(reconciled_at, created_at), id \
             LIMIT $3 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE job SET reconciled_at = now() FROM due \
         WHERE job.platform = due.platform AND job.id = due.id \
         RETURNING job.platform, job.id, job.repository, job.created_at, due.previous",
    )
    .bind::<Text, _>(platform)
    .bind::<diesel::sql_types::Double, _>(after.as_secs_f64())
    .bind::<BigInt, _>(i64::from(batch))
    .load(conn)?;
    claimed.sort_by_key(|job| (job.previous.unwrap_or(job.created_at), job.id));
    Ok(claimed)
}

/// Gives a job claimed by [`claim_due_jobs`] back (its check failed): due again at once.
pub fn release_claimed_job(conn: &mut PgConnection, job: &Claimed) -> QueryResult<()> {
    diesel::sql_query("UPDATE job SET reconciled_at = $3 WHERE platform = $1 AND id = $2")
        .bind::<Text, _>(&job.platform)
        .bind::<BigInt, _>(job.id)
        .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(job.previous)
        .execute(conn)
        .map(drop)
}
