//! The job store: the database side of the consumer and of flavor changes.
//!
//! [`JobStore`] is an actor on a `SyncArbiter` (diesel is blocking) that applies batches of
//! deliveries. The functions below are what it and the routes run inside transactions.
//!
//! Concurrency: job events take the flavor lock shared, flavor changes exclusively, so a flavor
//! re-match sees every committed job and every job event sees every committed flavor. Whoever
//! changes a job's state (a batch of deliveries, reconciliation) first takes the job's turn, a
//! transaction-level advisory lock per job taken in one global order
//! ([`queries::lock_job_keys`]): between reading the row and writing it back nobody else can
//! change it, so planners sharing a queue (and a planner's own concurrent batches) serialise on
//! each job, converge to the same row, and never deadlock.

use std::collections::{hash_map::Entry, BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use actix::{Actor, Handler, SyncContext};
use chrono::{DateTime, Utc};
use diesel::{
    pg::PgConnection,
    r2d2::{ConnectionManager, Pool},
    result::Error as DieselError,
    Connection, QueryResult, RunQueryDsl,
};
use schema::{
    models::{Flavor, FlavorChanges, Job, NewFlavor},
    queries::{self, NewDelivery, NewPayload},
};

use crate::{
    domain::{
        job::{Apply, JobEvent, JobState, Status},
        labels::IgnoredLabels,
        matching::{self, FlavorSpec},
    },
    messages::{ApplyBatch, Outcome, StoreError},
    metrics::{JobTimes, Metrics},
    pressure::formula,
};

/// The r2d2 pool of PostgreSQL connections.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// How long a request or the consumer waits for a pooled connection by default.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the pool without connecting: the first checkout connects, so a database that is
/// down at start-up delays work rather than preventing it.
/// `checkout_timeout` bounds how long a request or the consumer waits for a connection.
pub fn build_pool(database_url: &str, size: u32, checkout_timeout: Duration) -> PgPool {
    build_pool_via(database_url, size, checkout_timeout, false)
}

/// [`build_pool`]; with `pgbouncer` (`APP_DB_PGBOUNCER`), each connection has diesel's
/// statement cache off: no named prepared statement, which a transaction pooler would hand to
/// another client's server connection. Every statement is then sent with its parameters in one
/// message (libpq's `PQsendQueryParams`), as a pooler in transaction mode can take it. (The rest
/// of the planner already suits such a pooler: its locks are transaction-level, its settings
/// `SET LOCAL`, and its `LISTEN` is on a connection of its own.)
pub fn build_pool_via(
    database_url: &str,
    size: u32,
    checkout_timeout: Duration,
    pgbouncer: bool,
) -> PgPool {
    let mut builder = Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(checkout_timeout);
    if pgbouncer {
        builder = builder.connection_customizer(Box::new(NoStatementCache));
    }
    builder.build_unchecked(ConnectionManager::new(database_url))
}

/// Turns diesel's prepared-statement cache off on each new pooled connection.
#[derive(Debug)]
struct NoStatementCache;

impl r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for NoStatementCache {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        Ok(())
    }
}

