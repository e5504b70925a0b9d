//! Recording what the consumer does: the shared counters and the Prometheus metrics.

use std::sync::{atomic::Ordering, Arc};

use crate::{domain::job::JobEvent, metrics::Metrics};

use super::{spans::Received, ConsumerStats};

/// Where the consumer records what it does: the [`ConsumerStats`] counters and, when given,
/// the Prometheus metrics.
pub(super) struct Recorder {
    pub(super) stats: Arc<ConsumerStats>,
    pub(super) metrics: Option<Metrics>,
}

impl Recorder {
    pub(super) fn connect_attempt(&self) {
        self.stats.connect_attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(metrics) = &self.metrics {
            metrics.broker_connects.inc();
        }
    }

    pub(super) fn consuming(&self, consuming: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.broker_connected.set(i64::from(consuming));
        }
        self.stats.consuming.store(consuming, Ordering::SeqCst);
    }

    // The metrics are recorded before the shared counters, so whoever sees a counter move
    // (tests) also sees the metrics.
    pub(super) fn applied(&self, event: &JobEvent) {
        if let Some(metrics) = &self.metrics {
            metrics
                .consumed
                .with_label_values(&[event.platform.as_str(), event.action.as_str()])
                .inc();
        }
        self.stats.applied.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn duplicate(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.duplicates.inc();
        }
        self.stats.duplicates.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn discarded(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.discarded.inc();
        }
        self.stats.discarded.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn dead_lettered(&self, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.dead_lettered.with_label_values(&[reason]).inc();
            metrics.errors.inc();
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn batch(&self, deliveries: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.batch_deliveries.observe(deliveries as f64);
        }
    }

    pub(super) fn store_failed(&self, deliveries: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.errors.inc_by(deliveries as u64);
        }
        self.stats.store_failures.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn settled(&self, received: &Received) {
        if let Some(metrics) = &self.metrics {
            metrics
                .processing
                .observe(received.at.elapsed().as_secs_f64());
        }
    }
}
