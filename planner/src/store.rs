//! The job store: the database side of the consumer and of flavor changes.
//!
//! [`JobStore`] is an actor on a `SyncArbiter` (diesel is blocking) that applies batches of
//! deliveries. The functions below are what it and the routes run inside transactions.
//!
//! Concurrency: job events take the flavor lock shared, flavor changes exclusively, so a flavor
//! re-match sees every committed job and every job event sees every committed flavor. A job row
//! is created with `INSERT ... ON CONFLICT DO NOTHING` and then changed under `SELECT ... FOR
//! UPDATE`, so planners sharing a queue serialise on each job and converge to the same row.

use std::time::Duration;

use actix::{Actor, Handler, SyncContext};
use chrono::Utc;
use diesel::{
    pg::PgConnection,
    r2d2::{ConnectionManager, Pool},
    result::Error as DieselError,
    Connection, QueryResult, RunQueryDsl,
};
use schema::{
    models::{Flavor, FlavorChanges, Job, NewFlavor},
    queries,
};

use crate::{
    domain::{
        job::{JobEvent, JobState},
        labels::IgnoredLabels,
        matching::{self, FlavorSpec},
    },
    messages::{ApplyBatch, Outcome, StoreError},
    metrics::{JobTimes, Metrics},
};

/// The r2d2 pool of PostgreSQL connections.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// How long a request or the consumer waits for a pooled connection by default.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the pool without connecting: the first checkout connects, so a database that is
/// down at start-up delays work rather than preventing it.
/// `checkout_timeout` bounds how long a request or the consumer waits for a connection.
pub fn build_pool(database_url: &str, size: u32, checkout_timeout: Duration) -> PgPool {
    Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(checkout_timeout)
        .build_unchecked(ConnectionManager::new(database_url))
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
pub fn apply_batch_timed(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    batch: &[(String, JobEvent)],
) -> QueryResult<(Vec<Outcome>, Vec<JobTimes>)> {
    let mut times = Vec::new();
    let outcomes = conn.transaction::<_, DieselError, _>(|conn| {
        times.clear();
        queries::lock_flavors_shared(conn)?;
        // Lock rows in one order (by job) so that two planners never deadlock; the sort is
        // stable, so deliveries of one job keep their arrival order.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&batch[a].1, &batch[b].1);
            (&a.platform, a.id).cmp(&(&b.platform, b.id))
        });
        let mut flavors: Option<(String, Vec<FlavorSpec>)> = None;
        let mut outcomes = vec![Outcome::Applied; batch.len()];
        for index in order {
            let (delivery, event) = &batch[index];
            let seen = queries::record_delivery(
                conn,
                delivery,
                &event.platform,
                event.id,
                event.action.as_str(),
            )?;
            if seen > 0 {
                outcomes[index] = Outcome::Duplicate;
                continue;
            }
            times.extend(apply_event(conn, ignored, &mut flavors, event)?);
        }
        Ok(outcomes)
    })?;
    Ok((outcomes, times))
}

fn apply_event(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    flavors: &mut Option<(String, Vec<FlavorSpec>)>,
    event: &JobEvent,
) -> QueryResult<Option<JobTimes>> {
    if let Some(current) = queries::lock_job(conn, &event.platform, event.id)? {
        return update_existing(conn, current, event);
    }
    let specs = match flavors {
        Some((platform, specs)) if *platform == event.platform => specs,
        _ => {
            let specs = flavor_specs(queries::list_platform_flavors(conn, &event.platform)?);
            &mut flavors.insert((event.platform.clone(), specs)).1
        }
    };
    let state = JobState::new(event);
    let assigned = match_flavor(conn, specs, &ignored.matching_labels(&state.labels))?;
    if queries::insert_job_if_absent(conn, &to_row(&state, assigned.clone()))? {
        return Ok(job_times(None, None, &state, assigned));
    }
    // Another planner inserted it first; its transaction has committed, so the row is there.
    let current =
        queries::lock_job(conn, &event.platform, event.id)?.ok_or(DieselError::NotFound)?;
    update_existing(conn, current, event)
}

