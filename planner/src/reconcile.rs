//! Reconciliation with GitHub's API: a job whose `completed` webhook was lost must not hold
//! pressure forever.
//!
//! Every `APP_RECONCILE_INTERVAL` (default 1 min) a round claims at most `APP_RECONCILE_BATCH`
//! (default 50) open jobs (`queued`, `waiting`, `in_progress`) that have gone
//! `APP_RECONCILE_AFTER` (default 15 min) without news: open that long since creation and not
//! checked within that time. Most overdue first: ordered by when they were last checked, or
//! created when never. Each is looked up with `GET /repos/{owner}/{repo}/actions/jobs/{id}`:
//!
//! - `completed` on GitHub: completed here through the job state machine, as if its
//!   `completed` webhook had arrived (a synthetic delivery `planner-reconcile:github:{id}`, the
//!   GitHub job under `payloads.completed.workflow_job`, `planner_reconciled: "github_api"`).
//!   A late real webhook still applies on top and wins, as any `completed` delivery does.
//! - still open on GitHub: stays; it is checked again `APP_RECONCILE_AFTER` later.
//! - 404: the job (or its repository) is gone. Completed with conclusion
//!   [`NOT_FOUND_CONCLUSION`] (`not_found_on_github`) and `completed_at` = now. The App's
//!   installation must be able to read Actions on every repository whose jobs the planner sees,
//!   or their jobs are taken for gone.
//! - 5xx, timeouts, other failures: left open and unchecked, so the next round tries again.
//! - a rate limit or a refusal (401/403): the round stops; the rest of the batch waits for a
//!   later round. The shared [`actors::github::Client`] refuses to send anything while a limit holds.
//!
//! Several planners: the claim is one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`
//! that stamps `reconciled_at`, so concurrent rounds take disjoint jobs and a job claimed by one
//! planner is not due for the others. Completing takes the same locks as a webhook (flavor lock
//! shared, then the job row) and skips a job that completed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, WrapFuture};
use actors::github::GitHubError;
use chrono::{DateTime, Utc};
use diesel::{
    sql_types::{BigInt, Double, Nullable, Text, Timestamptz},
    Connection, PgConnection, QueryResult, QueryableByName, RunQueryDsl,
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use schema::queries;
use serde_json::{json, Value};

use crate::{
    domain::{
        job::{JobEvent, Status},
        labels::IgnoredLabels,
        webhook::GITHUB,
    },
    messages::Outcome,
    store::{apply_batch, PgPool},
};

/// Conclusion given to a job GitHub answers 404 for.
pub const NOT_FOUND_CONCLUSION: &str = "not_found_on_github";
/// Default of `APP_RECONCILE_AFTER`.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(15 * 60);
/// Default of `APP_RECONCILE_INTERVAL`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `APP_RECONCILE_BATCH`.
pub const DEFAULT_BATCH: u32 = 50;

/// Settings of reconciliation (used only when a GitHub App is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// `APP_RECONCILE_AFTER` (default 15 min): how long a job goes without news before it is
    /// checked, and between two checks of a job that stays open.
    pub after: Duration,
    /// `APP_RECONCILE_INTERVAL` (default 1 min): time between rounds.
    pub interval: Duration,
    /// `APP_RECONCILE_BATCH` (default 50, at most 1000): jobs checked per round at most.
    pub batch: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            after: DEFAULT_AFTER,
            interval: DEFAULT_INTERVAL,
            batch: DEFAULT_BATCH,
        }
    }
}

impl ReconcileConfig {
    /// Reads `APP_RECONCILE_AFTER`, `APP_RECONCILE_INTERVAL` and `APP_RECONCILE_BATCH`.
    pub fn from_source(
        source: &dyn actors::config::Source,
    ) -> Result<Self, actors::config::ConfigError> {
        use actors::config::{duration, parsed};
        Ok(Self {
            after: parsed(source, "APP_RECONCILE_AFTER", DEFAULT_AFTER, duration)?,
            interval: parsed(source, "APP_RECONCILE_INTERVAL", DEFAULT_INTERVAL, duration)?,
            batch: parsed(
                source,
                "APP_RECONCILE_BATCH",
                DEFAULT_BATCH,
                |v| match v.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => Ok(n),
                    _ => Err("must be a whole number between 1 and 1000".to_owned()),
                },
            )?,
        })
    }
}

