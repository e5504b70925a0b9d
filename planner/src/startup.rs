//! Building and running the planner: database pool and migrations, the job-store and consumer
//! actors, and the HTTP server.

use std::time::Duration;

use actix::{Actor, Addr, SyncArbiter};
use actix_web::{dev::Server, web};
use actors::broadcast::{Broadcaster, Shutdown};
use actors::config::bind;
use actors::http::ServerOptions;
use actors::task;
use actors::telemetry::MetricsExport;
use secrecy::ExposeSecret;

use crate::{
    auth::text_sha256,
    config::Config,
    consumer::ConsumerConfig,
    metrics::Metrics,
    pressure::{Calculator, CalculatorConfig},
    routes::{self, health, pressure::PressureService},
    state::AppState,
    store::{build_pool_via, JobStore, PgPool},
};

/// A planner ready to run: its port is bound and its actors are started.
pub struct Application {
    port: u16,
    server: Server,
    metrics_export: MetricsExport,
    metrics: Metrics,
    pool: PgPool,
    /// Stops the consumer and reconciliation tasks.
    tasks: task::Shutdown,
    broadcaster: Addr<Broadcaster>,
}

/// Runs pending migrations through `pool`, after converting a database of Canonical's planner
/// to our schema ([`crate::takeover`]; a database of an unknown shape is refused
/// untouched).
pub fn migrate(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut conn = pool.get()?;
    crate::takeover::convert_canonical(&mut conn)?;
    schema::run_migrations(&mut conn).map_err(|err| anyhow::anyhow!("migrations failed: {err}"))
}

/// Rebuilds the open-job counts behind pressure from the `job` table (`planner recount`);
/// returns the flavors whose count was wrong. See [`schema::queries::recount_open_jobs`].
pub fn recount(pool: &PgPool) -> anyhow::Result<Vec<schema::queries::CountCorrection>> {
    let mut conn = pool.get()?;
    Ok(schema::queries::recount_open_jobs(&mut conn)?)
}

impl Application {
    /// Builds the planner. Must run inside an actix system (`#[actix_web::main]`, tests'
    /// `#[actix_web::test]`).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = build_pool_via(
            config.database_url.expose_secret(),
            config.db_pool_size,
            config.db_checkout_timeout,
            config.db_pgbouncer,
        );
        if config.migrate_on_start {
            let migrations_pool = pool.clone();
            let applied = web::block(move || migrate(&migrations_pool)).await??;
            log::info!(
                event = "migrations_applied",
                count = applied.len();
                "migrations applied"
            );
        }

        let metrics = Metrics::new(config.metrics_max_repos)?;
        let metrics_export = MetricsExport::start(
            "github-runner-planner",
            metrics.registry.clone(),
            &config.telemetry,
        )?;
        let store = {
            let (pool, ignored) = (pool.clone(), config.ignored_labels.clone());
            let metrics = metrics.clone();
            // One thread per transaction the consumer has in flight.
            SyncArbiter::start(crate::consumer::BATCHES_IN_FLIGHT, move || {
                JobStore::new(pool.clone(), ignored.clone()).with_metrics(metrics.clone())
            })
        };
        let (broadcaster, calculator) = start_pressure(&config, &pool).await;
        spawn_pressure_metrics(broadcaster.clone(), pool.clone(), metrics.clone());
        let shutdown = task::Shutdown::default();
        crate::consumer::spawn(
            ConsumerConfig {
                rabbitmq_url: config.rabbitmq_url.clone(),
                topology: config.topology.clone(),
                prefetch: config.consumer_prefetch,
                retry: config.retry(),
                queue_depth_interval: config.queue_depth_interval,
                pressure: Some(calculator.clone()),
            },
            store.recipient(),
            metrics.clone(),
            shutdown.signal(),
        );
        spawn_database_probe(pool.clone(), metrics.clone());

        // Reconciliation with GitHub's API, only with a GitHub App.
        if let Some(app) = config.github.clone() {
            let client = actors::github::Client::new(app, "github-runner-planner")?;
            let reconciler = crate::reconcile::Reconciler::new(
                client,
                pool.clone(),
                config.ignored_labels.clone(),
                config.reconcile.clone(),
                metrics.reconcile.clone(),
            );
            crate::reconcile::spawn(reconciler, shutdown.signal());
        }

        let state = web::Data::new(AppState {
            pool: pool.clone(),
            admin_token_sha256: text_sha256(config.admin_token.expose_secret()),
            ignored_labels: config.ignored_labels.clone(),
            readiness: health::Readiness {
                broker_connected: metrics.broker_connected.clone(),
                database_reachable: metrics.database_reachable.clone(),
            },
            request_timeout: config.request_timeout,
        });
        let console = web::Data::new(crate::console::Console::new(
            config.console.clone(),
            config.admin_token.expose_secret(),
            metrics.clone(),
        )?);
        let pressure = web::Data::new(PressureService {
            broadcaster: broadcaster.clone(),
            calculator,
            heartbeat: config.stream_heartbeat,
        });
        let listener = bind(&config.bind_address.to_string(), config.port, "APP_PORT")?;
        let port = listener.local_addr()?.port();
        let options = ServerOptions {
            workers: config.http_workers,
            // Notice a client that went away at once, so its stream (and subscription) ends.
            close_half_closed: true,
            // Method, path and query (never headers or bodies), status, duration.
            log_requests: true,
            shutdown_signal: Some(Box::pin(shutdown_signal(broadcaster.clone()))),
            ..ServerOptions::default()
        };
        let server = actors::http::server(listener, metrics.http.clone(), options, move |app| {
            app.app_data(state.clone()).app_data(pressure.clone());
            app.service(crate::console::service(console.clone()));
            routes::configure(app);
        })?;
        log::info!(
            event = "planner_listening",
            address = config.bind_address,
            port,
            metrics_port = metrics_export.port_text(),
            queue = config.topology.queue;
            "planner listening"
        );
        Ok(Self {
            port,
            server,
            metrics_export,
            metrics,
            pool,
            tasks: shutdown,
            broadcaster,
        })
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the Prometheus listener (`None` when metrics are pushed or off).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_export.port()
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The database pool (tests inspect the database through it).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// The pressure broadcaster (tests watch its subscribers).
    pub fn broadcaster(&self) -> Addr<Broadcaster> {
        self.broadcaster.clone()
    }

    /// Serves until the server stops (a signal, or its handle), then stops the metrics
    /// exporter (a last push, when metrics are pushed) and the consumer and reconciliation
    /// tasks.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = actors::http::run_with_metrics(self.server, self.metrics_export).await;
        self.tasks.stop();
        log::info!(event = "planner_stopped"; "planner stopped");
        result
    }
}

