//! What the consumer records, in the planner's metrics ([`crate::metrics`]): the one record of
//! what it did, read by `/ready` and the tests as well as by Prometheus.

use crate::{domain::job::JobEvent, domain::webhook::GITHUB, metrics::Metrics};

use super::spans::Received;

/// The consumer's view of the planner's metrics.
pub(super) struct Recorder {
    pub(super) metrics: Metrics,
}

impl Recorder {
    pub(super) fn connect_attempt(&self) {
        self.metrics.broker_connects.inc();
    }

    pub(super) fn consuming(&self, consuming: bool) {
        self.metrics.broker_connected.set(i64::from(consuming));
    }

    pub(super) fn applied(&self, event: &JobEvent) {
        self.metrics
            .record_consumed(&event.job.platform, event.action(), &event.job.repository);
    }

    pub(super) fn duplicate(&self) {
        self.metrics.duplicates.inc();
    }

    // The consumer reads the `github` platform's queue: a delivery it cannot parse is counted
    // there, as Canonical's planner counts it.
    pub(super) fn discarded(&self) {
        self.metrics.discarded.with_label_values(&[GITHUB]).inc();
    }

    pub(super) fn dead_lettered(&self, reason: &str) {
        self.metrics
            .dead_lettered
            .with_label_values(&[reason])
            .inc();
        self.metrics.errors.with_label_values(&[GITHUB]).inc();
    }

    pub(super) fn batch(&self, deliveries: usize) {
        self.metrics.batch_deliveries.observe(deliveries as f64);
    }

    pub(super) fn store_failed(&self, deliveries: usize) {
        self.metrics
            .errors
            .with_label_values(&[GITHUB])
            .inc_by(deliveries as u64);
        self.metrics.store_failures.inc();
    }

    pub(super) fn settled(&self, received: &Received) {
        self.metrics
            .processing
            .observe(received.at.elapsed().as_secs_f64());
    }
}