/// Reconciliation counters. Created unregistered; [`ReconcileMetrics::register`] adds them to
/// the planner's registry.
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// `github_runner_planner_reconcile_checked_total`: jobs GitHub answered about (200 or 404).
    pub checked: IntCounter,
    /// `github_runner_planner_reconcile_corrected_total{reason}`: jobs completed here by
    /// reconciliation; `reason` is `completed` (GitHub says so) or `not_found` (404).
    pub corrected: IntCounterVec,
    /// `github_runner_planner_reconcile_errors_total`: lookups that failed (5xx, timeout,
    /// rate limit, refusal) and were left for a later round.
    pub errors: IntCounter,
}

impl ReconcileMetrics {
    /// New counters, at zero.
    pub fn new() -> prometheus::Result<Self> {
        let corrected = IntCounterVec::new(
            Opts::new(
                "github_runner_planner_reconcile_corrected_total",
                "Open jobs completed by reconciliation with GitHub's API, by reason.",
            ),
            &["reason"],
        )?;
        for reason in ["completed", "not_found"] {
            corrected.with_label_values(&[reason]);
        }
        Ok(Self {
            checked: IntCounter::new(
                "github_runner_planner_reconcile_checked_total",
                "Open jobs looked up on GitHub's API (answered 200 or 404).",
            )?,
            corrected,
            errors: IntCounter::new(
                "github_runner_planner_reconcile_errors_total",
                "Job lookups on GitHub's API that failed and were left for a later round.",
            )?,
        })
    }

    /// Registers every counter in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.checked.clone()))?;
        registry.register(Box::new(self.corrected.clone()))?;
        registry.register(Box::new(self.errors.clone()))
    }
}

/// One job claimed for a check.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = Text)]
    pub platform: String,
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub repository: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// `reconciled_at` before the claim, restored when the check fails.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub previous: Option<DateTime<Utc>>,
}

/// Claims up to `batch` due jobs, most overdue first, stamping `reconciled_at = now()`.
pub fn claim_due(
    conn: &mut PgConnection,
    after: Duration,
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
    .bind::<Text, _>(GITHUB)
    .bind::<Double, _>(after.as_secs_f64())
    .bind::<BigInt, _>(i64::from(batch))
    .load(conn)?;
    claimed.sort_by_key(|job| (job.previous.unwrap_or(job.created_at), job.id));
    Ok(claimed)
}

/// Gives a claimed job back (its check failed): due again at once.
pub fn release(conn: &mut PgConnection, job: &Claimed) -> QueryResult<()> {
    diesel::sql_query("UPDATE job SET reconciled_at = $3 WHERE platform = $1 AND id = $2")
        .bind::<Text, _>(&job.platform)
        .bind::<BigInt, _>(job.id)
        .bind::<Nullable<Timestamptz>, _>(job.previous)
        .execute(conn)
        .map(drop)
}

/// Completes a job with `event` unless it completed meanwhile; `true` when applied.
pub fn complete(
    conn: &mut PgConnection,
    ignored: &IgnoredLabels,
    event: JobEvent,
) -> QueryResult<bool> {
    conn.transaction(|conn| {
        // The same lock order as a webhook: flavor lock shared, then the job's turn, which
        // every writer of the job takes: the row read here stays as it is until the commit.
        queries::lock_flavors_shared(conn)?;
        queries::lock_job_keys(conn, &[(&event.platform, event.id)])?;
        let Some(row) = queries::get_job(conn, &event.platform, event.id)? else {
            return Ok(false);
        };
        if row.status == Status::Completed.as_str() {
            return Ok(false);
        }
        let delivery = format!("planner-reconcile:{}:{}", event.platform, event.id);
        let mut event = event;
        // The job keeps the labels, repository and creation time it was matched with.
        event.labels = row.labels;
        event.repository = row.repository;
        event.created_at = row.created_at;
        let outcomes = apply_batch(conn, ignored, &[(delivery, event)])?;
        Ok(outcomes.first() == Some(&Outcome::Applied))
    })
}

