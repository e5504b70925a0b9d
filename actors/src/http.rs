//! What every service's HTTP server shares: how it is built ([`server`]: bind, workers,
//! timeouts, shutdown, the HTTP metrics middleware), how it runs beside its `/metrics`
//! listener ([`run_with_metrics`]), and the request log ([`log_request`]).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::{
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    middleware::{from_fn, Condition, Next},
    web, App, HttpServer,
};
use futures::future::BoxFuture;

use crate::telemetry::{HttpMetrics, MetricsExport};

/// How one service's HTTP server differs from the others'; unset fields keep actix's defaults.
#[derive(Default)]
pub struct ServerOptions {
    /// Worker threads (actix's default: one per core).
    pub workers: Option<usize>,
    /// Seconds a stopping server gives open requests to finish (actix's default: 30).
    pub shutdown_timeout: Option<u64>,
    /// How long a client may take to send a request's head (actix's default: 5 s).
    pub client_request_timeout: Option<Duration>,
    /// Close a connection as soon as its client half-closes it, so a stream ends at once.
    pub close_half_closed: bool,
    /// Log every answered request ([`log_request`]).
    pub log_requests: bool,
    /// Stops the server when it resolves, instead of actix's SIGTERM/SIGINT handling.
    pub shutdown_signal: Option<BoxFuture<'static, ()>>,
}

/// The service's HTTP server on `listener`: its routes and state from `configure`, every request
/// measured in `http_metrics` (and logged when asked), set up as `options` say.
pub fn server<F>(
    listener: TcpListener,
    http_metrics: HttpMetrics,
    options: ServerOptions,
    configure: F,
) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let http_metrics = web::Data::new(http_metrics);
    let log_requests = options.log_requests;
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(Condition::new(log_requests, from_fn(log_request)))
            .app_data(http_metrics.clone())
            .wrap(from_fn(HttpMetrics::middleware))
            .configure(configure.clone())
    })
    .listen(listener)?;
    if let Some(workers) = options.workers {
        server = server.workers(workers);
    }
    if let Some(seconds) = options.shutdown_timeout {
        server = server.shutdown_timeout(seconds);
    }
    if let Some(timeout) = options.client_request_timeout {
        server = server.client_request_timeout(timeout);
    }
    if options.close_half_closed {
        server = server.h1_allow_half_closed(false);
    }
    if let Some(signal) = options.shutdown_signal {
        server = server.shutdown_signal(signal);
    }
    Ok(server.run())
}

/// Serves `server` until it stops (a signal, or its handle), with the metrics exporter
/// `metrics_export` beside it, then stops the exporter (a last push for OTLP).
pub async fn run_with_metrics(
    server: Server,
    metrics_export: MetricsExport,
) -> std::io::Result<()> {
    let result = server.await;
    metrics_export.stop().await;
    result
}

/// actix-web middleware (use with `middleware::from_fn`) logging each answered request once
/// its answer starts: method, path and query (never headers or bodies), status, and the time
/// to the answer's head in milliseconds (`event=request`).
pub async fn log_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path_and_query().map_or_else(
        || request.path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let response = next.call(request).await?;
    log::info!(
        event = "request",
        method:% = method,
        path,
        status = response.status().as_u16(),
        duration_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        "request answered"
    );
    Ok(response)
}
