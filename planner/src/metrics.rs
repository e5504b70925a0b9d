//! The planner's Prometheus metrics, declared in one place. Canonical's names are kept
//! (`github_runner_planner_flavor_pressure`, `github_runner_planner_webhook_consumed_total`, ...)
//! so existing dashboards work; the others are what an operator needs beyond them.
//!
//! Labels are bounded: platform, action, flavor (flavors are created by an admin), reason,
//! matched route. Never a repository, job id or delivery id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use actors::telemetry::HttpMetrics;

/// Prefix of every planner metric.
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

/// Buckets of job waiting and running times: 1 s to 1 day.
const JOB_SECONDS: [f64; 14] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];

/// All planner metrics, registered in [`Metrics::registry`]. Cloning shares the metrics; every
/// handle is thread-safe, so the consumer, the job store (on its own threads) and the routes
/// record into the same series.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the `/metrics` listener serves.
    pub registry: Registry,
    /// Canonical's: pressure per flavor (open jobs, at least the flavor's minimum pressure).
    pub flavor_pressure: IntGaugeVec,
    /// Canonical's: job events applied to the database, by platform and action.
    pub consumed: IntCounterVec,
    /// Canonical's: deliveries whose processing failed: every dead-lettered delivery, and every
    /// delivery of a batch the database could not store on one attempt (it is retried).
    pub errors: IntCounter,
    /// Canonical's: deliveries acknowledged without being applied because they are not for the
    /// planner (other events or actions, GitHub-hosted jobs).
    pub discarded: IntCounter,
    /// Canonical's: time jobs waited for a runner (`created_at` to `started_at`), recorded when
    /// a job is first seen started.
    pub job_waiting: Histogram,
    /// Canonical's: time jobs ran (`started_at` to `completed_at`), recorded when a job is first
    /// seen completed.
    pub job_running: Histogram,
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
    /// HTTP requests by route and status.
    pub http: HttpMetrics,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry. Label-less series (and the
    /// dead-letter reasons) are exported at zero from the start.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let name = |short: &str| format!("{PREFIX}_{short}");
        let counter = |short: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name(short), help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |short: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name(short), help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let histogram =
            |short: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let histogram = Histogram::with_opts(
                    HistogramOpts::new(name(short), help).buckets(buckets.to_vec()),
                )?;
                registry.register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let flavor_pressure = IntGaugeVec::new(
            Opts::new(
                name("flavor_pressure"),
                "Pressure of each flavor: its open jobs, at least its minimum pressure.",
            ),
            &["platform", "flavor"],
        )?;
        registry.register(Box::new(flavor_pressure.clone()))?;
        let consumed = IntCounterVec::new(
            Opts::new(
                name("webhook_consumed_total"),
                "workflow_job deliveries applied to the database, by platform and action.",
            ),
            &["platform", "event"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                name("webhook_dead_lettered_total"),
                "Deliveries rejected to the dead-letter queue, by reason (invalid, refused).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dead_lettered.clone()))?;
        for reason in DEAD_LETTER_REASONS {
            dead_lettered.with_label_values(&[reason]);
        }
        let job_waiting_by_flavor = HistogramVec::new(
            HistogramOpts::new(
                name("job_waiting_seconds"),
                "Time jobs waited for a runner (created to started), by assigned flavor.",
            )
            .buckets(JOB_SECONDS.to_vec()),
            &["flavor"],
        )?;
        registry.register(Box::new(job_waiting_by_flavor.clone()))?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                name("queue_messages"),
                "Messages ready in the job queue and the dead-letter queue (queue: jobs, dead_letter).",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(queue_messages.clone()))?;
        for queue in QUEUES {
            queue_messages.with_label_values(&[queue]);
        }

        Ok(Self {
            flavor_pressure,
            consumed,
            errors: counter(
                "webhook_errors_total",
                "Deliveries whose processing failed: dead-lettered, or not stored on one attempt.",
            )?,
            discarded: counter(
                "webhook_discarded_total",
                "Deliveries acknowledged without being applied: not for the planner.",
            )?,
            job_waiting: histogram(
                "webhook_job_waiting_seconds",
                "Time jobs waited for a runner (created to started).",
                &JOB_SECONDS,
            )?,
            job_running: histogram(
                "webhook_job_running_seconds",
                "Time jobs ran (started to completed).",
                &JOB_SECONDS,
            )?,
            job_waiting_by_flavor,
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
            http: HttpMetrics::register(&registry, PREFIX)?,
            registry,
        })
    }

    /// Records the times of a job that started or completed in a committed transaction.
    pub fn record_job_times(&self, times: &JobTimes) {
        if let Some(waiting) = times.waiting {
            self.job_waiting.observe(waiting);
            self.job_waiting_by_flavor
                .with_label_values(&[times.flavor.as_deref().unwrap_or(NO_FLAVOR)])
                .observe(waiting);
        }
        if let Some(running) = times.running {
            self.job_running.observe(running);
        }
    }
}

/// Durations learnt when a transaction moves a job to started or completed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTimes {
    /// The job's assigned flavor.
    pub flavor: Option<String>,
    /// Seconds from created to started, when the job has just been seen started.
    pub waiting: Option<f64>,
    /// Seconds from started to completed, when the job has just been seen completed.
    pub running: Option<f64>,
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

    #[test]
    fn label_less_series_are_exported_at_zero() {
        let text = exported(&Metrics::new().unwrap());
        for series in [
            "github_runner_planner_webhook_errors_total 0",
            "github_runner_planner_webhook_discarded_total 0",
            "github_runner_planner_webhook_duplicates_total 0",
            "github_runner_planner_webhook_dead_lettered_total{reason=\"invalid\"} 0",
            "github_runner_planner_webhook_dead_lettered_total{reason=\"refused\"} 0",
            "github_runner_planner_webhook_job_waiting_seconds_count 0",
            "github_runner_planner_webhook_job_running_seconds_count 0",
            "github_runner_planner_webhook_processing_seconds_count 0",
            "github_runner_planner_broker_connected 0",
            "github_runner_planner_database_reachable 0",
            "github_runner_planner_stream_subscribers 0",
            "github_runner_planner_queue_messages{queue=\"jobs\"} 0",
            "github_runner_planner_queue_messages{queue=\"dead_letter\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn job_times_go_to_both_waiting_histograms() {
        let metrics = Metrics::new().unwrap();
        metrics.record_job_times(&JobTimes {
            flavor: Some("large".into()),
            waiting: Some(42.0),
            running: None,
        });
        metrics.record_job_times(&JobTimes {
            flavor: None,
            waiting: Some(3.0),
            running: Some(60.0),
        });
        assert_eq!(metrics.job_waiting.get_sample_count(), 2);
        assert_eq!(metrics.job_waiting.get_sample_sum(), 45.0);
        assert_eq!(metrics.job_running.get_sample_count(), 1);
        let large = metrics.job_waiting_by_flavor.with_label_values(&["large"]);
        assert_eq!(large.get_sample_sum(), 42.0);
        let none = metrics
            .job_waiting_by_flavor
            .with_label_values(&[NO_FLAVOR]);
        assert_eq!(none.get_sample_sum(), 3.0);
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
