//! The planner's metrics, all declared in this file. Canonical's names, labels and event
//! values are kept (`github_runner_planner_flavor_pressure{platform,flavor}`,
//! `github_runner_planner_webhook_consumed_total{platform,event,repo}`, the waiting and
//! running histograms by `platform` and `repo`, `http_server_request_duration_seconds`), so
//! Canonical's dashboard shows our planner unchanged; the others are what an operator needs
//! beyond them. They are the one record of what the consumer did: `/ready` and the tests read
//! them too.
//!
//! Labels are bounded: platform, event, flavor (flavors are created by an admin), reason,
//! matched route, and repository, which is capped ([`RepoLabels`], `APP_METRICS_MAX_REPOS`).
//! Never a job id or delivery id.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus::{
    core::Collector, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use actors::telemetry::HttpMetrics;

use crate::domain::{job::Status, webhook::GITHUB};

/// Prefix of every planner metric (but the HTTP one, which has OpenTelemetry's name).
pub const PREFIX: &str = "github_runner_planner";

/// Why a delivery was dead-lettered; exported at zero from the start.
pub const DEAD_LETTER_REASONS: [&str; 2] = [
    // Not a delivery the planner can ever apply (missing headers, bad JSON, bad fields).
    "invalid", // PostgreSQL answered but refused it, every time.
    "refused",
];

/// The `queue` label of the queue depth gauge: the job queue and its dead-letter queue.
pub const QUEUES: [&str; 2] = ["jobs", "dead_letter"];

/// The `flavor` label of a job no flavor matches.
pub const NO_FLAVOR: &str = "none";

/// Buckets of job waiting times: Canonical's (0 s to 4 h, fine at the low end) and ours (up
/// to 1 day), merged.
const WAITING_SECONDS: [f64; 19] = [
    0.0, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
    7200.0, 14400.0, 21600.0, 43200.0, 86400.0,
];

/// Buckets of job running times: Canonical's (0 s to 6 h) and ours (up to 1 day), merged.
const RUNNING_SECONDS: [f64; 30] = [
    0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1500.0,
    1800.0, 2400.0, 3000.0, 3600.0, 4800.0, 6000.0, 7200.0, 9000.0, 10800.0, 14400.0, 18000.0,
    21600.0, 28800.0, 43200.0, 64800.0, 86400.0,
];

/// Default of `APP_METRICS_MAX_REPOS`.
pub const DEFAULT_MAX_REPOS: usize = 200;

/// The `repo` label of repositories past the limit.
pub const OTHER_REPO: &str = "other";

/// The `event` label of a job event, as Canonical's planner names them: a job is `created`
/// (`queued`), `started` (`in_progress`) or `completed`; `waiting` (for an environment's
/// approval), which Canonical's planner does not apply, keeps its name.
pub fn event_label(action: Status) -> &'static str {
    match action {
        Status::Queued => "created",
        Status::Waiting => "waiting",
        Status::InProgress => "started",
        Status::Completed => "completed",
    }
}

/// The `repo` label, bounded: the first `limit` repositories seen keep their name
/// (`owner/name`) for the life of the process, every later one counts as [`OTHER_REPO`]. Each
/// named repository costs about 55 series (the consumed counter's events and the two
/// histograms' buckets).
#[derive(Clone)]
pub struct RepoLabels {
    limit: usize,
    seen: Arc<Mutex<HashSet<String>>>,
}

impl RepoLabels {
    /// At most `limit` repository names.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Default::default(),
        }
    }

    /// The label of `repository`.
    pub fn label<'a>(&self, repository: &'a str) -> &'a str {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(repository) {
            return repository;
        }
        if seen.len() < self.limit {
            seen.insert(repository.to_owned());
            return repository;
        }
        OTHER_REPO
    }
}

