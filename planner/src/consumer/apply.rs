//! Applying a batch's job events and settling each delivery after the commit (acknowledged,
//! together with the older deliveries: [`super::acks`]) or after the database refused it alone
//! (dead-lettered).

use std::cell::RefCell;

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
    acks::Acks,
    batching::Events,
    record::Recorder,
    retry::{apply, REFUSED_ATTEMPTS},
    spans::{commit_spans, end_commit_spans, Received},
    ConsumerConfig, SessionError,
};

/// A delivery whose transaction committed, waiting for its acknowledgement, with what to
/// record once it has it.
pub(super) struct Applied {
    received: Received,
    id: String,
    event: JobEvent,
    outcome: Outcome,
}

/// The session's deliveries not settled yet ([`Acks`]); the consumer's tasks share it within
/// one thread.
pub(super) type Pending = RefCell<Acks<Applied>>;

/// Applies a batch's job events in one transaction and settles them (acknowledged after the
/// commit); splits a batch the database keeps refusing to find the deliveries at fault.
pub(super) async fn apply_events(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    pending: &Pending,
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
            {
                let mut pending = pending.borrow_mut();
                for ((received, id, event), outcome) in events.into_iter().zip(outcomes) {
                    let tag = received.delivery.delivery_tag;
                    pending.applied(
                        tag,
                        Applied {
                            received,
                            id,
                            event,
                            outcome,
                        },
                    );
                }
            }
            acknowledge_ready(stats, pending).await?;
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
                        let tag = received.delivery.delivery_tag;
                        pending.borrow_mut().applied(
                            tag,
                            Applied {
                                received,
                                id,
                                event,
                                outcome: outcomes[0],
                            },
                        );
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
                        pending
                            .borrow_mut()
                            .settled_alone(received.delivery.delivery_tag);
                        stats.settled(&received);
                        stats.dead_lettered("refused");
                        received.finish("dead_lettered", Some("refused by the database".into()));
                    }
                }
                acknowledge_ready(stats, pending).await?;
            }
        }
    }
    if let Some((pressure, nudge)) = nudge {
        pressure.do_send(nudge);
    }
    Ok(())
}

/// Acknowledges the applied deliveries that no older unsettled delivery holds back, with one
/// `basic.ack` (`multiple`) for the newest of them, then records them.
pub(super) async fn acknowledge_ready(
    stats: &Recorder,
    pending: &Pending,
) -> Result<(), SessionError> {
    let ready = pending.borrow_mut().take_ready();
    let Some(newest) = ready.last() else {
        return Ok(());
    };
    // lapin takes the frame at this future's first poll, before any other task of the session
    // can take the next ready deliveries: acknowledgements leave in the order of their tags,
    // and none names a tag a previous one already settled.
    newest
        .received
        .delivery
        .ack(BasicAckOptions { multiple: true })
        .await
        .map_err(SessionError::Ack)?;
    for applied in ready {
        applied.record(stats);
    }
    Ok(())
}

impl Applied {
    /// Logs and counts an acknowledged delivery, and ends its `consume` span.
    fn record(self, stats: &Recorder) {
        let Applied {
            received,
            id,
            event,
            outcome,
        } = self;
        match outcome {
            Outcome::Applied => {
                log::debug!(
                    event = "delivery_applied",
                    "delivery.id" = id,
                    "job.id":% = event.job.id,
                    action:% = event.action();
                    "delivery applied"
                );
                stats.settled(&received);
                stats.applied(&event);
                received.finish("applied", None);
            }
            Outcome::Duplicate => {
                log::info!(
                    event = "delivery_duplicate",
                    "delivery.id" = id,
                    "job.id":% = event.job.id;
                    "duplicate delivery: already applied"
                );
                stats.settled(&received);
                stats.duplicate();
                received.finish("duplicate", None);
            }
        }
    }
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
