//! Pressure: how many runners each flavor needs now.
//!
//! Where each part lives:
//! - [`formula`]: the formula, once, and why matching's tie-break counts open jobs differently;
//! - this module: the calculator actor that keeps the broadcaster's map equal to the database;
//! - [`crate::routes::pressure`]: `GET /api/v1/flavors/{name}/pressure` and the streams;
//! - `actors::pressure`, `actors::broadcast`, `actors::stream`: the snapshot with its rendered
//!   lines, the fan-out to subscribers and the NDJSON/SSE responses (shared building blocks);
//! - `schema::queries::flavor_pressures`: the one statement the calculator runs.
//!
//! The calculator: one actor per planner process.
//!
//! What makes it recompute:
//! - `NOTIFY planner_changes`, sent by statement triggers on `job` and `flavor`: changes made by
//!   any planner process on the database (and by hand). The calculator holds the process's only
//!   `LISTEN` connection (tokio-postgres: diesel's blocking connection cannot wait on
//!   notifications), reconnects with capped backoff and recomputes after every (re)connect, since
//!   notifications sent while it was away are lost.
//! - [`Nudge`] from the local consumer after each committed batch, so local changes do not wait
//!   for the NOTIFY round trip. It carries the deliveries' trace context: the recompute's span
//!   (`pressure broadcast`) is a child of the first nudge's context.
//! - Time: a timer fires when the oldest counted job passes the age limit (at least hourly).
//!
//! Bursts coalesce: while a recompute runs, further requests only mark the map dirty, and one
//! more recompute follows. Each recompute ([`compute`]) runs on the blocking thread pool through
//! the r2d2 pool; the result goes to the broadcaster, which ignores an unchanged map.
//!
//! The recompute does not count open jobs: statement triggers on `job` keep signed per-flavor
//! counts (`job_open_delta`, written in the same transaction as each job change, so they are
//! exact in every snapshot); the recompute sums those few rows, subtracts the open jobs past the
//! age limit and finds the next age-out with two index range scans per flavor, so its cost grows
//! with flavors, not with open jobs or history.

use std::time::{Duration, Instant};

use ::actors::reconnect::{self, Backoff, Connected};
use ::actors::{broadcast::Publish, pressure::PressureMap};
use actix::prelude::*;
use diesel::{PgConnection, QueryResult};
use opentelemetry::{
    global,
    trace::{Span, Tracer},
    KeyValue,
};
use schema::queries::{self, FlavorPressureRow};
use secrecy::{ExposeSecret, SecretString};

use crate::store::PgPool;

pub mod formula;

/// The channel the schema's triggers notify.
pub const CHANNEL: &str = "planner_changes";

/// Longest wait between two recomputations when nothing happens (a bound on any missed change).
const IDLE_RECOMPUTE: Duration = Duration::from_secs(3600);

/// Added to the age-out delay so the job has certainly aged out when the recompute runs.
const AGE_OUT_MARGIN: Duration = Duration::from_millis(10);

/// Delay before retrying a recompute that failed (database unavailable).
const FAILED_RECOMPUTE_RETRY: Duration = Duration::from_secs(1);

/// Above this many `job_open_delta` rows a recompute compacts them (one row per flavor) after
/// reading them, so reading the counts stays a scan of a few hundred rows at most.
pub const COMPACT_ABOVE: i64 = 512;

/// Reads every flavor's pressure: the map, and how long until the oldest counted job ages out
/// (`None`: no counted job). This is the whole of what the calculator runs against the database:
/// one statement whose cost grows with flavors, not open jobs (see
/// [`queries::flavor_pressures`]), after compacting the open-job counts when they have grown.
pub fn compute(
    conn: &mut PgConnection,
    max_age: Duration,
) -> QueryResult<(PressureMap, Option<Duration>)> {
    let rows = queries::flavor_pressures(conn, max_age.as_secs_f64())?;
    // The counts the next recompute reads: compacted once they have grown.
    if rows
        .first()
        .is_some_and(|row| row.delta_rows > COMPACT_ABOVE)
    {
        let removed = queries::compact_open_job_deltas(conn)?;
        log::debug!(
            event = "open_job_counts_compacted",
            rows = removed;
            "open-job count rows compacted"
        );
    }
    Ok(fold(rows))
}

/// Pressure of each row, and the earliest age-out among enabled flavors.
pub fn fold(rows: Vec<FlavorPressureRow>) -> (PressureMap, Option<Duration>) {
    let mut next: Option<Duration> = None;
    let mut map = PressureMap::new();
    for row in rows {
        if let (false, Some(ms)) = (row.is_disabled, row.oldest_expires_in_ms) {
            let delay = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
            next = Some(next.map_or(delay, |current| current.min(delay)));
        }
        let pressure = formula::pressure(row.minimum_pressure, row.is_disabled, row.open_jobs);
        map.insert(row.name, pressure);
    }
    (map, next)
}