/// How often the database gauge is refreshed when nothing else checks PostgreSQL.
const DATABASE_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// Keeps `github_runner_planner_database_reachable` current: checks PostgreSQL now and then
/// every [`DATABASE_PROBE_INTERVAL`].
fn spawn_database_probe(pool: PgPool, metrics: Metrics) {
    actix_web::rt::spawn(async move {
        let mut ticks = tokio::time::interval(DATABASE_PROBE_INTERVAL);
        loop {
            ticks.tick().await;
            let up = health::database_answers(pool.clone(), health::DATABASE_CHECK_TIMEOUT).await;
            metrics.database_reachable.set(i64::from(up));
        }
    });
}

/// How often the stream-subscriber gauge is refreshed between pressure changes.
const SUBSCRIBER_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `github_runner_planner_flavor_pressure{platform,flavor}` equal to what the streams
/// send (it follows the broadcaster like any subscriber) and
/// `github_runner_planner_stream_subscribers` current (less this follower itself). A flavor's
/// platform comes from a cache of the flavor table, refreshed when an unknown flavor appears.
fn spawn_pressure_metrics(broadcaster: Addr<Broadcaster>, pool: PgPool, metrics: Metrics) {
    actix_web::rt::spawn(async move {
        let Ok(Ok(mut subscription)) = broadcaster.send(actors::broadcast::Subscribe).await else {
            return;
        };
        let mut platforms: std::collections::HashMap<String, String> = Default::default();
        let mut shown: Vec<(String, String)> = Vec::new();
        let mut snapshot = Some(subscription.current());
        let mut ticks = tokio::time::interval(SUBSCRIBER_GAUGE_INTERVAL);
        loop {
            if let Some(pressure) = snapshot.take() {
                if pressure
                    .flavors()
                    .keys()
                    .any(|f| !platforms.contains_key(f))
                {
                    let pool = pool.clone();
                    if let Ok(Ok(flavors)) = web::block(move || {
                        let mut conn = pool.get().map_err(|e| e.to_string())?;
                        schema::queries::list_flavors(&mut conn).map_err(|e| e.to_string())
                    })
                    .await
                    {
                        platforms = flavors.into_iter().map(|f| (f.name, f.platform)).collect();
                    }
                }
                for (platform, flavor) in shown.drain(..) {
                    let _ = metrics
                        .flavor_pressure
                        .remove_label_values(&[&platform, &flavor]);
                }
                for (flavor, value) in pressure.flavors() {
                    let platform = platforms.get(flavor).cloned().unwrap_or_default();
                    metrics
                        .flavor_pressure
                        .with_label_values(&[&platform, flavor])
                        .set(i64::try_from(*value).unwrap_or(i64::MAX));
                    shown.push((platform, flavor.clone()));
                }
            }
            if let Ok(count) = broadcaster.send(actors::broadcast::SubscriberCount).await {
                metrics
                    .stream_subscribers
                    .set(i64::try_from(count.saturating_sub(1)).unwrap_or(i64::MAX));
            }
            tokio::select! {
                changed = subscription.changed() => match changed {
                    Some(pressure) => snapshot = Some(pressure),
                    None => return,
                },
                _ = ticks.tick() => {}
            }
        }
    });
}

/// Starts the broadcaster (with the database's pressure now, when it answers) and the
/// calculator that keeps it current.
async fn start_pressure(
    config: &Config,
    pool: &PgPool,
) -> (Addr<Broadcaster>, actix::Recipient<crate::pressure::Nudge>) {
    let (initial_pool, max_age) = (pool.clone(), config.job_max_age);
    let initial = crate::store::blocking(&initial_pool, move |conn| {
        crate::pressure::compute(conn, max_age)
    })
    .await;
    let initial = initial.map(|(map, _)| map).unwrap_or_else(|err| {
        log::warn!(
            event = "pressure_initial_failed",
            error:% = err;
            "cannot compute the initial pressure: starting from none"
        );
        Default::default()
    });
    let broadcaster = Broadcaster::new(initial).start();
    let calculator = Calculator::new(
        CalculatorConfig {
            listen_database_url: config.listen_database_url.clone(),
            job_max_age: config.job_max_age,
            connect_timeout: config
                .db_checkout_timeout
                .max(std::time::Duration::from_secs(1)),
            retry: config.retry(),
        },
        pool.clone(),
        broadcaster.clone().recipient(),
    )
    .start();
    (broadcaster, calculator.recipient())
}

/// Resolves on SIGTERM or SIGINT, after ending every pressure stream: the server then drains
/// connections that are no longer held open by streams.
async fn shutdown_signal(broadcaster: Addr<Broadcaster>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!(event = "signal_handlers_failed"; "cannot install the signal handlers");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!(event = "shutdown_started", signal = name; "shutting down");
    broadcaster.do_send(Shutdown);
}
