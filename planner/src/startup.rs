//! Building and running the planner: database pool and migrations, the job-store and consumer
//! actors, and the HTTP server.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix::{Actor, Addr, SyncArbiter};
use actix_web::{
    dev::Server,
    middleware::{self, Logger},
    web, App, HttpServer,
};
use actors::telemetry::{metrics_server, HttpMetrics};
use secrecy::ExposeSecret;

use crate::{
    auth::token_sha256,
    config::Config,
    consumer::{Consumer, ConsumerConfig, ConsumerStats},
    metrics::Metrics,
    routes::{self, health},
    state::AppState,
    store::{build_pool, JobStore, PgPool},
};

/// A planner ready to run: its port is bound and its actors are started.
pub struct Application {
    port: u16,
    metrics_port: u16,
    server: Server,
    metrics_server: Server,
    metrics: Metrics,
    stats: Arc<ConsumerStats>,
    pool: PgPool,
    consumer: Addr<Consumer>,
    // issue 9: reconciliation counters (registered by whoever owns the registry)
    reconcile_metrics: crate::reconcile::ReconcileMetrics,
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

        let metrics = Metrics::new()?;
        let (metrics_server, metrics_port) = metrics_server(
            metrics.registry.clone(),
            config.telemetry.prometheus_host,
            config.telemetry.prometheus_port,
        )?;
        let store = {
            let (pool, ignored) = (pool.clone(), config.ignored_labels.clone());
            let metrics = metrics.clone();
            SyncArbiter::start(1, move || {
                JobStore::new(pool.clone(), ignored.clone()).with_metrics(metrics.clone())
            })
        };
        let stats = Arc::new(ConsumerStats::default());
        let consumer = Consumer::new(
            ConsumerConfig {
                rabbitmq_url: config.rabbitmq_url.clone(),
                topology: config.topology.clone(),
                prefetch: config.consumer_prefetch,
                retry_min_delay: config.retry_min_delay,
                retry_max_delay: config.retry_max_delay,
                queue_depth_interval: config.queue_depth_interval,
            },
            store.recipient(),
            stats.clone(),
        )
        .with_metrics(metrics.clone())
        .start();
        spawn_database_probe(pool.clone(), metrics.clone());

        // --- issue 9: reconciliation with GitHub's API, only with a GitHub App ---
        let reconcile_metrics = crate::reconcile::ReconcileMetrics::new()?;
        reconcile_metrics
            .register(&metrics.registry)
            .map_err(std::io::Error::other)?;
        if let Some(app) = config.github.clone() {
            let client = actors::github::Client::new(app, "github-runner-planner")?;
            crate::reconcile::ReconcileActor::new(crate::reconcile::Reconciler::new(
                client,
                pool.clone(),
                config.ignored_labels.clone(),
                config.reconcile.clone(),
                reconcile_metrics.clone(),
            ))
            .start();
        }
        // --- end issue 9 ---

        let state = web::Data::new(AppState {
            pool: pool.clone(),
            admin_token_sha256: token_sha256(config.admin_token.expose_secret()),
            ignored_labels: config.ignored_labels.clone(),
            readiness: health::Readiness {
                consumer: stats.clone(),
                database_reachable: metrics.database_reachable.clone(),
            },
        });
        let http_metrics = web::Data::new(metrics.http.clone());
        let listener = TcpListener::bind((config.bind_address, config.port))?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || {
            App::new()
                // Request line (path and query, never headers or bodies), status, duration.
                .wrap(Logger::new(
                    "event=request request=\"%r\" status=%s duration_ms=%D",
                ))
                .app_data(state.clone())
                .app_data(http_metrics.clone())
                .wrap(middleware::from_fn(HttpMetrics::middleware))
                .configure(routes::configure)
        })
        .listen(listener)?;
        if let Some(workers) = config.http_workers {
            server = server.workers(workers);
        }
        log::info!(
            "event=planner_listening address={} port={port} metrics_port={metrics_port} queue={}",
            config.bind_address,
            config.topology.queue
        );
        Ok(Self {
            port,
            metrics_port,
            server: server.run(),
            metrics_server,
            metrics,
            stats,
            pool,
            consumer,
            reconcile_metrics,
        })
    }

    /// The port the HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the Prometheus `/metrics` listener.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
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

    /// Reconciliation counters, at zero when no GitHub App is configured (issue 9).
    pub fn reconcile_metrics(&self) -> crate::reconcile::ReconcileMetrics {
        self.reconcile_metrics.clone()
    }

    /// Serves until the server stops (a signal, or its handle), then stops the `/metrics`
    /// listener.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics_handle = self.metrics_server.handle();
        actix_web::rt::spawn(self.metrics_server);
        let result = self.server.await;
        metrics_handle.stop(true).await;
        log::info!("event=planner_stopped");
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
