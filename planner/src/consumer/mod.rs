//! The job consumer: reads the gateway's deliveries from RabbitMQ and hands them to the job
//! store, acknowledging each only after the transaction that applied it has committed.
//!
//! - Manual acks and a bounded prefetch; not an exclusive consumer, so planners share a queue.
//! - Poison deliveries are rejected without requeue and land in the dead-letter queue.
//! - While PostgreSQL is down the consumer keeps retrying the same batch with capped backoff and
//!   takes nothing new: nothing is acknowledged, nothing is dead-lettered.
//! - When the broker goes away the consumer reconnects with capped backoff; deliveries that were
//!   not acknowledged are redelivered, and the delivery table makes that harmless.
//!
//! Where each part lives: the session (connect, declare, consume, queue-depth polling) in
//! `session`; batch sizes, per-job ordering and sorting deliveries in `batching`; applying and
//! settling in `apply`; retries and the bisection of a refused batch in `retry` and `apply`;
//! spans in `spans`; counters and metrics in `record`. This module holds the configuration, the
//! actor and its reconnect loop ([`actors::reconnect::forever`]).
//!
//! Tracing: each delivery continues the trace whose W3C context the gateway put in its AMQP
//! headers (`traceparent`) with a `consume` span (kind consumer; `github.delivery_id`,
//! `github.event`, `github.action`, `github.job_id`), ended once the delivery is settled. The
//! database transaction gets one `commit` span *per delivery*, child of that delivery's
//! `consume` span: a batch commits several deliveries in one transaction, so their `commit`
//! spans cover the same interval and carry `planner.batch_size`. One span per delivery (rather
//! than one span with links) keeps every webhook's trace complete on its own: receive ->
//! publish -> consume -> commit.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Actor, AsyncContext, Context, Recipient, WrapFuture};
use actors::amqp::Topology;
use actors::reconnect::{self, Backoff};
use secrecy::SecretString;

use crate::{messages::ApplyBatch, metrics::Metrics, pressure::Nudge};

mod apply;
mod batching;
mod record;
mod retry;
mod session;
mod spans;

use {record::Recorder, session::session};

pub use batching::{batch_limit, BATCHES_IN_FLIGHT, MAX_BATCH};

/// Why a session with the broker ended: the consumer logs it and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No connection (refused, unreachable, or no answer in time).
    #[error("{0}")]
    Connect(#[from] actors::amqp::ConnectError),
    /// The channel or the connection failed while declaring or consuming.
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    /// An acknowledgement did not reach the broker (the delivery will come again).
    #[error("ack: {0}")]
    Ack(lapin::Error),
    /// A rejection (to the dead-letter queue) did not reach the broker.
    #[error("reject: {0}")]
    Reject(lapin::Error),
}

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
    /// Delays between broker reconnects and between database retries.
    pub retry: Backoff,
    /// How often the depths of the job queue and the dead-letter queue are polled (metrics).
    pub queue_depth_interval: Duration,
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
    metrics: Option<Metrics>,
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
            metrics: None,
        }
    }

    /// Also records what the consumer does in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let recorder = Recorder {
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
        };
        let run = run(self.config.clone(), self.store.clone(), recorder);
        ctx.spawn(run.into_actor(self));
    }
}

async fn run(config: ConsumerConfig, store: Recipient<ApplyBatch>, stats: Recorder) {
    let (config, store, stats) = (&config, &store, &stats);
    let session = |connected| session(config, store, stats, connected);
    reconnect::forever(config.retry, session, |result, delay| {
        stats.consuming(false);
        match result {
            Ok(()) => log::warn!(
                event = "consumer_stream_ended",
                queue = config.topology.queue,
                retry_in_ms = delay.as_millis();
                "the broker ended the delivery stream"
            ),
            Err(err) => log::warn!(
                event = "consumer_failed",
                queue = config.topology.queue,
                error:% = err,
                retry_in_ms = delay.as_millis();
                "consumer failed"
            ),
        }
    })
    .await;
}
