//! The gateway's Prometheus metrics, declared in one place. Names of Canonical's gateway are
//! kept (`github_runner_webhook_gateway_inbound_total`, ...) so existing dashboards work.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use actors::telemetry::HttpMetrics;

const PREFIX: &str = "github_runner_webhook_gateway";

/// Every reason a webhook can be refused; exported at zero from the start.
pub const REJECTION_REASONS: [&str; 9] = [
    "missing_signature",
    "bad_signature",
    "body_too_large",
    "body_unreadable",
    "body_timeout",
    "overloaded",
    "missing_event",
    "invalid_payload",
    "internal",
];

/// All gateway metrics, registered in [`Metrics::registry`].
#[derive(Clone)]
pub struct Metrics {
    /// The registry the `/metrics` listener serves.
    pub registry: Registry,
    /// Webhook requests received on `POST /webhook`.
    pub inbound: IntCounter,
    /// Webhook requests refused (4xx).
    pub inbound_errors: IntCounter,
    /// Webhook requests refused, by reason.
    pub rejected: IntCounterVec,
    /// Valid deliveries not forwarded because their event is not `workflow_job` (ping included).
    pub ignored: IntCounter,
    /// Deliveries published and confirmed by the broker.
    pub outbound: IntCounter,
    /// Deliveries that could not be published (answered 503).
    pub outbound_errors: IntCounter,
    /// Time from publish to the broker's confirm (successful publishes).
    pub publish_confirm_seconds: Histogram,
    /// 1 while the publisher is connected to the broker, else 0.
    pub broker_connected: IntGauge,
    /// HTTP requests by route and status.
    pub http: HttpMetrics,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(format!("{PREFIX}_{name}"), help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let metrics = Self {
            inbound: counter("inbound_total", "Webhook requests received.")?,
            inbound_errors: counter("inbound_errors_total", "Webhook requests refused (4xx).")?,
            rejected: {
                let vec = IntCounterVec::new(
                    Opts::new(
                        format!("{PREFIX}_rejected_total"),
                        "Webhook requests refused, by reason.",
                    ),
                    &["reason"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                for reason in REJECTION_REASONS {
                    vec.with_label_values(&[reason]);
                }
                vec
            },
            ignored: counter(
                "ignored_total",
                "Valid deliveries of events other than workflow_job, answered but not forwarded.",
            )?,
            outbound: counter(
                "outbound_total",
                "Deliveries published to the broker and confirmed.",
            )?,
            outbound_errors: counter(
                "outbound_errors_total",
                "Deliveries the broker did not confirm (unreachable, nack, unroutable, timeout).",
            )?,
            publish_confirm_seconds: {
                let histogram = Histogram::with_opts(
                    HistogramOpts::new(
                        format!("{PREFIX}_publish_confirm_seconds"),
                        "Time from publishing a delivery to the broker's confirm.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                )?;
                registry.register(Box::new(histogram.clone()))?;
                histogram
            },
            broker_connected: {
                let gauge = IntGauge::new(
                    format!("{PREFIX}_broker_connected"),
                    "1 while the gateway holds a broker connection, else 0.",
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            http: HttpMetrics::register(&registry, PREFIX)?,
            registry: registry.clone(),
        };
        Ok(metrics)
    }
}

/// Redelivery counters, registered in the gateway's registry.
#[derive(Clone)]
pub struct RedeliveryMetrics {
    /// `github_runner_webhook_gateway_redeliveries_total`: redeliveries GitHub accepted.
    pub asked: IntCounter,
    /// `github_runner_webhook_gateway_redelivery_failures_total`: failed requests of a round
    /// (listing deliveries or asking for one, rate limits included).
    pub failures: IntCounter,
}

impl RedeliveryMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let asked = IntCounter::new(
            "github_runner_webhook_gateway_redeliveries_total",
            "Failed workflow_job deliveries GitHub was asked to redeliver (and accepted).",
        )?;
        let failures = IntCounter::new(
            "github_runner_webhook_gateway_redelivery_failures_total",
            "Failed requests to GitHub while looking for or redelivering failed deliveries.",
        )?;
        registry.register(Box::new(asked.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self { asked, failures })
    }
}
