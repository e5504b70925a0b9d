//! The job consumer: reads the gateway's deliveries from RabbitMQ and hands them to the job
//! store, acknowledging each only after the transaction that applied it has committed.
//!
//! - Manual acks and a bounded prefetch; not an exclusive consumer, so planners share a queue.
//! - Poison deliveries are rejected without requeue and land in the dead-letter queue.
//! - While PostgreSQL is down the consumer keeps retrying the same batch with capped backoff and
//!   takes nothing new: nothing is acknowledged, nothing is dead-lettered.
//! - When the broker goes away the consumer reconnects with capped backoff; deliveries that were
//!   not acknowledged are redelivered, and the delivery table makes that harmless.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Actor, AsyncContext, Context, Recipient, WrapFuture};
use actors::amqp::{self, Topology};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    domain::{
        job::JobEvent,
        webhook::{classify, Classified, Headers},
    },
    messages::{ApplyBatch, Outcome, StoreError},
    pressure::Nudge,
};

/// How many times a batch the database refuses (while answering) is retried before its
/// deliveries are tried one by one, and a single delivery before it is dead-lettered.
const REFUSED_ATTEMPTS: u32 = 5;

/// What the consumer has done so far; shared with whoever wants to watch (tests, metrics).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Applied to the database and acknowledged.
    pub applied: AtomicU64,
    /// Duplicate `X-GitHub-Delivery` ids: counted, acknowledged, not applied again.
    pub duplicates: AtomicU64,
    /// Not for the planner (other events, other actions, GitHub-hosted jobs): acknowledged.
    pub discarded: AtomicU64,
    /// Rejected without requeue (to the dead-letter queue).
    pub dead_lettered: AtomicU64,
    /// Failed attempts to apply a batch (database down or refusing).
    pub store_failures: AtomicU64,
    /// Connection attempts to the broker (the first one included).
    pub connect_attempts: AtomicU64,
    /// Whether a consumer is registered with the broker right now.
    pub consuming: AtomicBool,
}

impl ConsumerStats {
    /// Deliveries settled (acknowledged or rejected) so far.
    pub fn settled(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
            + self.duplicates.load(Ordering::SeqCst)
            + self.discarded.load(Ordering::SeqCst)
            + self.dead_lettered.load(Ordering::SeqCst)
    }
}

/// Settings of the consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub rabbitmq_url: SecretString,
    pub topology: Topology,
    pub prefetch: u16,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Told after every committed batch, so local changes reach streams without waiting for
    /// PostgreSQL's NOTIFY.
    pub pressure: Option<Recipient<Nudge>>,
}

/// The consumer actor. It owns the AMQP connection and its reconnects; stopping the actor stops
/// consuming (unacknowledged deliveries go back to the queue).
pub struct Consumer {
    config: ConsumerConfig,
    store: Recipient<ApplyBatch>,
    stats: Arc<ConsumerStats>,
}

impl Consumer {
    /// A consumer handing job events to `store`.
    pub fn new(
        config: ConsumerConfig,
        store: Recipient<ApplyBatch>,
        stats: Arc<ConsumerStats>,
    ) -> Self {
        Self {
            config,
            store,
            stats,
        }
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let run = run(self.config.clone(), self.store.clone(), self.stats.clone());
        ctx.spawn(run.into_actor(self));
    }
}

fn backoff(config: &ConsumerConfig) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(config.retry_min_delay)
        .with_max_delay(config.retry_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(config: ConsumerConfig, store: Recipient<ApplyBatch>, stats: Arc<ConsumerStats>) {
    let mut delays = backoff(&config);
    loop {
        let mut connected = false;
        let result = session(&config, &store, &stats, &mut connected).await;
        stats.consuming.store(false, Ordering::SeqCst);
        if connected {
            delays = backoff(&config);
        }
        let delay = delays.next().unwrap_or(config.retry_max_delay);
        match result {
            Ok(()) => log::warn!(
                "event=consumer_stream_ended queue={} retry_in={delay:?}",
                config.topology.queue
            ),
            Err(err) => log::warn!(
                "event=consumer_failed queue={} error=\"{err}\" retry_in={delay:?}",
                config.topology.queue
            ),
        }
        tokio::time::sleep(delay).await;
    }
}

/// One connection's life: connect, declare, consume until the broker or the channel goes away.
async fn session(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &ConsumerStats,
    connected: &mut bool,
) -> Result<(), String> {
    stats.connect_attempts.fetch_add(1, Ordering::SeqCst);
    let connection = amqp::connect(
        config.rabbitmq_url.expose_secret(),
        "planner-consumer",
        Duration::from_secs(10),
    )
    .await?;
    let result = consume(config, store, stats, connected, &connection).await;
    // Closing (rather than dropping) the connection hands any unacknowledged deliveries back to
    // the broker at once, even when only the channel failed.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "reconnecting".into()),
    )
    .await;
    result
}

