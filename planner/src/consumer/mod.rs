//! The job consumer: reads the gateway's deliveries from RabbitMQ and hands them to the job
//! store, acknowledging each only after the transaction that applied it has committed.
//!
//! - Manual acks and a bounded prefetch; not an exclusive consumer, so planners share a queue.
//! - Poison deliveries are rejected without requeue and land in the dead-letter queue.
//! - While PostgreSQL is down the consumer keeps retrying the same batch with capped backoff and
//!   takes nothing new: nothing is acknowledged, nothing is dead-lettered.
//! - When the broker goes away the consumer reconnects with capped backoff (to the next node
//!   that answers, when `RABBITMQ_CONNECT_STRING` lists several); deliveries that were not
//!   acknowledged are redelivered, and the delivery table makes that harmless.
//!
//! Where each part lives: the session (connect, declare, consume, queue-depth polling) in
//! `session`; batch sizes, per-job ordering and sorting deliveries in `batching`; applying and
//! settling in `apply`; acknowledging applied deliveries together in `acks`; retries and the
//! bisection of a refused batch in `retry` and `apply`; spans in `spans`; what it records in
//! the planner's metrics in `record`. This module holds the configuration and the reconnect
//! loop ([`actors::reconnect::forever`]), run by [`spawn`] as a plain task until the planner's
//! shutdown.
//!
//! Tracing: each delivery continues the trace whose W3C context the gateway put in its AMQP
//! headers (`traceparent`) with a `consume` span (kind consumer; `github.delivery_id`,
//! `github.event`, `github.action`, `github.job_id`), ended once the delivery is settled. The
//! database transaction gets one `commit` span *per delivery*, child of that delivery's
//! `consume` span: a batch commits several deliveries in one transaction, so their `commit`
//! spans cover the same interval and carry `planner.batch_size`. One span per delivery (rather
//! than one span with links) keeps every webhook's trace complete on its own: receive ->
//! publish -> consume -> commit.

use std::time::Duration;

use actix::Recipient;
use actors::amqp::{Brokers, Topology};
use actors::reconnect::{self, Backoff};
use actors::task::{spawn_until_stopped, ShutdownSignal};
use secrecy::{ExposeSecret, SecretString};

use crate::{messages::ApplyBatch, metrics::Metrics, pressure::Nudge};

mod acks;
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
    /// The queues could not be declared (one of them exists with another type, or the broker
    /// failed meanwhile).
    #[error("{0}")]
    Declare(#[from] actors::amqp::DeclareError),
    /// An acknowledgement did not reach the broker (the delivery will come again).
    #[error("ack: {0}")]
    Ack(lapin::Error),
    /// A rejection (to the dead-letter queue) did not reach the broker.
    #[error("reject: {0}")]
    Reject(lapin::Error),
}

/// Settings of the consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// One AMQP URI or several separated by commas (the nodes of a cluster).
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

/// Starts consuming as a task: one AMQP session at a time and its reconnects, handing job
/// events to `store`, recording what it does in `metrics`, until `shutdown`; then
/// the connection closes and unacknowledged deliveries go back to the queue.
pub fn spawn(
    config: ConsumerConfig,
    store: Recipient<ApplyBatch>,
    metrics: Metrics,
    shutdown: ShutdownSignal,
) {
    let recorder = Recorder { metrics };
    spawn_until_stopped("consumer", shutdown, run(config, store, recorder));
}

async fn run(config: ConsumerConfig, store: Recipient<ApplyBatch>, stats: Recorder) {
    // One list for every session, so a reconnect starts with the node after the lost one.
    let brokers = Brokers::new(config.rabbitmq_url.expose_secret());
    let (config, store, stats, brokers) = (&config, &store, &stats, &brokers);
    let session = |connected| session(config, brokers, store, stats, connected);
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