/// Why database work run off the async workers by [`blocking`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// No pooled connection within the checkout timeout.
    #[error("no database connection: {0}")]
    Checkout(#[from] diesel::r2d2::PoolError),
    /// The work's statements failed.
    #[error("database: {0}")]
    Query(#[from] DieselError),
    /// actix's blocking pool did not run it (shutting down).
    #[error("blocking pool: {0}")]
    Pool(#[from] actix_web::error::BlockingError),
}

/// Runs `work` on a pooled connection in actix's blocking pool, off the async workers (the
/// tasks beside the request path; the routes have their own, answering with their error).
pub async fn blocking<T: Send + 'static>(
    pool: &PgPool,
    work: impl FnOnce(&mut PgConnection) -> QueryResult<T> + Send + 'static,
) -> Result<T, BlockingError> {
    let pool = pool.clone();
    actix_web::web::block(move || {
        let mut conn = pool.get()?;
        Ok(work(&mut conn)?)
    })
    .await?
}

/// The job-store actor. Start it with `SyncArbiter::start(n, ...)`.
pub struct JobStore {
    pool: PgPool,
    ignored: IgnoredLabels,
    metrics: Option<Metrics>,
}

impl JobStore {
    /// A store over `pool`, matching with `ignored` labels left out.
    pub fn new(pool: PgPool, ignored: IgnoredLabels) -> Self {
        Self {
            pool,
            ignored,
            metrics: None,
        }
    }

    /// Records job waiting and running times, and whether PostgreSQL answers, in `metrics`
    /// (after each commit, so a retried batch is never counted twice).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether PostgreSQL answers right now.
    fn database_answers(&self) -> bool {
        self.pool
            .get()
            .ok()
            .is_some_and(|mut conn| diesel::sql_query("SELECT 1").execute(&mut conn).is_ok())
    }
}

impl Actor for JobStore {
    type Context = SyncContext<Self>;
}

impl Handler<ApplyBatch> for JobStore {
    type Result = Result<Vec<Outcome>, StoreError>;

    fn handle(&mut self, batch: ApplyBatch, _: &mut Self::Context) -> Self::Result {
        let reachable = |up: bool| {
            if let Some(metrics) = &self.metrics {
                metrics.database_reachable.set(i64::from(up));
            }
        };
        let mut conn = self.pool.get().map_err(|err| {
            reachable(false);
            StoreError::Unavailable(err.to_string())
        })?;
        match apply_batch_timed(&mut conn, &self.ignored, &batch.0) {
            Ok((outcomes, times)) => {
                reachable(true);
                if let Some(metrics) = &self.metrics {
                    times.iter().for_each(|t| metrics.record_job_times(t));
                }
                Ok(outcomes)
            }
            Err(err) => {
                drop(conn);
                // A failed statement says little about why; asking the database tells an
                // outage (retry forever, nothing is lost) from a refusal (retry a few times,
                // then give up).
                let answers = self.database_answers();
                reachable(answers);
                Err(if answers {
                    StoreError::Refused(err.to_string())
                } else {
                    StoreError::Unavailable(err.to_string())
                })
            }
        }
    }
}

/// Applies deliveries in one transaction; see [`ApplyBatch`].
pub fn apply_batch(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    batch: &[(String, JobEvent)],
) -> QueryResult<Vec<Outcome>> {
    apply_batch_timed(conn, ignored, batch).map(|(outcomes, _)| outcomes)
}

/// [`apply_batch`], also answering the waiting and running times of the jobs the transaction
/// moved to started or completed (valid once it has committed, which it has when this returns).
///
/// A handful of statements whatever the batch's size: the flavor lock (shared), the jobs' turns
/// ([`queries::lock_job_keys`]), the deliveries (duplicates are counted, not applied), the rows of
/// the jobs that exist, then one upsert of every job's new state and one insert of the
/// payloads. Each job's events are folded onto its row in arrival order; a new job is matched to
/// a flavor once, with the jobs matched earlier in the batch counted in the tie-break.
pub fn apply_batch_timed(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    batch: &[(String, JobEvent)],
) -> QueryResult<(Vec<Outcome>, Vec<JobTimes>)> {
    conn.transaction::<_, DieselError, _>(|conn| {
        queries::plan_for_actual_parameters(conn)?;
        queries::lock_flavors_shared(conn)?;
        let keys: BTreeSet<(&str, i64)> = batch
            .iter()
            .map(|(_, event)| (event.job.platform.as_str(), event.job.id))
            .collect();
        queries::lock_job_keys(conn, &keys.iter().copied().collect::<Vec<_>>())?;
        let outcomes = record_deliveries(conn, batch)?;

        // What to apply, by job in key order; each job's events in arrival order.
        let mut jobs: BTreeMap<(&str, i64), Vec<&JobEvent>> = BTreeMap::new();
        for ((_, event), outcome) in batch.iter().zip(&outcomes) {
            if *outcome == Outcome::Applied {
                jobs.entry((event.job.platform.as_str(), event.job.id))
                    .or_default()
                    .push(event);
            }
        }
        let mut existing: HashMap<(String, i64), Job> = HashMap::new();
        let mut by_platform: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (platform, id) in jobs.keys() {
            by_platform.entry(platform).or_default().push(*id);
        }
        for (platform, ids) in &by_platform {
            for row in queries::get_jobs(conn, platform, ids)? {
                existing.insert((row.state.platform.clone(), row.state.id), row);
            }
        }

        let mut flavors: HashMap<&str, Vec<FlavorSpec>> = HashMap::new();
        // New open jobs matched to each flavor in this batch, not in the database yet: ties
        // between flavors see them. (Existing jobs that open or close in this batch are not
        // counted until it commits; a tie-break is a preference, not a count.)
        let mut matched: HashMap<String, i64> = HashMap::new();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut times = Vec::new();
        for ((platform, id), events) in &jobs {
            let (state, assigned, before) = match existing.remove(&(platform.to_string(), *id)) {
                Some(row) => {
                    let before = (row.state.started_at, row.state.completed_at);
                    let mut state = row.state;
                    events.iter().for_each(|event| state.apply(event));
                    (state, row.assigned_flavor, before)
                }
                None => {
                    let mut state = events[0].job.clone();
                    events[1..].iter().for_each(|event| state.apply(event));
                    let specs = match flavors.entry(platform) {
                        Entry::Occupied(specs) => specs.into_mut(),
                        Entry::Vacant(slot) => slot.insert(flavor_specs(
                            queries::list_platform_flavors(conn, platform)?,
                        )),
                    };
                    let labels = ignored.matching_labels(&state.labels);
                    let assigned = matching::select_flavor(&labels, specs, |tied| {
                        pressures(conn, tied, &matched)
                    })?;
                    if let Some(flavor) = &assigned {
                        if state.status.is_open() {
                            *matched.entry(flavor.clone()).or_default() += 1;
                        }
                    }
                    (state, assigned, (None, None))
                }
            };
            times.extend(job_times(before.0, before.1, &state, assigned.clone()));
            rows.push(Job {
                state,
                assigned_flavor: assigned,
                updated_at: Utc::now(),
            });
        }
        if !rows.is_empty() {
            queries::upsert_jobs(conn, &rows)?;
        }

        // The last payload of each job and action, as a sequence of single deliveries would
        // leave it.
        let mut payloads: BTreeMap<(&str, i64, &str), &str> = BTreeMap::new();
        for event in jobs.values().flatten() {
            payloads.insert(
                (
                    event.job.platform.as_str(),
                    event.job.id,
                    event.action().as_str(),
                ),
                &event.payload,
            );
        }
        let payloads: Vec<NewPayload<'_>> = payloads
            .into_iter()
            .map(|((platform, job_id, action), payload)| NewPayload {
                platform,
                job_id,
                action,
                payload,
            })
            .collect();
        if !payloads.is_empty() {
            queries::upsert_payloads(conn, &payloads)?;
        }
        Ok((outcomes, times))
    })
}

/// Records the batch's deliveries; the outcome of each: `Duplicate` when its id was seen before
/// (in an earlier transaction, or earlier in this batch), else `Applied`.
fn record_deliveries(
    conn: &mut PgConnection,
    batch: &[(String, JobEvent)],
) -> QueryResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; batch.len()];
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut repeated = Vec::new();
    for (index, (delivery, _)) in batch.iter().enumerate() {
        match first.entry(delivery.as_str()) {
            std::collections::btree_map::Entry::Occupied(_) => {
                outcomes[index] = Outcome::Duplicate;
                repeated.push(index);
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
    }
    let deliveries: Vec<NewDelivery<'_>> = first
        .iter()
        .map(|(id, &index)| {
            let event = &batch[index].1;
            NewDelivery {
                id,
                platform: &event.job.platform,
                job_id: event.job.id,
                action: event.action().as_str(),
            }
        })
        .collect();
    for (id, seen) in queries::record_deliveries(conn, &deliveries)? {
        if seen > 0 {
            if let Some(&index) = first.get(id.as_str()) {
                outcomes[index] = Outcome::Duplicate;
            }
        }
    }
    // The same id twice in one batch (rare): each repeat is counted as a duplicate too.
    for index in repeated {
        let (delivery, event) = &batch[index];
        queries::record_delivery(
            conn,
            delivery,
            &event.job.platform,
            event.job.id,
            event.action().as_str(),
        )?;
    }
    Ok(outcomes)
}

/// The times to record when `state` (after an event) is started or completed and was not
/// before: waiting = created to started, running = started to completed (never negative).
fn job_times(
    started_before: Option<chrono::DateTime<Utc>>,
    completed_before: Option<chrono::DateTime<Utc>>,
    state: &JobState,
    flavor: Option<String>,
) -> Option<JobTimes> {
    let seconds = |from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>| {
        ((to - from).num_milliseconds().max(0) as f64) / 1000.0
    };
    let waiting = match (started_before, state.started_at) {
        (None, Some(started)) => Some(seconds(state.created_at, started)),
        _ => None,
    };
    let running = match (completed_before, state.started_at, state.completed_at) {
        (None, Some(started), Some(completed)) => Some(seconds(started, completed)),
        _ => None,
    };
    (waiting.is_some() || running.is_some()).then_some(JobTimes {
        platform: state.platform.clone(),
        repository: state.repository.clone(),
        flavor,
        waiting,
        running,
    })
}

/// The flavor a job with `matching_labels` gets now (pressure breaks ties).
pub fn match_flavor(
    conn: &mut PgConnection,
    flavors: &[FlavorSpec],
    matching_labels: &[String],
) -> QueryResult<Option<String>> {
    matching::select_flavor(matching_labels, flavors, |tied| {
        pressures(conn, tied, &HashMap::new())
    })
}

/// Matching's tie-break: the pressure of each flavor ([`crate::pressure::formula`]) counting
/// all its open jobs (the trigger-kept counts, no age limit: the formula's module says why),
/// plus `pending` ones not written yet.
pub fn pressures(
    conn: &mut PgConnection,
    flavors: &[&FlavorSpec],
    pending: &HashMap<String, i64>,
) -> QueryResult<Vec<(String, i64)>> {
    let names: Vec<String> = flavors.iter().map(|flavor| flavor.name.clone()).collect();
    let counts = queries::open_job_counts(conn, &names)?;
    Ok(flavors
        .iter()
        .map(|flavor| {
            let open = counts
                .iter()
                .find(|(name, _)| *name == flavor.name)
                .map_or(0, |(_, count)| *count)
                + pending.get(&flavor.name).copied().unwrap_or(0);
            let pressure = formula::pressure(flavor.minimum_pressure, flavor.is_disabled, open);
            (
                flavor.name.clone(),
                i64::try_from(pressure).unwrap_or(i64::MAX),
            )
        })
        .collect())
}

/// Re-matches every not-started job of `platform`; returns how many changed flavor.
pub fn rematch(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    platform: &str,
) -> QueryResult<usize> {
    let specs = flavor_specs(queries::list_platform_flavors(conn, platform)?);
    let mut changed = 0;
    for labels in queries::not_started_label_sets(conn, platform)? {
        let chosen = match_flavor(conn, &specs, &ignored.matching_labels(&labels))?;
        changed += queries::reassign_not_started(conn, platform, &labels, chosen.as_deref())?;
    }
    Ok(changed)
}

/// Creates a flavor and re-matches waiting work; `None` if the name is taken.
pub fn create_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    new: &NewFlavor,
) -> QueryResult<Option<Flavor>> {
    change_flavor(conn, ignored, |conn| queries::insert_flavor(conn, new))
}

