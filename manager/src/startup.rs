//! Building and running the manager: [`Application::build`] validates nothing more (the
//! configuration already is), binds the status API (port 0 picks a free one) and the
//! Prometheus listener, and starts the actors: the GitHub actor, one reconciler per flavor, and
//! the pressure follower. [`Application::run_until_stopped`] serves until SIGTERM or SIGINT.
//!
//! Stopping the manager never stops a runner: runners run one job and end on their own, and a
//! restarted manager adopts the ones still alive.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Recipient, Supervisor};
use actix_web::{dev::Server, web};
use actors::config::bind;
use actors::task::Shutdown;
use actors::telemetry::MetricsExport;
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::error::Error;
use crate::github::{list_max_age, GitHub, RunnerApi};
use crate::messages::{GetRunners, PressureChanged};
use crate::metrics::Metrics;
use crate::planner::{Follow, Planner};
use crate::reconciler::{Reconciler, ReconcilerConfig};
use crate::status::{token_sha256, Readiness, StatusState};

/// A bound, running manager.
pub struct Application {
    port: u16,
    server: Server,
    metrics_export: MetricsExport,
    /// The pressure follower's stop signal: it runs as long as this is kept.
    tasks: Shutdown,
}

impl Application {
    /// Builds the manager with GitHub's API behind `api`, on the current actix system.
    pub async fn build_with(config: Config, api: Arc<dyn RunnerApi>) -> Result<Self, Error> {
        let listener = bind(&config.bind_address.to_string(), config.port, "APP_PORT")
            .map_err(std::io::Error::from)?;
        let port = listener.local_addr()?.port();
        let metrics = Metrics::new().map_err(std::io::Error::other)?;
        let metrics_export = MetricsExport::start(
            "github-runner-manager",
            metrics.registry.clone(),
            &config.telemetry,
        )
        .map_err(std::io::Error::other)?;
        let readiness = Arc::new(Readiness::new());

        let github = {
            let readiness = readiness.clone();
            let scope = config.github_path.clone();
            let max_age = list_max_age(config.reconcile_interval);
            Supervisor::start(move |_| GitHub::new(api, scope, max_age, readiness))
        };
        let planner = Planner::new(config.planner_url.clone(), config.planner_token.clone())?;
        let mut followers: HashMap<String, Recipient<PressureChanged>> = HashMap::new();
        let mut listers: Vec<Recipient<GetRunners>> = Vec::new();
        for flavor in &config.flavors {
            let backend = crate::backend::build(flavor, &config, &metrics)?;
            let reconciler_config = ReconcilerConfig {
                flavor: flavor.clone(),
                manager_id: config.manager_id.clone(),
                backend,
                github: github.clone(),
                planner: planner.clone(),
                interval: config.reconcile_interval,
                parallelism: config.create_parallelism,
                metrics: metrics.clone(),
                readiness: readiness.clone(),
            };
            let reconciler = Supervisor::start(move |_| Reconciler::new(reconciler_config));
            followers.insert(flavor.name.clone(), reconciler.clone().recipient());
            listers.push(reconciler.recipient());
        }
        let tasks = Shutdown::default();
        crate::planner::spawn(
            Follow {
                planner,
                reconcilers: followers,
                grace: config.pressure_grace,
                reconnect: config.reconnect,
                readiness: readiness.clone(),
                metrics: metrics.clone(),
            },
            tasks.signal(),
        );

        let mut token_hashes = vec![token_sha256(config.planner_token.expose_secret())];
        if let Some(admin) = &config.admin_token {
            token_hashes.push(token_sha256(admin.expose_secret()));
        }
        let state = web::Data::new(StatusState {
            token_hashes,
            reconcilers: listers,
            readiness,
        });
        let options = actors::http::ServerOptions {
            workers: Some(1),
            shutdown_timeout: Some(5),
            ..Default::default()
        };
        let server = actors::http::server(listener, metrics.http.clone(), options, move |app| {
            app.app_data(state.clone());
            crate::status::configure(app);
        })?;
        log::info!(
            event = "manager_listening",
            port,
            metrics_port = metrics_export.port_text(),
            manager_id = config.manager_id,
            flavors = config.flavors.len(),
            github_path = config.github_path.api_prefix();
            "manager listening"
        );
        Ok(Self {
            port,
            server,
            metrics_export,
            tasks,
        })
    }

    /// The port of the status API.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the Prometheus listener (`None` when metrics are pushed or off).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_export.port()
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = actors::http::run_with_metrics(self.server, self.metrics_export).await;
        self.tasks.stop();
        log::info!(event = "manager_stopped"; "manager stopped");
        result
    }
}

impl Application {
    /// Builds the manager against GitHub's API (`APP_GITHUB_*`).
    pub async fn build(config: Config) -> Result<Self, Error> {
        let api = crate::github::client(&config)?;
        Self::build_with(config, api).await
    }
}