async fn consume(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &ConsumerStats,
    connected: &mut bool,
    connection: &lapin::Connection,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    config
        .topology
        .declare(&channel)
        .await
        .map_err(|err| err.to_string())?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|err| err.to_string())?;
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
        .await
        .map_err(|err| err.to_string())?;
    *connected = true;
    stats.consuming.store(true, Ordering::SeqCst);
    log::info!(
        "event=consumer_started queue={} prefetch={}",
        config.topology.queue,
        config.prefetch
    );

    while let Some(first) = deliveries.next().await {
        let mut batch = vec![first.map_err(|err| err.to_string())?];
        // Take whatever else has already arrived, without waiting: one transaction for all.
        while batch.len() < usize::from(config.prefetch) {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery.map_err(|err| err.to_string())?),
                _ => break,
            }
        }
        handle_batch(config, store, stats, batch).await?;
    }
    Ok(())
}

async fn handle_batch(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &ConsumerStats,
    batch: Vec<Delivery>,
) -> Result<(), String> {
    let mut events: Vec<(Delivery, String, JobEvent)> = Vec::new();
    for delivery in batch {
        let headers = headers(&delivery);
        match classify(&headers, &delivery.data) {
            Ok(Classified::Apply {
                delivery: id,
                event,
            }) => events.push((delivery, id, *event)),
            Ok(Classified::Discard(reason)) => {
                log::debug!(
                    "event=delivery_discarded delivery.id={} reason=\"{reason}\"",
                    headers.delivery.as_deref().unwrap_or("-")
                );
                ack(&delivery).await?;
                stats.discarded.fetch_add(1, Ordering::SeqCst);
            }
            Err(poison) => {
                log::warn!(
                    "event=delivery_dead_lettered delivery.id={} reason=\"{poison}\"",
                    headers.delivery.as_deref().unwrap_or("-")
                );
                dead_letter(&delivery).await?;
                stats.dead_lettered.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    if events.is_empty() {
        return Ok(());
    }

    // The calculator's span joins the trace of the batch's first delivery.
    let nudge = config.pressure.as_ref().map(|pressure| {
        let context = events[0]
            .0
            .properties
            .headers()
            .as_ref()
            .map(actors::telemetry::extract);
        (pressure, Nudge { context })
    });
    let payload: Vec<(String, JobEvent)> = events
        .iter()
        .map(|(_, id, event)| (id.clone(), event.clone()))
        .collect();
    match apply(config, store, stats, payload, REFUSED_ATTEMPTS).await {
        Some(outcomes) => {
            for ((delivery, id, event), outcome) in events.iter().zip(outcomes) {
                settle_applied(stats, delivery, id, event, outcome).await?;
            }
        }
        None => {
            // The database keeps refusing the batch while answering: find the culprit(s).
            for (delivery, id, event) in events {
                match apply(
                    config,
                    store,
                    stats,
                    vec![(id.clone(), event.clone())],
                    REFUSED_ATTEMPTS,
                )
                .await
                {
                    Some(outcomes) => {
                        settle_applied(stats, &delivery, &id, &event, outcomes[0]).await?
                    }
                    None => {
                        log::error!(
                            "event=delivery_dead_lettered delivery.id={id} job.id={} reason=\"refused by the database\"",
                            event.id
                        );
                        dead_letter(&delivery).await?;
                        stats.dead_lettered.fetch_add(1, Ordering::SeqCst);
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

/// Applies a batch. Retries forever while the database is unavailable; gives up (`None`) after
/// `attempts` refusals.
async fn apply(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &ConsumerStats,
    batch: Vec<(String, JobEvent)>,
    attempts: u32,
) -> Option<Vec<Outcome>> {
    let mut delays = backoff(config);
    let mut refused = 0;
    loop {
        let error = match store.send(ApplyBatch(batch.clone())).await {
            Ok(Ok(outcomes)) => return Some(outcomes),
            Ok(Err(err)) => err,
            Err(err) => StoreError::Unavailable(format!("job store: {err}")),
        };
        stats.store_failures.fetch_add(1, Ordering::SeqCst);
        if matches!(error, StoreError::Refused(_)) {
            refused += 1;
            if refused >= attempts {
                return None;
            }
        }
        let delay = delays.next().unwrap_or(config.retry_max_delay);
        log::warn!(
            "event=store_failed deliveries={} error=\"{error}\" retry_in={delay:?}",
            batch.len()
        );
        tokio::time::sleep(delay).await;
    }
}

async fn settle_applied(
    stats: &ConsumerStats,
    delivery: &Delivery,
    id: &str,
    event: &JobEvent,
    outcome: Outcome,
) -> Result<(), String> {
    ack(delivery).await?;
    match outcome {
        Outcome::Applied => {
            log::debug!(
                "event=delivery_applied delivery.id={id} job.id={} action={}",
                event.id,
                event.action
            );
            stats.applied.fetch_add(1, Ordering::SeqCst);
        }
        Outcome::Duplicate => {
            log::info!(
                "event=delivery_duplicate delivery.id={id} job.id={}",
                event.id
            );
            stats.duplicates.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

async fn ack(delivery: &Delivery) -> Result<(), String> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(|err| format!("ack: {err}"))
}

async fn dead_letter(delivery: &Delivery) -> Result<(), String> {
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(drop)
        .map_err(|err| format!("reject: {err}"))
}

fn headers(delivery: &Delivery) -> Headers {
    let header = |name: &str| -> Option<String> {
        let table = delivery.properties.headers().as_ref()?;
        match table.inner().get(name)? {
            AMQPValue::LongString(value) => {
                Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            }
            AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
            _ => None,
        }
    };
    Headers {
        event: header("X-GitHub-Event"),
        delivery: header("X-GitHub-Delivery"),
    }
}