/// All planner metrics, registered in [`Metrics::registry`]. Cloning shares the metrics; every
/// handle is thread-safe, so the consumer, the job store (on its own threads) and the routes
/// record into the same series.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the metrics exporter serves.
    pub registry: Registry,
    /// Canonical's: pressure per flavor (open jobs, at least the flavor's minimum pressure).
    pub flavor_pressure: IntGaugeVec,
    /// Canonical's: job events applied to the database, by platform, event ([`event_label`])
    /// and repository.
    pub consumed: IntCounterVec,
    /// Canonical's: deliveries whose processing failed, by platform: every dead-lettered
    /// delivery, and every delivery of a batch the database could not store on one attempt (it
    /// is retried).
    pub errors: IntCounterVec,
    /// Canonical's: deliveries acknowledged without being applied because they are not for the
    /// planner (other events or actions, GitHub-hosted jobs), by platform.
    pub discarded: IntCounterVec,
    /// Canonical's: time jobs waited for a runner (`created_at` to `started_at`), by platform
    /// and repository, recorded when a job is first seen started.
    pub job_waiting: HistogramVec,
    /// Canonical's: time jobs ran (`started_at` to `completed_at`), by platform and repository,
    /// recorded when a job is first seen completed.
    pub job_running: HistogramVec,
    /// The `repo` label's bound.
    pub repos: RepoLabels,
    /// Waiting time per assigned flavor (`none` when no flavor matched).
    pub job_waiting_by_flavor: HistogramVec,
    /// Deliveries whose `X-GitHub-Delivery` had been applied before (acknowledged, not applied).
    pub duplicates: IntCounter,
    /// Deliveries rejected to the dead-letter queue, by reason ([`DEAD_LETTER_REASONS`]).
    pub dead_lettered: IntCounterVec,
    /// Time from receiving a delivery to settling it (ack or dead-letter).
    pub processing: Histogram,
    /// Deliveries applied per database transaction (the consumer's batches).
    pub batch_deliveries: Histogram,
    /// Attempts to store a batch that failed (database down or refusing); it is retried.
    pub store_failures: IntCounter,
    /// Messages ready in the job queue and in the dead-letter queue ([`QUEUES`]), polled by the
    /// consumer: the consumer lag, and the dead letters waiting for a human.
    pub queue_messages: IntGaugeVec,
    /// 1 while the consumer is registered with the broker, else 0.
    pub broker_connected: IntGauge,
    /// Connection attempts to the broker (the first one included).
    pub broker_connects: IntCounter,
    /// 1 while PostgreSQL answered the last check (readiness probe, periodic probe, consumer
    /// transaction), else 0.
    pub database_reachable: IntGauge,
    /// Clients subscribed to pressure streams.
    pub stream_subscribers: IntGauge,
    /// HTTP requests by route, method and status (`http_server_request_duration_seconds`).
    pub http: HttpMetrics,
    /// Reconciliation with GitHub's API.
    pub reconcile: ReconcileMetrics,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry, with at most `max_repos`
    /// repository names as labels. Label-less series, the dead-letter reasons, the queues and
    /// the `github` platform's error and discard counters are exported at zero from the start.
    pub fn new(max_repos: usize) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let name = |short: &str| format!("{PREFIX}_{short}");
        let register = |collector: Box<dyn Collector>| registry.register(collector);
        let counter = |short: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name(short), help)?;
            register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let counters = |short: &str, help: &str, labels: &[&str]| {
            let counters = IntCounterVec::new(Opts::new(name(short), help), labels)?;
            register(Box::new(counters.clone()))?;
            prometheus::Result::Ok(counters)
        };
        let gauge = |short: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name(short), help)?;
            register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let gauges = |short: &str, help: &str, labels: &[&str]| {
            let gauges = IntGaugeVec::new(Opts::new(name(short), help), labels)?;
            register(Box::new(gauges.clone()))?;
            prometheus::Result::Ok(gauges)
        };
        let histogram =
            |short: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let histogram = Histogram::with_opts(
                    HistogramOpts::new(name(short), help).buckets(buckets.to_vec()),
                )?;
                register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let histograms = |short: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let histograms = HistogramVec::new(
                HistogramOpts::new(name(short), help).buckets(buckets.to_vec()),
                labels,
            )?;
            register(Box::new(histograms.clone()))?;
            prometheus::Result::Ok(histograms)
        };

        let dead_lettered = counters(
            "webhook_dead_lettered_total",
            "Deliveries rejected to the dead-letter queue, by reason (invalid, refused).",
            &["reason"],
        )?;
        for reason in DEAD_LETTER_REASONS {
            dead_lettered.with_label_values(&[reason]);
        }
        let errors = counters(
            "webhook_errors_total",
            "Deliveries whose processing failed: dead-lettered, or not stored on one attempt.",
            &["platform"],
        )?;
        let discarded = counters(
            "webhook_discarded_total",
            "Deliveries acknowledged without being applied: not for the planner.",
            &["platform"],
        )?;
        for platform_counter in [&errors, &discarded] {
            platform_counter.with_label_values(&[GITHUB]);
        }
        let queue_messages = gauges(
            "queue_messages",
            "Messages ready in the job queue and the dead-letter queue (queue: jobs, dead_letter).",
            &["queue"],
        )?;
        for queue in QUEUES {
            queue_messages.with_label_values(&[queue]);
        }
        let reconcile = ReconcileMetrics::new()?;
        reconcile.register(&registry)?;

        Ok(Self {
            flavor_pressure: gauges(
                "flavor_pressure",
                "Pressure of each flavor: its open jobs, at least its minimum pressure.",
                &["platform", "flavor"],
            )?,
            consumed: counters(
                "webhook_consumed_total",
                "workflow_job deliveries applied to the database, by platform, event (created, \
                 waiting, started, completed) and repository.",
                &["platform", "event", "repo"],
            )?,
            errors,
            discarded,
            job_waiting: histograms(
                "webhook_job_waiting_seconds",
                "Time jobs waited for a runner (created to started), by platform and repository.",
                &WAITING_SECONDS,
                &["platform", "repo"],
            )?,
            job_running: histograms(
                "webhook_job_running_seconds",
                "Time jobs ran (started to completed), by platform and repository.",
                &RUNNING_SECONDS,
                &["platform", "repo"],
            )?,
            repos: RepoLabels::new(max_repos),
            job_waiting_by_flavor: histograms(
                "job_waiting_seconds",
                "Time jobs waited for a runner (created to started), by assigned flavor.",
                &WAITING_SECONDS,
                &["flavor"],
            )?,
            duplicates: counter(
                "webhook_duplicates_total",
                "Deliveries seen before (same X-GitHub-Delivery): acknowledged, not applied again.",
            )?,
            dead_lettered,
            queue_messages,
            processing: histogram(
                "webhook_processing_seconds",
                "Time from receiving a delivery to acknowledging or dead-lettering it.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ],
            )?,
            batch_deliveries: histogram(
                "consumer_batch_deliveries",
                "Deliveries applied per database transaction.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            )?,
            store_failures: counter(
                "store_failures_total",
                "Attempts to store a batch of deliveries that failed (the batch is retried).",
            )?,
            broker_connected: gauge(
                "broker_connected",
                "1 while the consumer is registered with the broker, else 0.",
            )?,
            broker_connects: counter(
                "broker_connect_attempts_total",
                "Connection attempts to the broker, the first one included.",
            )?,
            database_reachable: gauge(
                "database_reachable",
                "1 while PostgreSQL answered the last check, else 0.",
            )?,
            stream_subscribers: gauge(
                "stream_subscribers",
                "Clients subscribed to pressure streams.",
            )?,
            http: HttpMetrics::register(&registry)?,
            reconcile,
            registry,
        })
    }

    /// Records the times of a job that started or completed in a committed transaction.
    pub fn record_job_times(&self, times: &JobTimes) {
        let labels = [times.platform.as_str(), self.repos.label(&times.repository)];
        if let Some(waiting) = times.waiting {
            self.job_waiting.with_label_values(&labels).observe(waiting);
            self.job_waiting_by_flavor
                .with_label_values(&[times.flavor.as_deref().unwrap_or(NO_FLAVOR)])
                .observe(waiting);
        }
        if let Some(running) = times.running {
            self.job_running.with_label_values(&labels).observe(running);
        }
    }

    /// Records a job event applied to the database.
    pub fn record_consumed(&self, platform: &str, action: Status, repository: &str) {
        let repo = self.repos.label(repository);
        self.consumed
            .with_label_values(&[platform, event_label(action), repo])
            .inc();
    }

    /// Job events applied so far (every platform, event and repository).
    pub fn applied(&self) -> u64 {
        total(&self.consumed)
    }

    /// Deliveries settled (acknowledged or rejected) so far: applied, duplicates, discarded
    /// and dead-lettered.
    pub fn settled(&self) -> u64 {
        self.applied() + self.duplicates.get() + total(&self.discarded) + self.dead_letters()
    }

    /// Deliveries rejected to the dead-letter queue so far (every reason).
    pub fn dead_letters(&self) -> u64 {
        total(&self.dead_lettered)
    }

    /// Whether the consumer is registered with the broker now.
    pub fn consuming(&self) -> bool {
        self.broker_connected.get() == 1
    }
}