/// The `completed` event for a job GitHub reports as completed (`api` is its answer).
pub fn completed_event(job: &Claimed, api: &Value) -> JobEvent {
    let text = |field: &str| api.get(field).and_then(Value::as_str).map(str::to_owned);
    let time = |field: &str| {
        api.get(field)
            .and_then(Value::as_str)
            .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    event(
        job,
        JobFields {
            conclusion: text("conclusion"),
            completed_at: time("completed_at").or_else(|| Some(Utc::now())),
            started_at: time("started_at"),
            runner_name: text("runner_name"),
            run_id: api.get("run_id").and_then(Value::as_i64),
            run_attempt: api.get("run_attempt").and_then(Value::as_i64),
            workflow_name: text("workflow_name"),
            job_name: text("name"),
        },
        api.clone(),
        "github_api",
    )
}

/// The `completed` event for a job GitHub answers 404 for.
pub fn not_found_event(job: &Claimed) -> JobEvent {
    let now = Utc::now();
    event(
        job,
        JobFields {
            conclusion: Some(NOT_FOUND_CONCLUSION.to_owned()),
            completed_at: Some(now),
            ..JobFields::default()
        },
        json!({
            "id": job.id,
            "status": "completed",
            "conclusion": NOT_FOUND_CONCLUSION,
            "completed_at": now.to_rfc3339(),
        }),
        "not_found",
    )
}

#[derive(Default)]
struct JobFields {
    conclusion: Option<String>,
    completed_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    runner_name: Option<String>,
    run_id: Option<i64>,
    run_attempt: Option<i64>,
    workflow_name: Option<String>,
    job_name: Option<String>,
}

fn event(job: &Claimed, fields: JobFields, workflow_job: Value, marker: &str) -> JobEvent {
    JobEvent {
        platform: job.platform.clone(),
        id: job.id,
        action: Status::Completed,
        labels: Vec::new(),
        repository: job.repository.clone(),
        run_id: fields.run_id,
        run_attempt: fields.run_attempt,
        workflow_name: fields.workflow_name,
        job_name: fields.job_name,
        runner_name: fields.runner_name,
        conclusion: fields.conclusion,
        created_at: job.created_at,
        started_at: fields.started_at,
        completed_at: fields.completed_at,
        // Shaped like a webhook body, marked as coming from reconciliation.
        payload: json!({
            "action": "completed",
            "planner_reconciled": marker,
            "workflow_job": workflow_job,
            "repository": { "full_name": job.repository },
        })
        .to_string()
        .into(),
    }
}

/// Whether `name` is a plain `owner/repo` (it goes into a URL path).
pub fn valid_repository(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Jobs claimed.
    pub claimed: usize,
    /// Jobs GitHub answered about.
    pub checked: usize,
    /// Jobs completed because GitHub reports them completed.
    pub completed: usize,
    /// Jobs completed because GitHub answered 404.
    pub not_found: usize,
    /// Jobs given back for a later round (failures, rate limit).
    pub released: usize,
}

/// Runs reconciliation rounds.
pub struct Reconciler {
    client: actors::github::Client,
    pool: PgPool,
    ignored: IgnoredLabels,
    config: ReconcileConfig,
    metrics: ReconcileMetrics,
}

impl Reconciler {
    /// A reconciler asking GitHub through `client`.
    pub fn new(
        client: actors::github::Client,
        pool: PgPool,
        ignored: IgnoredLabels,
        config: ReconcileConfig,
        metrics: ReconcileMetrics,
    ) -> Self {
        Self {
            client,
            pool,
            ignored,
            config,
            metrics,
        }
    }

    async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut PgConnection) -> QueryResult<T> + Send + 'static,
    ) -> Result<T, String> {
        let pool = self.pool.clone();
        actix_web::web::block(move || {
            let mut conn = pool.get().map_err(|err| err.to_string())?;
            work(&mut conn).map_err(|err| err.to_string())
        })
        .await
        .map_err(|err| err.to_string())?
    }

    /// One round: claim, look up, complete or release.
    pub async fn round(&self) -> RoundReport {
        let mut report = RoundReport::default();
        let (after, batch) = (self.config.after, self.config.batch);
        let claimed = match self.db(move |conn| claim_due(conn, after, batch)).await {
            Ok(claimed) => claimed,
            Err(err) => {
                log::warn!(
                    event = "reconcile_claim_failed",
                    error:% = err;
                    "cannot claim jobs to check"
                );
                return report;
            }
        };
        report.claimed = claimed.len();
        let mut jobs = claimed.into_iter();
        while let Some(job) = jobs.next() {
            if !valid_repository(&job.repository) {
                log::warn!(
                    event = "reconcile_skipped",
                    "job.id" = job.id,
                    reason = "invalid_repository";
                    "job not checked"
                );
                continue;
            }
            let path = format!("/repos/{}/actions/jobs/{}", job.repository, job.id);
            let event = match self.client.get(&path).await {
                Ok(answer) => {
                    self.metrics.checked.inc();
                    report.checked += 1;
                    let api: Value = match answer.json() {
                        Ok(api) => api,
                        Err(err) => {
                            self.give_back(&mut report, vec![job], &err).await;
                            continue;
                        }
                    };
                    if api.get("status").and_then(Value::as_str) != Some("completed") {
                        log::debug!(
                            event = "reconcile_still_open",
                            "job.id" = job.id;
                            "job still open on GitHub"
                        );
                        continue;
                    }
                    (completed_event(&job, &api), "completed")
                }
                Err(GitHubError::NotFound) => {
                    self.metrics.checked.inc();
                    report.checked += 1;
                    (not_found_event(&job), "not_found")
                }
                Err(err @ (GitHubError::RateLimited(_) | GitHubError::Forbidden(_))) => {
                    // Nothing more this round: give back this job and the rest of the batch.
                    let rest: Vec<Claimed> = std::iter::once(job).chain(jobs.by_ref()).collect();
                    self.give_back(&mut report, rest, &err).await;
                    break;
                }
                Err(err) => {
                    self.give_back(&mut report, vec![job], &err).await;
                    continue;
                }
            };
            let (event, reason) = event;
            let (id, repository) = (job.id, job.repository.clone());
            let ignored = self.ignored.clone();
            match self.db(move |conn| complete(conn, &ignored, event)).await {
                Ok(true) => {
                    self.metrics.corrected.with_label_values(&[reason]).inc();
                    match reason {
                        "completed" => report.completed += 1,
                        _ => report.not_found += 1,
                    }
                    log::info!(
                        event = "reconcile_completed",
                        "job.id" = id,
                        repository,
                        reason;
                        "job completed from GitHub's answer"
                    );
                }
                Ok(false) => {}
                Err(err) => {
                    log::warn!(
                        event = "reconcile_complete_failed",
                        "job.id" = id,
                        error:% = err;
                        "cannot complete a job"
                    )
                }
            }
        }
        if report.claimed > 0 {
            log::info!(
                event = "reconcile_round",
                claimed = report.claimed,
                checked = report.checked,
                completed = report.completed,
                not_found = report.not_found,
                released = report.released;
                "reconciliation round done"
            );
        }
        report
    }

    async fn give_back(&self, report: &mut RoundReport, jobs: Vec<Claimed>, err: &GitHubError) {
        if let Some(job) = jobs.first() {
            log::warn!(
                event = "reconcile_lookup_failed",
                "job.id" = job.id,
                error:% = err,
                released = jobs.len();
                "cannot ask GitHub about a job: released the round's jobs"
            );
        }
        self.metrics.errors.inc();
        report.released += jobs.len();
        let result = self
            .db(move |conn| jobs.iter().try_for_each(|job| release(conn, job)))
            .await;
        if let Err(err) = result {
            log::warn!(
                event = "reconcile_release_failed",
                error:% = err;
                "cannot release claimed jobs"
            );
        }
    }
}

