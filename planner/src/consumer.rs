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
    time::{Duration, Instant},
};

use actix::{Actor, AsyncContext, Context, Recipient, WrapFuture};
use actors::amqp::{self, Topology};
use actors::reconnect::{self, Backoff, Connected};
use actors::telemetry;
use futures::{stream::FuturesUnordered, FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use opentelemetry::{
    global,
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    Context as TraceContext, KeyValue,
};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    domain::{
        job::JobEvent,
        webhook::{classify, Classified, Headers},
    },
    messages::{ApplyBatch, Outcome, StoreError},
    metrics::Metrics,
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

/// Where the consumer records what it does: the [`ConsumerStats`] counters and, when given,
/// the Prometheus metrics.
struct Recorder {
    stats: Arc<ConsumerStats>,
    metrics: Option<Metrics>,
}

impl Recorder {
    fn connect_attempt(&self) {
        self.stats.connect_attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(metrics) = &self.metrics {
            metrics.broker_connects.inc();
        }
    }

    fn consuming(&self, consuming: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.broker_connected.set(i64::from(consuming));
        }
        self.stats.consuming.store(consuming, Ordering::SeqCst);
    }

    // The metrics are recorded before the shared counters, so whoever sees a counter move
    // (tests) also sees the metrics.
    fn applied(&self, event: &JobEvent) {
        if let Some(metrics) = &self.metrics {
            metrics
                .consumed
                .with_label_values(&[event.platform.as_str(), event.action.as_str()])
                .inc();
        }
        self.stats.applied.fetch_add(1, Ordering::SeqCst);
    }

    fn duplicate(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.duplicates.inc();
        }
        self.stats.duplicates.fetch_add(1, Ordering::SeqCst);
    }

    fn discarded(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.discarded.inc();
        }
        self.stats.discarded.fetch_add(1, Ordering::SeqCst);
    }

    fn dead_lettered(&self, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.dead_lettered.with_label_values(&[reason]).inc();
            metrics.errors.inc();
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::SeqCst);
    }

    fn batch(&self, deliveries: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.batch_deliveries.observe(deliveries as f64);
        }
    }

    fn store_failed(&self, deliveries: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.errors.inc_by(deliveries as u64);
        }
        self.stats.store_failures.fetch_add(1, Ordering::SeqCst);
    }

    fn settled(&self, received: &Received) {
        if let Some(metrics) = &self.metrics {
            metrics
                .processing
                .observe(received.at.elapsed().as_secs_f64());
        }
    }
}

/// A delivery being processed: when it arrived and the context of its `consume` span.
struct Received {
    delivery: Delivery,
    at: Instant,
    trace: TraceContext,
}

impl Received {
    /// Starts the `consume` span, continuing the trace from the delivery's AMQP headers.
    fn new(delivery: Delivery, at: Instant, queue: &str, headers: &Headers) -> Self {
        let parent = delivery
            .properties
            .headers()
            .as_ref()
            .map(telemetry::extract)
            .unwrap_or_default();
        let tracer = global::tracer("planner");
        let span = tracer
            .span_builder("consume")
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.destination.name", queue.to_owned()),
                KeyValue::new(
                    "github.delivery_id",
                    headers.delivery.clone().unwrap_or_default(),
                ),
                KeyValue::new("github.event", headers.event.clone().unwrap_or_default()),
            ])
            .start_with_context(&tracer, &parent);
        Self {
            delivery,
            at,
            trace: parent.with_span(span),
        }
    }

    fn describe(&self, event: &JobEvent) {
        let span = self.trace.span();
        span.set_attribute(KeyValue::new("github.action", event.action.as_str()));
        span.set_attribute(KeyValue::new("github.job_id", event.id));
    }

    /// Ends the `consume` span with what became of the delivery.
    fn finish(&self, outcome: &'static str, error: Option<String>) {
        let span = self.trace.span();
        span.set_attribute(KeyValue::new("planner.outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end();
    }
}

/// Starts one `commit` span per delivery of a transaction, each the child of its delivery's
/// `consume` span.
fn commit_spans(batch: &[&Received]) -> Vec<TraceContext> {
    let tracer = global::tracer("planner");
    let size = batch.len() as i64;
    batch
        .iter()
        .map(|received| {
            let span = tracer
                .span_builder("commit")
                .with_kind(SpanKind::Internal)
                .with_attributes([
                    KeyValue::new("db.system", "postgresql"),
                    KeyValue::new("planner.batch_size", size),
                ])
                .start_with_context(&tracer, &received.trace);
            received.trace.with_span(span)
        })
        .collect()
}

/// Ends `commit` spans: committed, or (`Some(error)`) given up on.
fn end_commit_spans(spans: Vec<TraceContext>, error: Option<&str>) {
    for context in spans {
        let span = context.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
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
                "event=consumer_stream_ended queue={} retry_in={delay:?}",
                config.topology.queue
            ),
            Err(err) => log::warn!(
                "event=consumer_failed queue={} error=\"{err}\" retry_in={delay:?}",
                config.topology.queue
            ),
        }
    })
    .await;
}

