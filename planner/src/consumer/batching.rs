//! Batches: how large, how many in flight, a job's deliveries in arrival order, and sorting a
//! batch's deliveries into job events and what is settled at once.

use std::time::Instant;

use lapin::message::Delivery;

use crate::domain::{
    job::JobEvent,
    webhook::{classify, Classified, Headers},
};

use super::{
    apply::{ack, dead_letter, Pending},
    record::Recorder,
    spans::Received,
    ConsumerConfig, SessionError,
};

/// The jobs of the batches in flight, each with the number of batches holding it.
#[derive(Debug, Default)]
pub(super) struct BusyJobs(std::collections::HashMap<(String, i64), usize>);

impl BusyJobs {
    /// The distinct jobs of a batch's events.
    pub(super) fn of(events: &Events) -> Vec<(String, i64)> {
        let mut jobs: Vec<(String, i64)> = events
            .iter()
            .map(|(_, _, event)| (event.job.platform.clone(), event.job.id))
            .collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }

    pub(super) fn holds_any(&self, jobs: &[(String, i64)]) -> bool {
        jobs.iter().any(|job| self.0.contains_key(job))
    }

    pub(super) fn take(&mut self, jobs: &[(String, i64)]) {
        for job in jobs {
            *self.0.entry(job.clone()).or_default() += 1;
        }
    }

    pub(super) fn release(&mut self, jobs: Vec<(String, i64)>) {
        for job in jobs {
            if let std::collections::hash_map::Entry::Occupied(mut held) = self.0.entry(job) {
                *held.get_mut() -= 1;
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
    }
}

/// Transactions the consumer has in flight at once (the job store runs as many threads).
pub const BATCHES_IN_FLIGHT: usize = 2;

/// The most deliveries one transaction applies, whatever the prefetch: a transaction takes an
/// advisory lock per job, and PostgreSQL's shared lock table holds `max_locks_per_transaction`
/// (64 by default) times `max_connections` locks for all sessions together.
pub const MAX_BATCH: usize = 256;

/// The largest batch (one transaction) for a prefetch: half of it, so that a second batch can
/// arrive while the first commits, and at most [`MAX_BATCH`].
pub fn batch_limit(prefetch: u16) -> usize {
    usize::from(prefetch / 2).clamp(1, MAX_BATCH)
}

/// The job events of a batch: each delivery, its `X-GitHub-Delivery` and its event.
pub(super) type Events = Vec<(Received, String, JobEvent)>;

/// Classifies a batch's deliveries: settles at once those that are not job events (discarded
/// or dead-lettered) and answers the job events, in arrival order. Every delivery is `pending`
/// until it is settled.
pub(super) async fn classify_batch(
    config: &ConsumerConfig,
    stats: &Recorder,
    pending: &Pending,
    batch: Vec<Delivery>,
    at: Instant,
) -> Result<Events, SessionError> {
    let mut events: Events = Vec::new();
    {
        let mut pending = pending.borrow_mut();
        batch
            .iter()
            .for_each(|delivery| pending.received(delivery.delivery_tag));
    }
    for delivery in batch {
        let headers = Headers::from_amqp(delivery.properties.headers().as_ref());
        let received = Received::new(delivery, at, &config.topology.queue, &headers);
        match classify(&headers, &received.delivery.data) {
            Ok(Classified::Apply {
                delivery: id,
                event,
            }) => {
                received.describe(&event);
                events.push((received, id, *event));
            }
            Ok(Classified::Discard(reason)) => {
                log::debug!(
                    event = "delivery_discarded",
                    "delivery.id" = headers.delivery.as_deref().unwrap_or("-"),
                    reason:% = reason;
                    "delivery discarded"
                );
                ack(&received.delivery).await?;
                pending
                    .borrow_mut()
                    .settled_alone(received.delivery.delivery_tag);
                stats.settled(&received);
                stats.discarded();
                received.finish("discarded", None);
            }
            Err(poison) => {
                log::warn!(
                    event = "delivery_dead_lettered",
                    "delivery.id" = headers.delivery.as_deref().unwrap_or("-"),
                    reason:% = poison;
                    "delivery dead-lettered"
                );
                dead_letter(&received.delivery).await?;
                pending
                    .borrow_mut()
                    .settled_alone(received.delivery.delivery_tag);
                stats.settled(&received);
                stats.dead_lettered("invalid");
                received.finish("dead_lettered", Some(poison.to_string()));
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn batches_are_half_the_prefetch_at_least_one_at_most_max_batch() {
        assert_eq!(batch_limit(1), 1);
        assert_eq!(batch_limit(256), 128);
        assert_eq!(batch_limit(u16::MAX), MAX_BATCH);
    }
}
