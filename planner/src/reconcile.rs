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
//!
//! Here is the loop; its settings are [`crate::config::ReconcileConfig`], its counters
//! [`crate::metrics::ReconcileMetrics`], the claim and release SQL
//! [`schema::queries::claim_due_jobs`] and [`schema::queries::release_claimed_job`], the
//! completing transaction [`crate::store::complete_reconciled`].

use actors::github::GitHubError;
use actors::task::{spawn_every, ShutdownSignal};
use chrono::{DateTime, Utc};
use diesel::{PgConnection, QueryResult};
use schema::queries::{self, Claimed};
use serde_json::{json, Value};

use crate::{
    config::ReconcileConfig,
    domain::{
        job::{JobEvent, JobState, Status},
        labels::IgnoredLabels,
        webhook::GITHUB,
    },
    metrics::ReconcileMetrics,
    store::{complete_reconciled, BlockingError, PgPool},
};

/// Conclusion given to a job GitHub answers 404 for.
pub const NOT_FOUND_CONCLUSION: &str = "not_found_on_github";
/// The `completed` event for a job GitHub reports as completed (`api` is its answer).
pub fn completed_event(job: &Claimed, api: &Value) -> JobEvent {
    let text = |field: &str| api.get(field).and_then(Value::as_str).map(str::to_owned);
    let time = |field: &str| {
        api.get(field)
            .and_then(Value::as_str)
            .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    let state = JobState {
        conclusion: text("conclusion"),
        completed_at: time("completed_at").or_else(|| Some(Utc::now())),
        started_at: time("started_at"),
        runner_name: text("runner_name"),
        run_id: api.get("run_id").and_then(Value::as_i64),
        run_attempt: api.get("run_attempt").and_then(Value::as_i64),
        workflow_name: text("workflow_name"),
        job_name: text("name"),
        ..completed(job)
    };
    event(job, state, api.clone(), "github_api")
}

/// The `completed` event for a job GitHub answers 404 for.
pub fn not_found_event(job: &Claimed) -> JobEvent {
    let now = Utc::now();
    let state = JobState {
        conclusion: Some(NOT_FOUND_CONCLUSION.to_owned()),
        completed_at: Some(now),
        ..completed(job)
    };
    let workflow_job = json!({
        "id": job.id,
        "status": "completed",
        "conclusion": NOT_FOUND_CONCLUSION,
        "completed_at": now.to_rfc3339(),
    });
    event(job, state, workflow_job, "not_found")
}

/// A completed `job` of which nothing more is known (no labels: the stored ones stay).
fn completed(job: &Claimed) -> JobState {
    JobState {
        platform: job.platform.clone(),
        id: job.id,
        labels: Vec::new(),
        status: Status::Completed,
        conclusion: None,
        repository: job.repository.clone(),
        run_id: None,
        run_attempt: None,
        workflow_name: None,
        job_name: None,
        runner_name: None,
        created_at: job.created_at,
        started_at: None,
        completed_at: None,
    }
}

fn event(job: &Claimed, state: JobState, workflow_job: Value, marker: &str) -> JobEvent {
    JobEvent {
        job: state,
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
    ) -> Result<T, BlockingError> {
        crate::store::blocking(&self.pool, work).await
    }

    /// One round: claim, look up, complete or release.
    pub async fn round(&self) -> RoundReport {
        let mut report = RoundReport::default();
        let (after, batch) = (self.config.after, self.config.batch);
        let claimed = match self
            .db(move |conn| queries::claim_due_jobs(conn, GITHUB, after, batch))
            .await
        {
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
            match self
                .db(move |conn| complete_reconciled(conn, &ignored, event))
                .await
            {
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
            .db(move |conn| {
                jobs.iter()
                    .try_for_each(|job| queries::release_claimed_job(conn, job))
            })
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

/// Runs a [`Reconciler`] round every `APP_RECONCILE_INTERVAL` (the first at once), one round at
/// a time, as a task until `shutdown`.
pub fn spawn(reconciler: Reconciler, shutdown: ShutdownSignal) {
    let interval = reconciler.config.interval;
    log::info!(
        event = "reconcile_started",
        interval_ms = interval.as_millis(),
        after_s = reconciler.config.after.as_secs(),
        batch = reconciler.config.batch;
        "reconciliation with GitHub started"
    );
    spawn_every("reconcile", interval, shutdown, reconciler, |reconciler| {
        Box::pin(async move {
            reconciler.round().await;
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(event.action(), Status::Completed);
        assert_eq!(event.job.conclusion.as_deref(), Some("cancelled"));
        assert_eq!(
            event.job.completed_at.unwrap().to_rfc3339(),
            "2023-01-01T00:01:00+00:00"
        );
        let payload: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(payload["planner_reconciled"], "github_api");
        assert_eq!(payload["workflow_job"]["runner_name"], "r-1");
        let gone = not_found_event(&claimed());
        assert_eq!(gone.job.conclusion.as_deref(), Some(NOT_FOUND_CONCLUSION));
        assert!(gone.job.completed_at.is_some());
        let payload: Value = serde_json::from_str(&gone.payload).unwrap();
        assert_eq!(payload["planner_reconciled"], "not_found");
    }
}