/// Ask the calculator to recompute (coalesced with any recompute already running or pending).
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "()")]
pub struct Nudge {
    /// Trace context of what caused the change (the consumer's deliveries), if any.
    pub context: Option<opentelemetry::Context>,
}

/// Settings of the calculator.
#[derive(Debug, Clone)]
pub struct CalculatorConfig {
    /// `POSTGRESQL_DB_LISTEN_CONNECT_STRING`: the database, for the `LISTEN` connection
    /// (TLS as its `sslmode` says: [`crate::pgtls`]).
    pub listen_database_url: SecretString,
    /// `APP_JOB_MAX_AGE`.
    pub job_max_age: Duration,
    /// Connect timeout of the `LISTEN` connection.
    pub connect_timeout: Duration,
    /// Delays between `LISTEN` reconnects.
    pub retry: Backoff,
}

/// The pressure-calculator actor. See the module documentation.
pub struct Calculator {
    config: CalculatorConfig,
    pool: PgPool,
    broadcaster: Recipient<Publish>,
    running: bool,
    dirty: bool,
    /// Trace context of the first nudge since the last recompute started.
    context: Option<opentelemetry::Context>,
    timer: Option<SpawnHandle>,
}

impl Calculator {
    /// A calculator reading through `pool` and publishing to `broadcaster`.
    pub fn new(config: CalculatorConfig, pool: PgPool, broadcaster: Recipient<Publish>) -> Self {
        Self {
            config,
            pool,
            broadcaster,
            running: false,
            dirty: false,
            context: None,
            timer: None,
        }
    }

    fn request(&mut self, context: Option<opentelemetry::Context>, ctx: &mut Context<Self>) {
        if self.context.is_none() {
            self.context = context;
        }
        if self.running {
            self.dirty = true;
        } else {
            self.recompute(ctx);
        }
    }

    fn recompute(&mut self, ctx: &mut Context<Self>) {
        self.running = true;
        self.dirty = false;
        let parent = self.context.take().unwrap_or_default();
        let tracer = global::tracer("planner");
        let mut span = tracer
            .span_builder("pressure broadcast")
            .start_with_context(&tracer, &parent);
        let (pool, max_age, broadcaster) = (
            self.pool.clone(),
            self.config.job_max_age,
            self.broadcaster.clone(),
        );
        let work = async move {
            let started = Instant::now();
            let computed = actix_web::rt::task::spawn_blocking(move || {
                let mut conn = pool.get().map_err(|err| err.to_string())?;
                compute(&mut conn, max_age).map_err(|err| err.to_string())
            })
            .await
            .map_err(|err| err.to_string())
            .and_then(|result| result)
            .map_err(Some);
            let query_time = started.elapsed();
            let result = match computed {
                Ok((map, next)) => {
                    let flavors = map.len();
                    match broadcaster.send(Publish(map)).await {
                        Ok(generation) => {
                            span.set_attribute(KeyValue::new(
                                "pressure.generation",
                                i64::try_from(generation).unwrap_or(i64::MAX),
                            ));
                            log::debug!(
                                event = "pressure_recomputed",
                                generation,
                                flavors,
                                query_ms = format!("{:.3}", query_time.as_secs_f64() * 1000.0);
                                "pressure recomputed"
                            );
                            Ok(next)
                        }
                        // The broadcaster has stopped (shutdown): nothing left to do.
                        Err(_) => Err(None),
                    }
                }
                Err(err) => Err(err),
            };
            span.end();
            result
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.running = false;
            match result {
                Ok(next) => act.schedule(next.unwrap_or(IDLE_RECOMPUTE), ctx),
                Err(None) => {
                    log::info!(
                        event = "pressure_calculator_stopped",
                        reason = "broadcaster stopped";
                        "pressure calculator stopped"
                    );
                    ctx.stop();
                    return;
                }
                Err(Some(err)) => {
                    log::warn!(
                        event = "pressure_recompute_failed",
                        error:% = err,
                        retry_in_ms = FAILED_RECOMPUTE_RETRY.as_millis();
                        "cannot recompute the pressure"
                    );
                    act.schedule(FAILED_RECOMPUTE_RETRY, ctx);
                }
            }
            if act.dirty {
                act.recompute(ctx);
            }
        }));
    }

    /// (Re)arms the one timer: a recompute after `delay` (capped at [`IDLE_RECOMPUTE`]).
    fn schedule(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let delay = delay.min(IDLE_RECOMPUTE) + AGE_OUT_MARGIN;
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.request(None, ctx);
        }));
    }
}