/// The actor running a [`Reconciler`] round every `APP_RECONCILE_INTERVAL` (the first at once),
/// one round at a time. Stopping it stops the rounds.
pub struct ReconcileActor {
    reconciler: Arc<Reconciler>,
    interval: Duration,
}

impl ReconcileActor {
    /// An actor for `reconciler`.
    pub fn new(reconciler: Reconciler) -> Self {
        let interval = reconciler.config.interval;
        Self {
            reconciler: Arc::new(reconciler),
            interval,
        }
    }
}

impl Actor for ReconcileActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (reconciler, interval) = (self.reconciler.clone(), self.interval);
        log::info!(
            event = "reconcile_started",
            interval_ms = interval.as_millis(),
            after_s = reconciler.config.after.as_secs(),
            batch = reconciler.config.batch;
            "reconciliation with GitHub started"
        );
        ctx.spawn(
            async move {
                loop {
                    reconciler.round().await;
                    tokio::time::sleep(interval).await;
                }
            }
            .into_actor(self),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_defaults_and_errors() {
        let config = ReconcileConfig::from_source(&[("OTHER", "x")]).unwrap();
        assert_eq!(config, ReconcileConfig::default());
        assert_eq!(config.after, Duration::from_secs(900));
        let config = ReconcileConfig::from_source(&[
            ("APP_RECONCILE_AFTER", "2m"),
            ("APP_RECONCILE_INTERVAL", "10s"),
            ("APP_RECONCILE_BATCH", "7"),
        ])
        .unwrap();
        assert_eq!(config.after, Duration::from_secs(120));
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(config.batch, 7);
        for (name, value) in [
            ("APP_RECONCILE_AFTER", "soon"),
            ("APP_RECONCILE_INTERVAL", "0"),
            ("APP_RECONCILE_BATCH", "0"),
            ("APP_RECONCILE_BATCH", "5000"),
        ] {
            let err = ReconcileConfig::from_source(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn repository_names_are_checked_before_going_into_a_path() {
        assert!(valid_repository("octo-org/hello.world_1"));
        for bad in ["octo", "a/b/c", "../x", "a/..", "a/b?x=1", "/b", "a/"] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    fn claimed() -> Claimed {
        Claimed {
            platform: "github".into(),
            id: 42,
            repository: "o/r".into(),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            previous: None,
        }
    }

    #[test]
    fn events_carry_githubs_fields_or_the_not_found_marker() {
        let api = json!({
            "id": 42, "status": "completed", "conclusion": "cancelled",
            "started_at": "2023-01-01T00:00:10Z", "completed_at": "2023-01-01T00:01:00Z",
            "runner_name": "r-1", "name": "build", "workflow_name": "CI", "run_id": 9
        });
        let event = completed_event(&claimed(), &api);
        assert_eq!(event.action, Status::Completed);
        assert_eq!(event.conclusion.as_deref(), Some("cancelled"));
        assert_eq!(
            event.completed_at.unwrap().to_rfc3339(),
            "2023-01-01T00:01:00+00:00"
        );
        let payload: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(payload["planner_reconciled"], "github_api");
        assert_eq!(payload["workflow_job"]["runner_name"], "r-1");
        let gone = not_found_event(&claimed());
        assert_eq!(gone.conclusion.as_deref(), Some(NOT_FOUND_CONCLUSION));
        assert!(gone.completed_at.is_some());
        let payload: Value = serde_json::from_str(&gone.payload).unwrap();
        assert_eq!(payload["planner_reconciled"], "not_found");
    }

    #[test]
    fn metrics_register_once() {
        let metrics = ReconcileMetrics::new().unwrap();
        let registry = Registry::new();
        metrics.register(&registry).unwrap();
        metrics.checked.inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        assert!(names.contains(&"github_runner_planner_reconcile_checked_total".to_owned()));
        assert!(names.contains(&"github_runner_planner_reconcile_corrected_total".to_owned()));
        assert!(metrics.register(&registry).is_err(), "registered twice");
    }
}
