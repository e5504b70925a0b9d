//! The manager's Prometheus metrics, all named `github_runner_manager_*`.

use actors::telemetry::HttpMetrics;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Prefix of every metric.
pub const PREFIX: &str = "github_runner_manager";

/// Every metric of the process.
#[derive(Clone)]
pub struct Metrics {
    /// The registry the `/metrics` listener serves.
    pub registry: Registry,
    /// Desired runners per flavor.
    pub desired: IntGaugeVec,
    /// The planner's pressure per flavor, as followed (before clamping).
    pub pressure: IntGaugeVec,
    /// `max_runners` per flavor.
    pub max_runners: IntGaugeVec,
    /// Runners per flavor and state.
    pub runners: IntGaugeVec,
    /// Runners created per flavor.
    pub created: IntCounterVec,
    /// Runners removed per flavor and reason.
    pub removed: IntCounterVec,
    /// Failures per flavor and reason.
    pub failures: IntCounterVec,
    /// Runners kept because GitHub said they were busy, per flavor.
    pub kept_busy: IntCounterVec,
    /// Seconds from create to first seen online in GitHub.
    pub boot_seconds: HistogramVec,
    /// Seconds of one reconcile pass.
    pub reconcile_seconds: HistogramVec,
    /// Create attempts that found no capacity, per flavor, zone and template.
    pub capacity_misses: IntCounterVec,
    /// 1 while a flavor's last create found no capacity anywhere (its creates back off).
    pub capacity_exhausted: IntGaugeVec,
    /// 1 while the pressure stream is connected.
    pub planner_connected: IntGauge,
    /// Times the pressure follower ended or panicked and was started again.
    pub follower_restarts: IntCounter,
    /// HTTP request metrics of the status API.
    pub http: HttpMetrics,
}

impl Metrics {
    /// Creates and registers every metric in a new registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let name = |suffix: &str| format!("{PREFIX}_{suffix}");
        let gauge = |suffix: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name(suffix), help), labels)
        };
        let counter = |suffix: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name(suffix), help), labels)
        };
        let metrics = Self {
            desired: gauge(
                "desired_runners",
                "Desired runners: the planner's pressure clamped to [min_runners, max_runners].",
                &["flavor"],
            )?,
            pressure: gauge(
                "pressure",
                "The planner's pressure for the flavor as last heard (before the clamp to [min_runners, max_runners]).",
                &["flavor"],
            )?,
            max_runners: gauge(
                "max_runners",
                "The flavor's max_runners (alert: pressure above it for long).",
                &["flavor"],
            )?,
            runners: gauge(
                "runners",
                "Runners by state (creating, booting, idle, busy, removing).",
                &["flavor", "state"],
            )?,
            created: counter("created_total", "Runners created.", &["flavor"])?,
            removed: counter(
                "removed_total",
                "Runners removed, by reason (ended, boot_timeout, scale_down, max_lifetime, orphan).",
                &["flavor", "reason"],
            )?,
            failures: counter(
                "failures_total",
                "Failed steps, by reason (runner_group, jit_config, backend_start, backend_state, backend_stop, no_capacity, github_list, deregister, planner_labels).",
                &["flavor", "reason"],
            )?,
            kept_busy: counter(
                "kept_busy_total",
                "Scale-downs GitHub refused because the runner had taken a job.",
                &["flavor"],
            )?,
            boot_seconds: HistogramVec::new(
                HistogramOpts::new(
                    name("boot_duration_seconds"),
                    "Time from creating a runner to seeing it online in GitHub.",
                )
                .buckets(vec![
                    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
                ]),
                &["flavor"],
            )?,
            reconcile_seconds: HistogramVec::new(
                HistogramOpts::new(
                    name("reconcile_duration_seconds"),
                    "Time of one reconcile pass (listing the backend and GitHub, deciding).",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["flavor"],
            )?,
            capacity_misses: counter(
                "capacity_misses_total",
                "Create attempts that found no capacity in a zone for a template (a gce backend then tries the next zone, then the next template).",
                &["flavor", "zone", "template"],
            )?,
            capacity_exhausted: gauge(
                "capacity_exhausted",
                "1 while the flavor's last create found no capacity in any zone or template; its creates back off until one succeeds.",
                &["flavor"],
            )?,
            planner_connected: IntGauge::new(
                name("planner_connected"),
                "1 while the planner's pressure stream is connected.",
            )?,
            follower_restarts: IntCounter::new(
                name("pressure_follower_restarts_total"),
                "Times the pressure follower ended or panicked and was started again.",
            )?,
            http: HttpMetrics::register(&registry)?,
            registry,
        };
        for collector in [
            Box::new(metrics.desired.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.pressure.clone()),
            Box::new(metrics.max_runners.clone()),
            Box::new(metrics.runners.clone()),
            Box::new(metrics.created.clone()),
            Box::new(metrics.removed.clone()),
            Box::new(metrics.failures.clone()),
            Box::new(metrics.kept_busy.clone()),
            Box::new(metrics.boot_seconds.clone()),
            Box::new(metrics.reconcile_seconds.clone()),
            Box::new(metrics.capacity_misses.clone()),
            Box::new(metrics.capacity_exhausted.clone()),
            Box::new(metrics.planner_connected.clone()),
            Box::new(metrics.follower_restarts.clone()),
        ] {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }
}