/// Changes a flavor and re-matches waiting work; `None` if there is no such flavor.
pub fn update_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    name: &str,
    changes: &FlavorChanges,
) -> QueryResult<Option<Flavor>> {
    change_flavor(conn, ignored, |conn| {
        queries::update_flavor(conn, name, changes)
    })
}

/// Deletes a flavor and re-matches waiting work; `None` if there is no such flavor. Started
/// and completed jobs keep the flavor's name.
pub fn delete_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    name: &str,
) -> QueryResult<Option<Flavor>> {
    change_flavor(conn, ignored, |conn| queries::delete_flavor(conn, name))
}

/// Makes `change` to the flavors under the flavor-change lock, then re-matches the waiting work
/// of the changed flavor's platform; `None`, and nothing re-matched, when `change` found nothing
/// to change.
fn change_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    change: impl FnOnce(&mut PgConnection) -> QueryResult<Option<Flavor>>,
) -> QueryResult<Option<Flavor>> {
    conn.transaction(|conn| {
        queries::lock_flavors_exclusive(conn)?;
        let Some(flavor) = change(conn)? else {
            return Ok(None);
        };
        rematch(conn, ignored, &flavor.platform)?;
        Ok(Some(flavor))
    })
}

/// The times `PATCH /api/v1/jobs/{platform}/{id}` sets; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTimesChange {
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Why [`set_job_times`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SetTimesError {
    /// No such job.
    #[error("no such job")]
    NotFound,
    /// The named time is set already: each is set once.
    #[error("{0} is already set")]
    AlreadySet(&'static str),
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Sets a job's start and completion times, each only when it is not set yet (all or nothing:
/// when one is set already, neither changes). The status follows the times, as after the
/// deliveries that carry them: a start makes a job that had not started `in_progress`, a
/// completion makes it `completed` (it stops counting towards pressure). The payloads are left
/// as they are. Takes the same locks, in the same order, as a delivery of the job.
pub fn set_job_times(
    conn: &mut PgConnection,
    platform: &str,
    id: i64,
    change: JobTimesChange,
) -> Result<(), SetTimesError> {
    conn.transaction(|conn| {
        queries::lock_flavors_shared(conn)?;
        queries::lock_job_keys(conn, &[(platform, id)])?;
        let mut row = queries::get_job(conn, platform, id)?.ok_or(SetTimesError::NotFound)?;
        if change.started_at.is_some() && row.state.started_at.is_some() {
            return Err(SetTimesError::AlreadySet("started_at"));
        }
        if change.completed_at.is_some() && row.state.completed_at.is_some() {
            return Err(SetTimesError::AlreadySet("completed_at"));
        }
        if change == JobTimesChange::default() {
            return Ok(());
        }
        let state = &mut row.state;
        if let Some(started_at) = change.started_at {
            state.started_at = Some(started_at);
            if state.status.is_not_started() {
                state.status = Status::InProgress;
            }
        }
        if let Some(completed_at) = change.completed_at {
            state.completed_at = Some(completed_at);
            state.status = Status::Completed;
        }
        row.updated_at = Utc::now();
        queries::upsert_jobs(conn, &[row])?;
        Ok(())
    })
}

/// What matching needs of each flavor.
pub fn flavor_specs(flavors: Vec<Flavor>) -> Vec<FlavorSpec> {
    flavors
        .into_iter()
        .map(|flavor| FlavorSpec {
            name: flavor.name,
            labels: flavor.labels,
            priority: flavor.priority,
            is_disabled: flavor.is_disabled,
            minimum_pressure: flavor.minimum_pressure,
        })
        .collect()
}

/// Reconciliation: completes a job with `event` (built from GitHub's answer) unless it
/// completed meanwhile, taking the locks a webhook takes; `true` when applied.
pub fn complete_reconciled(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    event: JobEvent,
) -> QueryResult<bool> {
    conn.transaction(|conn| {
        // The same lock order as a webhook: flavor lock shared, then the job's turn, which
        // every writer of the job takes: the row read here stays as it is until the commit.
        queries::lock_flavors_shared(conn)?;
        queries::lock_job_keys(conn, &[(&event.job.platform, event.job.id)])?;
        let Some(row) = queries::get_job(conn, &event.job.platform, event.job.id)? else {
            return Ok(false);
        };
        if row.state.status == Status::Completed {
            return Ok(false);
        }
        let delivery = format!("planner-reconcile:{}:{}", event.job.platform, event.job.id);
        let mut event = event;
        // The job keeps the labels, repository and creation time it was matched with.
        event.job.labels = row.state.labels;
        event.job.repository = row.state.repository;
        event.job.created_at = row.state.created_at;
        let outcomes = apply_batch(conn, ignored, &[(delivery, event)])?;
        Ok(outcomes.first() == Some(&Outcome::Applied))
    })
}
