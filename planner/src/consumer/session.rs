//! One AMQP session: connect, declare, consume until the broker or the channel goes away; the
//! queue-depth poller that lives as long as the session.

use std::time::{Duration, Instant};

use actix::Recipient;
use actors::amqp::Brokers;
use actors::reconnect::Connected;
use futures::{stream::FuturesUnordered, FutureExt, StreamExt};
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::{messages::ApplyBatch, metrics::Metrics};

use super::{
    acks::Acks,
    apply::{acknowledge_ready, apply_events, Pending},
    batching::{batch_limit, classify_batch, BusyJobs, BATCHES_IN_FLIGHT},
    record::Recorder,
    ConsumerConfig, SessionError,
};

/// One connection's life: connect, declare, consume until the broker or the channel goes away.
pub(super) async fn session(
    config: &ConsumerConfig,
    brokers: &Brokers,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    connected: Connected,
) -> Result<(), SessionError> {
    stats.connect_attempt();
    let connection = brokers
        .connect("planner-consumer", Duration::from_secs(10))
        .await?;
    let result = consume(config, store, stats, &connected, &connection).await;
    // Closing (rather than dropping) the connection hands any unacknowledged deliveries back to
    // the broker at once, even when only the channel failed.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "reconnecting".into()),
    )
    .await;
    result
}

pub(super) async fn consume(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    connected: &Connected,
    connection: &lapin::Connection,
) -> Result<(), SessionError> {
    let channel = connection.create_channel().await?;
    if let Err(err) = config.topology.declare(&channel).await {
        err.log_mismatch("planner-consumer");
        return Err(err.into());
    }
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            config.topology.queue.as_str().into(),
            // The broker names the consumer; several planners may consume the same queue.
            "".into(),
            BasicConsumeOptions {
                no_ack: false,
                exclusive: false,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    connected.mark();
    stats.consuming(true);
    log::info!(
        event = "consumer_started",
        queue = config.topology.queue,
        prefetch = config.prefetch;
        "consumer started"
    );
    let _depths = DepthPoller::start(connection, config, stats.metrics.clone()).await?;

    // Up to BATCHES_IN_FLIGHT transactions at once, each of at most half the prefetch: while
    // one commits, the broker has room to send the next batch, and the database works on two.
    // A job's events are applied in the order they arrived (queued and waiting follow arrival
    // order): a batch holding a job that a batch in flight holds waits for it.
    let largest = batch_limit(config.prefetch);
    let pending: &Pending = &std::cell::RefCell::new(Acks::default());
    let mut in_flight = FuturesUnordered::new();
    let mut busy = BusyJobs::default();
    loop {
        // The next delivery once a transaction can start (until then they gather, to make the
        // next batch larger), settling the batches that finish meanwhile.
        let first = loop {
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => busy.release(done?),
                delivery = deliveries.next(), if in_flight.len() < BATCHES_IN_FLIGHT => {
                    break delivery;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first?];
        let at = Instant::now();
        // Take whatever else has already arrived, without waiting: one transaction for all.
        while batch.len() < largest {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                _ => break,
            }
        }
        let events = classify_batch(config, stats, pending, batch, at).await?;
        // What was discarded or dead-lettered may have been all that held applied ones back.
        acknowledge_ready(stats, pending).await?;
        if events.is_empty() {
            continue;
        }
        let jobs = BusyJobs::of(&events);
        while in_flight.len() >= BATCHES_IN_FLIGHT || busy.holds_any(&jobs) {
            match in_flight.next().await {
                Some(done) => busy.release(done?),
                None => break,
            }
        }
        busy.take(&jobs);
        in_flight.push(async move {
            apply_events(config, store, stats, pending, events).await?;
            Ok::<_, SessionError>(jobs)
        });
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// Polls the number of messages ready in the job queue and the dead-letter queue (passive
/// declares on a channel of its own) into `github_runner_planner_queue_messages`; stops when
/// dropped, that is when the session ends.
pub(super) struct DepthPoller(tokio::task::JoinHandle<()>);

impl DepthPoller {
    pub(super) async fn start(
        connection: &lapin::Connection,
        config: &ConsumerConfig,
        metrics: Metrics,
    ) -> Result<Self, SessionError> {
        let channel = connection.create_channel().await?;
        let queues = [
            (config.topology.queue.clone(), "jobs"),
            (config.topology.dead_letter_queue.clone(), "dead_letter"),
        ];
        let interval = config.queue_depth_interval;
        Ok(Self(actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                for (queue, label) in &queues {
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    };
                    match channel
                        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                        .await
                    {
                        Ok(declared) => metrics
                            .queue_messages
                            .with_label_values(&[label])
                            .set(i64::from(declared.message_count())),
                        Err(err) => {
                            // The session's own channel notices too and reconnects.
                            log::debug!(
                                event = "queue_depth_failed",
                                queue,
                                error:% = err;
                                "cannot read the queue depth"
                            );
                            return;
                        }
                    }
                }
            }
        })))
    }
}

impl Drop for DepthPoller {
    fn drop(&mut self) {
        self.0.abort();
    }
}
