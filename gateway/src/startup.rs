//! Building and running the gateway: [`Application::build`] binds the listener (port 0 picks a
//! free one) and starts the actors; [`Application::run_until_stopped`] serves until SIGTERM or
//! SIGINT, lets in-flight requests (and so their publishes) finish, then closes the broker
//! connection.

use std::time::Duration;

use actix::Addr;
use actix_web::{dev::Server, web};
use actors::amqp::{Publisher, PublisherConfig, PublisherStatus, Publishing, Shutdown, Status};
use actors::config::bind;
use actors::http::ServerOptions;
use actors::task;
use actors::telemetry::MetricsExport;
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::webhook::{Secrets, Validator};

/// Shared, read-only state of the HTTP handlers.
pub struct AppState {
    /// Signature and payload checks of bodies of the usual size, on the HTTP worker.
    pub secrets: Secrets,
    /// The same checks of larger bodies, on the validator's threads.
    pub validator: Addr<Validator>,
    /// Publishes through the AMQP publisher actor's channel; its status is for `/ready`.
    pub publishing: Publishing,
    /// `APP_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `APP_PUBLISH_TIMEOUT`.
    pub publish_timeout: Duration,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Permits for publishes awaiting a confirm (`APP_MAX_IN_FLIGHT`).
    pub in_flight: tokio::sync::Semaphore,
    /// `APP_REQUEST_TIMEOUT`.
    pub request_timeout: Duration,
}

/// A bound, not yet running gateway.
pub struct Application {
    port: u16,
    server: Server,
    metrics_export: MetricsExport,
    publisher: Addr<Publisher>,
    publisher_status: PublisherStatus,
    /// Stops the redelivery task.
    tasks: task::Shutdown,
}

impl Application {
    /// Binds `config.host:config.port` and starts the validator and publisher actors on the
    /// current actix system.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listener = bind(&config.host.to_string(), config.port, "APP_PORT")?;
        let port = listener.local_addr()?.port();

        let (publisher, publishing) = Publisher::start_supervised(PublisherConfig::new(
            config.rabbitmq_uri.expose_secret(),
            config.topology.clone(),
            "github-runner-webhook-gateway",
        ));
        let secrets = Secrets::new(
            &config.webhook_secret,
            config.previous_webhook_secret.as_ref(),
        );
        let publisher_status = publishing.status().clone();
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let validator = Validator::start(secrets.clone(), threads);

        let metrics = Metrics::new().map_err(std::io::Error::other)?;
        let metrics_export = MetricsExport::start(
            "github-runner-webhook-gateway",
            metrics.registry.clone(),
            &config.telemetry,
        )
        .map_err(std::io::Error::other)?;
        let gauge = metrics.broker_connected.clone();
        let mut changes = publisher_status.subscribe();
        actix_web::rt::spawn(async move {
            loop {
                gauge.set(i64::from(*changes.borrow_and_update() == Status::Connected));
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
        let http_metrics = metrics.http.clone();
        // Redelivery of failed deliveries, only when configured.
        let tasks = task::Shutdown::default();
        if let Some(redelivery) = &config.redelivery {
            let redeliverer =
                crate::redelivery::Redeliverer::new(redelivery, metrics.redelivery.clone())
                    .map_err(std::io::Error::other)?;
            crate::redelivery::spawn(redeliverer, redelivery.interval, tasks.signal());
        }

        let state = web::Data::new(AppState {
            secrets,
            validator,
            publishing,
            max_body_bytes: config.max_body_bytes,
            publish_timeout: config.publish_timeout,
            metrics,
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight),
            request_timeout: config.request_timeout,
        });
        let options = ServerOptions {
            // Slow clients: headers must arrive within 5 s, as actix's default, and the whole
            // body within the publish timeout's order of magnitude.
            client_request_timeout: Some(Duration::from_secs(5)),
            // On SIGTERM: stop accepting, give in-flight publishes their full timeout to finish.
            shutdown_timeout: Some(config.publish_timeout.as_secs() + 2),
            ..ServerOptions::default()
        };
        let server = actors::http::server(listener, http_metrics, options, move |app| {
            app.app_data(state.clone());
            crate::routes::configure(app);
        })?;
        log::info!(
            event = "gateway_listening",
            port,
            metrics_port = metrics_export.port_text(),
            exchange = config.topology.exchange;
            "gateway listening"
        );
        Ok(Self {
            port,
            server,
            metrics_export,
            publisher,
            publisher_status,
            tasks,
        })
    }

    /// The port the gateway listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the Prometheus listener (`None` when metrics are pushed or off).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_export.port()
    }

    /// The publisher's connection state.
    pub fn publisher_status(&self) -> PublisherStatus {
        self.publisher_status.clone()
    }

    /// A handle to stop the server (tests; production stops on SIGTERM/SIGINT).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then stops the redelivery task and closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = actors::http::run_with_metrics(self.server, self.metrics_export).await;
        self.tasks.stop();
        log::info!(event = "gateway_draining"; "gateway draining");
        let _ = self.publisher.send(Shutdown).await;
        log::info!(event = "gateway_stopped"; "gateway stopped");
        result
    }
}
