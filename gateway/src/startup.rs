//! Building and running the gateway: [`Application::build`] binds the listener (port 0 picks a
//! free one) and starts the actors; [`Application::run_until_stopped`] serves until SIGTERM or
//! SIGINT, lets in-flight requests (and so their publishes) finish, then closes the broker
//! connection.

use std::net::TcpListener;
use std::time::Duration;

use actix::Addr;
use actix_web::{dev::Server, middleware, web, App, HttpServer};
use actors::amqp::{Publisher, PublisherConfig, PublisherStatus, Shutdown, Status};
use actors::telemetry::{metrics_server, HttpMetrics};
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::webhook::{Secrets, Validator};

/// Shared, read-only state of the HTTP handlers.
pub struct AppState {
    /// Signature and payload checks.
    pub validator: Addr<Validator>,
    /// The AMQP publisher actor.
    pub publisher: Addr<Publisher>,
    /// Its connection state, for `/ready`.
    pub publisher_status: PublisherStatus,
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
    metrics_port: u16,
    server: Server,
    metrics_server: Server,
    publisher: Addr<Publisher>,
    publisher_status: PublisherStatus,
}

impl Application {
    /// Binds `config.host:config.port` and starts the validator and publisher actors on the
    /// current actix system.
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind((config.host, config.port))?;
        let port = listener.local_addr()?.port();

        let (publisher, publisher_status) = Publisher::start_supervised(PublisherConfig::new(
            config.rabbitmq_uri.expose_secret().to_owned(),
            config.topology.clone(),
            "github-runner-webhook-gateway",
        ));
        let secrets = Secrets::new(
            &config.webhook_secret,
            config.previous_webhook_secret.as_ref(),
        );
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let validator = Validator::start(secrets, threads);

        let metrics = Metrics::new().map_err(std::io::Error::other)?;
        let (metrics_server, metrics_port) = metrics_server(
            metrics.registry.clone(),
            config.telemetry.prometheus_host,
            config.telemetry.prometheus_port,
        )?;
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
        let http_metrics = web::Data::new(metrics.http.clone());
        // Redelivery of failed deliveries, only when configured.
        let redelivery_metrics = crate::redelivery::RedeliveryMetrics::register(&metrics.registry)
            .map_err(std::io::Error::other)?;
        if let Some(redelivery) = &config.redelivery {
            let redeliverer = crate::redelivery::Redeliverer::new(redelivery, redelivery_metrics)
                .map_err(std::io::Error::other)?;
            actix::Actor::start(crate::redelivery::RedeliveryActor::new(
                redeliverer,
                redelivery.interval,
            ));
        }

        let state = web::Data::new(AppState {
            validator,
            publisher: publisher.clone(),
            publisher_status: publisher_status.clone(),
            max_body_bytes: config.max_body_bytes,
            publish_timeout: config.publish_timeout,
            metrics,
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight),
            request_timeout: config.request_timeout,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(http_metrics.clone())
                .wrap(middleware::from_fn(HttpMetrics::middleware))
                .configure(crate::routes::configure)
        })
        .listen(listener)?
        // Slow clients: headers must arrive within 5 s, as actix's default, and the whole
        // body within the publish timeout's order of magnitude.
        .client_request_timeout(Duration::from_secs(5))
        // On SIGTERM: stop accepting, give in-flight publishes their full timeout to finish.
        .shutdown_timeout(config.publish_timeout.as_secs() + 2)
        .run();
        log::info!(
            event = "gateway_listening",
            port,
            metrics_port,
            exchange = config.topology.exchange;
            "gateway listening"
        );
        Ok(Self {
            port,
            metrics_port,
            server,
            metrics_server,
            publisher,
            publisher_status,
        })
    }

    /// The port the gateway listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the Prometheus `/metrics` listener.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// The publisher's connection state.
    pub fn publisher_status(&self) -> PublisherStatus {
        self.publisher_status.clone()
    }

    /// A handle to stop the server (tests; production stops on SIGTERM/SIGINT).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics_handle = self.metrics_server.handle();
        actix_web::rt::spawn(self.metrics_server);
        let result = self.server.await;
        metrics_handle.stop(true).await;
        log::info!(event = "gateway_draining"; "gateway draining");
        let _ = self.publisher.send(Shutdown).await;
        log::info!(event = "gateway_stopped"; "gateway stopped");
        result
    }
}
