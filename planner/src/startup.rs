//! Building and running the planner: database pool and migrations, the job-store and consumer
//! actors, and the HTTP server.

use std::{net::TcpListener, sync::Arc};

use actix::{Actor, Addr, SyncArbiter};
use actix_web::{dev::Server, middleware::Logger, web, App, HttpServer};
use secrecy::ExposeSecret;

use crate::{
    auth::token_sha256,
    config::Config,
    consumer::{Consumer, ConsumerConfig, ConsumerStats},
    routes,
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

        let store = {
            let (pool, ignored) = (pool.clone(), config.ignored_labels.clone());
            SyncArbiter::start(1, move || JobStore::new(pool.clone(), ignored.clone()))
        };
        let stats = Arc::new(ConsumerStats::default());
        let consumer = Consumer::new(
            ConsumerConfig {
                rabbitmq_url: config.rabbitmq_url.clone(),
                topology: config.topology.clone(),
                prefetch: config.consumer_prefetch,
                retry_min_delay: config.retry_min_delay,
                retry_max_delay: config.retry_max_delay,
            },
            store.recipient(),
            stats.clone(),
        )
        .start();

        // --- issue 9: reconciliation with GitHub's API, only with a GitHub App ---
        let reconcile_metrics = crate::reconcile::ReconcileMetrics::new()?;
        if let Some(app) = config.github.clone() {
            let client = github::Client::new(app, "github-runner-planner")?;
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
                .configure(routes::configure)
        })
        .listen(listener)?;
        if let Some(workers) = config.http_workers {
            server = server.workers(workers);
        }
        log::info!("event=listening address={}:{port}", config.bind_address);
        Ok(Self {
            port,
            server: server.run(),
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

    /// Serves until the server stops (a signal, or its handle).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