/// The sum of every series of a counter family.
pub fn total(counters: &IntCounterVec) -> u64 {
    counters
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().value() as u64)
        .sum()
}

/// Durations learnt when a transaction moves a job to started or completed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTimes {
    /// The job's platform.
    pub platform: String,
    /// The job's repository (`owner/name`).
    pub repository: String,
    /// The job's assigned flavor.
    pub flavor: Option<String>,
    /// Seconds from created to started, when the job has just been seen started.
    pub waiting: Option<f64>,
    /// Seconds from started to completed, when the job has just been seen completed.
    pub running: Option<f64>,
}

/// Reconciliation counters. [`Metrics::new`] registers one set in the planner's registry; a
/// [`ReconcileMetrics::new`] of their own serves tests that run a reconciler alone.
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
    /// New counters, at zero, not registered.
    pub fn new() -> prometheus::Result<Self> {
        let corrected = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}_reconcile_corrected_total"),
                "Open jobs completed by reconciliation with GitHub's API, by reason.",
            ),
            &["reason"],
        )?;
        for reason in ["completed", "not_found"] {
            corrected.with_label_values(&[reason]);
        }
        Ok(Self {
            checked: IntCounter::new(
                format!("{PREFIX}_reconcile_checked_total"),
                "Open jobs looked up on GitHub's API (answered 200 or 404).",
            )?,
            corrected,
            errors: IntCounter::new(
                format!("{PREFIX}_reconcile_errors_total"),
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

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn exported(metrics: &Metrics) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&metrics.registry.gather(), &mut buffer)
            .unwrap();
        String::from_utf8(buffer).unwrap()
    }

    fn times(repository: &str, flavor: Option<&str>, waiting: f64, running: f64) -> JobTimes {
        JobTimes {
            platform: GITHUB.to_owned(),
            repository: repository.to_owned(),
            flavor: flavor.map(str::to_owned),
            waiting: (waiting >= 0.0).then_some(waiting),
            running: (running >= 0.0).then_some(running),
        }
    }

    #[test]
    fn fixed_series_are_exported_at_zero() {
        let text = exported(&Metrics::new(DEFAULT_MAX_REPOS).unwrap());
        for series in [
            "github_runner_planner_webhook_errors_total{platform=\"github\"} 0",
            "github_runner_planner_webhook_discarded_total{platform=\"github\"} 0",
            "github_runner_planner_webhook_duplicates_total 0",
            "github_runner_planner_webhook_dead_lettered_total{reason=\"invalid\"} 0",
            "github_runner_planner_webhook_dead_lettered_total{reason=\"refused\"} 0",
            "github_runner_planner_webhook_processing_seconds_count 0",
            "github_runner_planner_store_failures_total 0",
            "github_runner_planner_broker_connected 0",
            "github_runner_planner_database_reachable 0",
            "github_runner_planner_stream_subscribers 0",
            "github_runner_planner_queue_messages{queue=\"jobs\"} 0",
            "github_runner_planner_queue_messages{queue=\"dead_letter\"} 0",
            "github_runner_planner_reconcile_checked_total 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn job_times_go_to_the_repository_and_flavor_histograms() {
        let metrics = Metrics::new(DEFAULT_MAX_REPOS).unwrap();
        metrics.record_job_times(&times("o/a", Some("large"), 42.0, -1.0));
        metrics.record_job_times(&times("o/a", None, 3.0, 60.0));
        let a = metrics.job_waiting.with_label_values(&[GITHUB, "o/a"]);
        assert_eq!(a.get_sample_count(), 2);
        assert_eq!(a.get_sample_sum(), 45.0);
        let running = metrics.job_running.with_label_values(&[GITHUB, "o/a"]);
        assert_eq!(running.get_sample_count(), 1);
        let large = metrics.job_waiting_by_flavor.with_label_values(&["large"]);
        assert_eq!(large.get_sample_sum(), 42.0);
        let none = metrics
            .job_waiting_by_flavor
            .with_label_values(&[NO_FLAVOR]);
        assert_eq!(none.get_sample_sum(), 3.0);
        // Canonical's waiting buckets are all there (a dashboard's quantiles depend on them).
        let text = exported(&metrics);
        for bound in ["0", "1", "2.5", "15", "14400"] {
            let bucket = format!(
                "github_runner_planner_webhook_job_waiting_seconds_bucket{{platform=\"github\",repo=\"o/a\",le=\"{bound}\"}}"
            );
            assert!(text.contains(&bucket), "{bucket} missing from:\n{text}");
        }
    }

    #[test]
    fn repositories_past_the_limit_count_as_other() {
        let metrics = Metrics::new(2).unwrap();
        for repository in ["o/a", "o/b", "o/c", "o/a", "o/d"] {
            metrics.record_consumed(GITHUB, Status::Queued, repository);
        }
        let count = |repo: &str| {
            metrics
                .consumed
                .with_label_values(&[GITHUB, "created", repo])
                .get()
        };
        assert_eq!((count("o/a"), count("o/b"), count(OTHER_REPO)), (2, 1, 2));
        assert_eq!(metrics.applied(), 5);
        let text = exported(&metrics);
        assert!(!text.contains("o/c") && !text.contains("o/d"), "{text}");
        // The bound is shared with the histograms: a repository admitted by one keeps its name.
        metrics.record_job_times(&times("o/b", None, 1.0, -1.0));
        metrics.record_job_times(&times("o/e", None, 1.0, -1.0));
        let waiting = |repo: &str| {
            metrics
                .job_waiting
                .with_label_values(&[GITHUB, repo])
                .get_sample_count()
        };
        assert_eq!((waiting("o/b"), waiting(OTHER_REPO)), (1, 1));
    }

    #[test]
    fn events_are_named_as_canonical_s_planner_names_them() {
        assert_eq!(event_label(Status::Queued), "created");
        assert_eq!(event_label(Status::InProgress), "started");
        assert_eq!(event_label(Status::Completed), "completed");
        assert_eq!(event_label(Status::Waiting), "waiting");
    }

    #[test]
    fn reconcile_counters_are_registered_once() {
        let metrics = Metrics::new(DEFAULT_MAX_REPOS).unwrap();
        metrics.reconcile.checked.inc();
        let text = exported(&metrics);
        assert!(text.contains("github_runner_planner_reconcile_checked_total 1"));
        assert!(text
            .contains("github_runner_planner_reconcile_corrected_total{reason=\"not_found\"} 0"));
        assert!(metrics.reconcile.register(&metrics.registry).is_err());
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