/// One connection's life: connect, declare, consume until the broker or the channel goes away.
async fn session(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    connected: Connected,
) -> Result<(), String> {
    stats.connect_attempt();
    let connection = amqp::connect(
        config.rabbitmq_url.expose_secret(),
        "planner-consumer",
        Duration::from_secs(10),
    )
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

async fn consume(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    connected: &Connected,
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
    connected.mark();
    stats.consuming(true);
    log::info!(
        "event=consumer_started queue={} prefetch={}",
        config.topology.queue,
        config.prefetch
    );
    let _depths = match &stats.metrics {
        Some(metrics) => Some(DepthPoller::start(connection, config, metrics.clone()).await?),
        None => None,
    };

    // Up to BATCHES_IN_FLIGHT transactions at once, each of at most half the prefetch: while
    // one commits, the broker has room to send the next batch, and the database works on two.
    // A job's events are applied in the order they arrived (queued and waiting follow arrival
    // order): a batch holding a job that a batch in flight holds waits for it.
    let largest = batch_limit(config.prefetch);
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
        let mut batch = vec![first.map_err(|err| err.to_string())?];
        let at = Instant::now();
        // Take whatever else has already arrived, without waiting: one transaction for all.
        while batch.len() < largest {
            match deliveries.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery.map_err(|err| err.to_string())?),
                _ => break,
            }
        }
        let events = classify_batch(config, stats, batch, at).await?;
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
            apply_events(config, store, stats, events).await?;
            Ok::<_, String>(jobs)
        });
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// The jobs of the batches in flight, each with the number of batches holding it.
#[derive(Debug, Default)]
struct BusyJobs(std::collections::HashMap<(String, i64), usize>);

impl BusyJobs {
    /// The distinct jobs of a batch's events.
    fn of(events: &Events) -> Vec<(String, i64)> {
        let mut jobs: Vec<(String, i64)> = events
            .iter()
            .map(|(_, _, event)| (event.platform.clone(), event.id))
            .collect();
        jobs.sort();
        jobs.dedup();
        jobs
    }

    fn holds_any(&self, jobs: &[(String, i64)]) -> bool {
        jobs.iter().any(|job| self.0.contains_key(job))
    }

    fn take(&mut self, jobs: &[(String, i64)]) {
        for job in jobs {
            *self.0.entry(job.clone()).or_default() += 1;
        }
    }

    fn release(&mut self, jobs: Vec<(String, i64)>) {
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

/// Polls the number of messages ready in the job queue and the dead-letter queue (passive
/// declares on a channel of its own) into `github_runner_planner_queue_messages`; stops when
/// dropped, that is when the session ends.
struct DepthPoller(tokio::task::JoinHandle<()>);

impl DepthPoller {
    async fn start(
        connection: &lapin::Connection,
        config: &ConsumerConfig,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|err| err.to_string())?;
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
                            log::debug!("event=queue_depth_failed queue={queue} error=\"{err}\"");
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

/// The job events of a batch: each delivery, its `X-GitHub-Delivery` and its event.
type Events = Vec<(Received, String, JobEvent)>;

/// Classifies a batch's deliveries: settles at once those that are not job events (discarded
/// or dead-lettered) and answers the job events, in arrival order.
async fn classify_batch(
    config: &ConsumerConfig,
    stats: &Recorder,
    batch: Vec<Delivery>,
    at: Instant,
) -> Result<Events, String> {
    let mut events: Events = Vec::new();
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
                    "event=delivery_discarded delivery.id={} reason=\"{reason}\"",
                    headers.delivery.as_deref().unwrap_or("-")
                );
                ack(&received.delivery).await?;
                stats.settled(&received);
                stats.discarded();
                received.finish("discarded", None);
            }
            Err(poison) => {
                log::warn!(
                    "event=delivery_dead_lettered delivery.id={} reason=\"{poison}\"",
                    headers.delivery.as_deref().unwrap_or("-")
                );
                dead_letter(&received.delivery).await?;
                stats.settled(&received);
                stats.dead_lettered("invalid");
                received.finish("dead_lettered", Some(poison.to_string()));
            }
        }
    }
    Ok(events)
}

/// Applies a batch's job events in one transaction and settles them (acknowledged after the
/// commit); splits a batch the database keeps refusing to find the deliveries at fault.
async fn apply_events(
    config: &ConsumerConfig,
    store: &Recipient<ApplyBatch>,
    stats: &Recorder,
    events: Events,
) -> Result<(), String> {
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
                            "event=delivery_dead_lettered delivery.id={id} job.id={} reason=\"refused by the database\"",
                            event.id
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

/// Applies a batch. Retries forever while the database is unavailable; gives up (`None`) after
/// `attempts` refusals. Each failed attempt is an event (`store_failed`) on the `commit` spans.
async fn apply(
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
            "event=store_failed deliveries={} error=\"{error}\" retry_in={delay:?}",
            batch.len()
        );
        tokio::time::sleep(delay).await;
    }
}

async fn settle_applied(
    stats: &Recorder,
    received: &Received,
    id: &str,
    event: &JobEvent,
    outcome: Outcome,
) -> Result<(), String> {
    ack(&received.delivery).await?;
    match outcome {
        Outcome::Applied => {
            log::debug!(
                "event=delivery_applied delivery.id={id} job.id={} action={}",
                event.id,
                event.action
            );
            stats.settled(received);
            stats.applied(event);
            received.finish("applied", None);
        }
        Outcome::Duplicate => {
            log::info!(
                "event=delivery_duplicate delivery.id={id} job.id={}",
                event.id
            );
            stats.settled(received);
            stats.duplicate();
            received.finish("duplicate", None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_half_the_prefetch_at_least_one_at_most_max_batch() {
        assert_eq!(batch_limit(1), 1);
        assert_eq!(batch_limit(256), 128);
        assert_eq!(batch_limit(u16::MAX), MAX_BATCH);
    }
}
