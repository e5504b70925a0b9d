//! Retrying a batch: forever while the database is unavailable, a bounded number of times while
//! it answers and refuses.

use actix::Recipient;
use opentelemetry::{trace::TraceContextExt, Context as TraceContext, KeyValue};

use crate::{
    domain::job::JobEvent,
    messages::{ApplyBatch, Outcome, StoreError},
};

use super::{record::Recorder, ConsumerConfig};

/// How many times a batch the database refuses (while answering) is retried before its
/// deliveries are tried one by one, and a single delivery before it is dead-lettered.
pub(super) const REFUSED_ATTEMPTS: u32 = 5;

/// Applies a batch. Retries forever while the database is unavailable; gives up (`None`) after
/// `attempts` refusals. Each failed attempt is an event (`store_failed`) on the `commit` spans.
pub(super) async fn apply(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    batch: Vec<(String, JobEvent)>,
    attempts: u32,
    spans: &[TraceContext],
) -> Option<Vec<Outcome>> {
    let mut delays = config.retry.delays();
    let mut refused = 0;
    loop {
        let error = match store.send(ApplyBatch(batch.clone())).await {
            Ok(Ok(outcomes)) => return Some(outcomes),
            Ok(Err(err)) => err,
            Err(err) => StoreError::Unavailable(format!("job store: {err}")),
        };
        stats.store_failed(batch.len());
        for context in spans {
            context.span().add_event(
                "store_failed",
                vec![KeyValue::new("error", error.to_string())],
            );
        }
        if matches!(error, StoreError::Refused(_)) {
            refused += 1;
            if refused >= attempts {
                return None;
            }
        }
        let delay = delays.next_delay();
        log::warn!(
            event = "store_failed",
            deliveries = batch.len(),
            error:% = error,
            retry_in_ms = delay.as_millis();
            "cannot store a batch"
        );
        tokio::time::sleep(delay).await;
    }
}