impl Actor for Calculator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(listen_forever(self.config.clone(), ctx.address()).into_actor(self));
        // Whatever the LISTEN connection does, start from the database's state now.
        self.request(None, ctx);
    }
}

impl Handler<Nudge> for Calculator {
    type Result = ();

    fn handle(&mut self, nudge: Nudge, ctx: &mut Self::Context) {
        self.request(nudge.context, ctx);
    }
}

async fn listen_forever(config: CalculatorConfig, calculator: Addr<Calculator>) {
    let (config, calculator) = (&config, &calculator);
    reconnect::forever(
        config.retry,
        |listening| async move { Err::<(), _>(listen(config, calculator, listening).await) },
        |ended, delay| {
            if let Err(error) = ended {
                log::warn!(
                    event = "pressure_listen_failed",
                    error:% = error,
                    retry_in_ms = delay.as_millis();
                    "cannot listen for changes"
                );
            }
        },
    )
    .await;
}

/// Why a `LISTEN` connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    /// The connection string or its TLS settings cannot be used (never quoting the string).
    #[error("{0}")]
    Target(crate::pgtls::TlsError),
    /// No connection.
    #[error("connect: {}", crate::pgtls::with_causes(.0))]
    Connect(tokio_postgres::Error),
    /// `LISTEN` refused.
    #[error("listen: {}", crate::pgtls::with_causes(.0))]
    Listen(tokio_postgres::Error),
    /// The connection failed while listening.
    #[error("connection: {}", crate::pgtls::with_causes(.0))]
    Connection(tokio_postgres::Error),
    /// The server closed the connection.
    #[error("connection closed")]
    Closed,
    /// The task reading the connection ended abnormally.
    #[error("listener task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One `LISTEN` connection's life; returns why it ended.
async fn listen(
    config: &CalculatorConfig,
    calculator: &Addr<Calculator>,
    listening: Connected,
) -> ListenError {
    let mut target =
        match crate::pgtls::ListenTarget::parse(config.listen_database_url.expose_secret()) {
            Ok(target) => target,
            Err(err) => return ListenError::Target(err),
        };
    target.config.application_name("planner-pressure");
    let (client, mut connection) = match target.connect(config.connect_timeout).await {
        Ok(pair) => pair,
        Err(err) => return ListenError::Connect(err),
    };
    // The connection object does the I/O; it hands over notifications as they arrive.
    let forward = calculator.clone();
    let driver = actix_web::rt::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    forward.do_send(Nudge::default());
                }
                Ok(_) => {}
                Err(err) => return ListenError::Connection(err),
            }
        }
        ListenError::Closed
    });
    if let Err(err) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return ListenError::Listen(err);
    }
    listening.mark();
    log::info!(event = "pressure_listening", channel = CHANNEL; "listening for changes");
    // Notifications sent while this process was not listening are lost: recompute once.
    calculator.do_send(Nudge::default());
    let outcome = driver.await.unwrap_or_else(ListenError::from);
    drop(client);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, disabled: bool, min: i32, open: i64, ms: Option<f64>) -> FlavorPressureRow {
        FlavorPressureRow {
            name: name.into(),
            is_disabled: disabled,
            minimum_pressure: min,
            open_jobs: open,
            oldest_expires_in_ms: ms,
            delta_rows: 0,
        }
    }

    #[test]
    fn pressure_is_open_jobs_at_least_the_minimum_and_disabled_flavors_report_the_minimum() {
        let (map, next) = fold(vec![
            row("busy", false, 1, 5, Some(9_000.0)),
            row("quiet", false, 3, 1, Some(2_000.0)),
            row("off", true, 2, 7, Some(10.0)),
            row("empty", false, 0, 0, None),
        ]);
        let expected: PressureMap = [("busy", 5), ("quiet", 3), ("off", 2), ("empty", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(map, expected);
        // The disabled flavor's jobs do not count, so neither does their age.
        assert_eq!(next, Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_overdue_age_out_is_due_now_and_no_open_job_means_no_timer() {
        let (_, next) = fold(vec![row("a", false, 0, 1, Some(-5.0))]);
        assert_eq!(next, Some(Duration::ZERO));
        let (map, next) = fold(vec![row("a", false, 0, 0, None)]);
        assert_eq!(map.get("a"), Some(&0));
        assert_eq!(next, None);
    }
}
