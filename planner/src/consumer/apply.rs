//! Applying a batch's job events and settling each delivery after the commit (acknowledged) or
//! after the database refused it alone (dead-lettered).

use actix::Recipient;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicRejectOptions},
};

use crate::{
    domain::job::JobEvent,
    messages::{ApplyBatch, Outcome},
    pressure::Nudge,
};

use super::{
    batching::Events,
    record::Recorder,
    retry::{apply, REFUSED_ATTEMPTS},
    spans::{commit_spans, end_commit_spans, Received},
    ConsumerConfig, SessionError,
};

/// Applies a batch's job events in one transaction and settles them (acknowledged after the
/// commit); splits a batch the database keeps refusing to find the deliveries at fault.
pub(super) async fn apply_events(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    events: Events,
) -> Result<(), SessionError> {
    let payload: Vec<(String, JobEvent)> = events
        .iter()
        .map(|(_, id, event)| (id.clone(), event.clone()))
        .collect();
    let spans = commit_spans(&events.iter().map(|(r, _, _)| r).collect::<Vec<_>>());
    // The calculator's `pressure broadcast` span continues the trace of the batch's first
    // delivery, as a child of its commit: receive -> publish -> consume -> commit -> broadcast.
    let nudge = config.pressure.as_ref().map(|pressure| {
        (
            pressure,
            Nudge {
                context: spans.first().cloned(),
            },
        )
    });
    let size = payload.len();
    match apply(config, store, stats, payload, REFUSED_ATTEMPTS, &spans).await {
        Some(outcomes) => {
            stats.batch(size);
            end_commit_spans(spans, None);
            for ((received, id, event), outcome) in events.iter().zip(outcomes) {
                settle_applied(stats, received, id, event, outcome).await?;
            }
        }
        None => {
            end_commit_spans(spans, Some("refused by the database"));
            // The database keeps refusing the batch while answering: find the culprit(s).
            for (received, id, event) in events {
                let spans = commit_spans(&[&received]);
                match apply(
                    config,
                    store,
                    stats,
                    vec![(id.clone(), event.clone())],
                    REFUSED_ATTEMPTS,
                    &spans,
                )
                .await
                {
                    Some(outcomes) => {
                        end_commit_spans(spans, None);
                        settle_applied(stats, &received, &id, &event, outcomes[0]).await?
                    }
                    None => {
                        end_commit_spans(spans, Some("refused by the database"));
                        log::error!(
                            event = "delivery_dead_lettered",
                            "delivery.id" = id,
                            "job.id":% = event.job.id,
                            reason = "refused by the database";
                            "delivery dead-lettered"
                        );
                        dead_letter(&received.delivery).await?;
                        stats.settled(&received);
                        stats.dead_lettered("refused");
                        received.finish("dead_lettered", Some("refused by the database".into()));
                    }
                }
            }
        }
    }
    if let Some((pressure, nudge)) = nudge {
        pressure.do_send(nudge);
    }
    Ok(())
}

pub(super) async fn settle_applied(
    stats: &Recorder,
    received: &Received,
    id: &str,
    event: &JobEvent,
    outcome: Outcome,
) -> Result<(), SessionError> {
    ack(&received.delivery).await?;
    match outcome {
        Outcome::Applied => {
            log::debug!(
                event = "delivery_applied",
                "delivery.id" = id,
                "job.id":% = event.job.id,
                action:% = event.action();
                "delivery applied"
            );
            stats.settled(received);
            stats.applied(event);
            received.finish("applied", None);
        }
        Outcome::Duplicate => {
            log::info!(
                event = "delivery_duplicate",
                "delivery.id" = id,
                "job.id":% = event.job.id;
                "duplicate delivery: already applied"
            );
            stats.settled(received);
            stats.duplicate();
            received.finish("duplicate", None);
        }
    }
    Ok(())
}

pub(super) async fn ack(delivery: &Delivery) -> Result<(), SessionError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(SessionError::Ack)
}

pub(super) async fn dead_letter(delivery: &Delivery) -> Result<(), SessionError> {
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(drop)
        .map_err(SessionError::Reject)
}
