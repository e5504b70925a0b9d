//! Building and running the planner: database pool and migrations, the job-store and consumer
//! actors, and the HTTP server.

use std::{net::TcpListener, sync::Arc};

use actix::{Actor, Addr, SyncArbiter};
use actix_web::{dev::Server, middleware::Logger, web, App, HttpServer};
use actors::broadcast::{Broadcaster, Shutdown};
use secrecy::ExposeSecret;

use crate::{
    auth::token_sha256,
    config::Config,
    consumer::{Consumer, ConsumerConfig, ConsumerStats},
    pressure::{Calculator, CalculatorConfig},
    routes::{self, pressure::PressureService},
    state::AppState,
    store::{build_pool, JobStore, PgPool},
};

/// A planner ready to run: its port is bound and its actors are started.
pub struct Application {
    port: u16,
    server: Server,
    stats: Arc<ConsumerStats>,
    pool: PgPool,
    consumer: Addr<Consumer>,
    broadcaster: Addr<Broadcaster>,
}

/// Runs pending migrations through `pool`.
pub fn migrate(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut conn = pool.get()?;
    schema::run_migrations(&mut conn).map_err(|err| anyhow::anyhow!("migrations failed: {err}"))
}

impl Application {
    /// Builds the planner. Must run inside an actix system (`#[actix_web::main]`, tests'
    /// `#[actix_web::test]`).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = build_pool(
            config.database_url.expose_secret(),
            config.db_pool_size,
            config.db_checkout_timeout,
        );
        if config.migrate_on_start {
            let migrations_pool = pool.clone();
            let applied = web::block(move || migrate(&migrations_pool)).await??;
            log::info!("event=migrations_applied count={}", applied.len());
        }

        let store = {
            let (pool, ignored) = (pool.clone(), config.ignored_labels.clone());
            SyncArbiter::start(1, move || JobStore::new(pool.clone(), ignored.clone()))
        };
        let (broadcaster, calculator) = start_pressure(&config, &pool).await;
        let stats = Arc::new(ConsumerStats::default());
        let consumer = Consumer::new(
            ConsumerConfig {
                rabbitmq_url: config.rabbitmq_url.clone(),
                topology: config.topology.clone(),
                prefetch: config.consumer_prefetch,
                retry_min_delay: config.retry_min_delay,
                retry_max_delay: config.retry_max_delay,
                pressure: Some(calculator.clone()),
            },
            store.recipient(),
            stats.clone(),
        )
        .start();

        let state = web::Data::new(AppState {
            pool: pool.clone(),
            admin_token_sha256: token_sha256(config.admin_token.expose_secret()),
            ignored_labels: config.ignored_labels.clone(),
        });
        let pressure = web::Data::new(PressureService {
            broadcaster: broadcaster.clone(),
            calculator,
            heartbeat: config.stream_heartbeat,
        });
        let listener = TcpListener::bind((config.bind_address, config.port))?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || {
            App::new()
                // Request line (path and query, never headers or bodies), status, duration.
                .wrap(Logger::new(
                    "event=request request=\"%r\" status=%s duration_ms=%D",
                ))
                .app_data(state.clone())
                .app_data(pressure.clone())
                .configure(routes::configure)
        })
        // Notice a client that went away at once, so its stream (and subscription) ends.
        .h1_allow_half_closed(false)
        .shutdown_signal(shutdown_signal(broadcaster.clone()))
        .listen(listener)?;
        if let Some(workers) = config.http_workers {
            server = server.workers(workers);
        }
        log::info!(
            "event=listening address={}:{port} port={port}",
            config.bind_address
        );
        Ok(Self {
            port,
            server: server.run(),
            stats,
            pool,
            consumer,
            broadcaster,
        })
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the consumer has done so far.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// The database pool (tests inspect the database through it).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// The consumer actor.
    pub fn consumer(&self) -> Addr<Consumer> {
        self.consumer.clone()
    }

    /// The pressure broadcaster (tests watch its subscribers).
    pub fn broadcaster(&self) -> Addr<Broadcaster> {
        self.broadcaster.clone()
    }

    /// Serves until the server stops (a signal, or its handle).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Starts the broadcaster (with the database's pressure now, when it answers) and the
/// calculator that keeps it current.
async fn start_pressure(
    config: &Config,
    pool: &PgPool,
) -> (Addr<Broadcaster>, actix::Recipient<crate::pressure::Nudge>) {
    let (initial_pool, max_age) = (pool.clone(), config.job_max_age);
    let initial = web::block(move || -> Result<_, String> {
        let mut conn = initial_pool.get().map_err(|err| err.to_string())?;
        crate::pressure::compute(&mut conn, max_age).map_err(|err| err.to_string())
    })
    .await
    .map_err(|err| err.to_string())
    .and_then(|result| result);
    let initial = initial.map(|(map, _)| map).unwrap_or_else(|err| {
        log::warn!("event=pressure_initial_failed error=\"{err}\"");
        Default::default()
    });
    let broadcaster = Broadcaster::new(initial).start();
    let calculator = Calculator::new(
        CalculatorConfig {
            database_url: config.database_url.clone(),
            job_max_age: config.job_max_age,
            connect_timeout: config
                .db_checkout_timeout
                .max(std::time::Duration::from_secs(1)),
            retry_min_delay: config.retry_min_delay,
            retry_max_delay: config.retry_max_delay,
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
        log::error!("event=signal_handlers_failed");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log::info!("event=shutdown_started signal={name}");
    broadcaster.do_send(Shutdown);
}