fn update_existing(
    conn: &mut PgConnection,
    current: Job,
    event: &JobEvent,
) -> QueryResult<Option<JobTimes>> {
    let assigned = current.assigned_flavor.clone();
    let (started_before, completed_before) = (current.started_at, current.completed_at);
    let mut state = from_row(current)?;
    state.apply(event);
    queries::update_job(conn, &to_row(&state, assigned.clone()))?;
    Ok(job_times(
        started_before,
        completed_before,
        &state,
        assigned,
    ))
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
    matching::select_flavor(matching_labels, flavors, |tied| pressures(conn, tied))
}

/// Current pressure of each flavor: its open (`queued` or `in_progress`) jobs, at least its
/// minimum pressure.
pub fn pressures(
    conn: &mut PgConnection,
    flavors: &[&FlavorSpec],
) -> QueryResult<Vec<(String, i64)>> {
    let names: Vec<String> = flavors.iter().map(|flavor| flavor.name.clone()).collect();
    let counts = queries::open_job_counts(conn, &names)?;
    Ok(flavors
        .iter()
        .map(|flavor| {
            let open = counts
                .iter()
                .find(|(name, _)| *name == flavor.name)
                .map_or(0, |(_, count)| *count);
            (
                flavor.name.clone(),
                open.max(i64::from(flavor.minimum_pressure)),
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

/// Creates a flavor and re-matches waiting work; `false` if the name is taken.
pub fn create_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    new: &NewFlavor,
) -> QueryResult<bool> {
    conn.transaction(|conn| {
        queries::lock_flavors_exclusive(conn)?;
        if !queries::insert_flavor(conn, new)? {
            return Ok(false);
        }
        rematch(conn, ignored, &new.platform)?;
        Ok(true)
    })
}

/// Changes a flavor and re-matches waiting work; `None` if there is no such flavor.
pub fn update_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    name: &str,
    changes: &FlavorChanges,
) -> QueryResult<Option<Flavor>> {
    conn.transaction(|conn| {
        queries::lock_flavors_exclusive(conn)?;
        let Some(flavor) = queries::update_flavor(conn, name, changes)? else {
            return Ok(None);
        };
        rematch(conn, ignored, &flavor.platform)?;
        Ok(Some(flavor))
    })
}

/// Deletes a flavor and re-matches waiting work; `None` if there is no such flavor. Started
/// and completed jobs keep the flavor's name.
pub fn delete_flavor(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    name: &str,
) -> QueryResult<Option<Flavor>> {
    conn.transaction(|conn| {
        queries::lock_flavors_exclusive(conn)?;
        let Some(flavor) = queries::delete_flavor(conn, name)? else {
            return Ok(None);
        };
        rematch(conn, ignored, &flavor.platform)?;
        Ok(Some(flavor))
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

fn to_row(state: &JobState, assigned_flavor: Option<String>) -> Job {
    Job {
        platform: state.platform.clone(),
        id: state.id,
        labels: state.labels.clone(),
        status: state.status.as_str().to_owned(),
        conclusion: state.conclusion.clone(),
        repository: state.repository.clone(),
        run_id: state.run_id,
        run_attempt: state.run_attempt,
        workflow_name: state.workflow_name.clone(),
        job_name: state.job_name.clone(),
        runner_name: state.runner_name.clone(),
        created_at: state.created_at,
        started_at: state.started_at,
        completed_at: state.completed_at,
        assigned_flavor,
        payloads: state.payloads.clone(),
        updated_at: Utc::now(),
    }
}

fn from_row(row: Job) -> QueryResult<JobState> {
    let status = row
        .status
        .parse()
        .map_err(|err| DieselError::DeserializationError(Box::new(err)))?;
    Ok(JobState {
        platform: row.platform,
        id: row.id,
        labels: row.labels,
        status,
        conclusion: row.conclusion,
        repository: row.repository,
        run_id: row.run_id,
        run_attempt: row.run_attempt,
        workflow_name: row.workflow_name,
        job_name: row.job_name,
        runner_name: row.runner_name,
        created_at: row.created_at,
        started_at: row.started_at,
        completed_at: row.completed_at,
        payloads: row.payloads,
    })
}
