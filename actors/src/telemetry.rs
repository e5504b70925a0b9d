//! Telemetry every service shares: the metrics exporter chosen by `OTEL_METRICS_EXPORTER`
//! (a Prometheus listener, OTLP push, or none), HTTP request metrics under OpenTelemetry's
//! semantic names, and traces exported over OTLP (gRPC or HTTP/protobuf) with the W3C trace
//! context carried in AMQP headers, so one trace spans gateway and planner. The variables
//! are read in [`config`] (`TelemetryConfig`).

mod config;
mod otlp;

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServerHandle, ServiceRequest, ServiceResponse},
    middleware::Next,
    web, App, HttpResponse, HttpServer,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    Context,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};

pub use self::config::{
    MetricsExporter, OtlpProtocol, OtlpTarget, PrometheusListener, TelemetryConfig,
    DEFAULT_PROMETHEUS_PORT,
};
use crate::config::{bind, BindError};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP trace exporter refused its settings.
    #[error("OTLP trace exporter ({endpoint}): {source}")]
    TraceExporter {
        /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as resolved.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The OTLP metrics exporter refused its settings.
    #[error("OTLP metrics exporter ({endpoint}): {reason}")]
    MetricsExporter {
        /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as resolved.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The thread that drives gRPC exports could not start.
    #[error("OTLP gRPC runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The Prometheus listener could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A tokio runtime on a thread of its own, for gRPC (tonic) exporters: the SDK's batch span
/// processor exports from its own thread, which must not wait on the service's runtime (the
/// one that flushes at shutdown).
struct ExportRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportRuntime {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-grpc".to_owned())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The process's trace pipeline. Dropping it does nothing; call [`Tracing::shutdown`] to flush.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    // Declared after the provider: dropped once the provider has flushed through it.
    _runtime: Option<ExportRuntime>,
}

impl Tracing {
    /// Installs the W3C trace-context propagator and, with `OTEL_TRACES_EXPORTER=otlp`, a batch
    /// OTLP exporter (its own thread, `OTEL_EXPORTER_OTLP_TIMEOUT` per export) as the global
    /// tracer provider.
    pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let Some(target) = &config.traces else {
            return Ok(Self {
                provider: None,
                _runtime: None,
            });
        };
        let failed = |source| TelemetryError::TraceExporter {
            endpoint: target.endpoint.clone(),
            source,
        };
        let (exporter, runtime) = match target.protocol {
            OtlpProtocol::HttpProtobuf => (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(target.endpoint.clone())
                    .with_timeout(target.timeout)
                    .build()
                    .map_err(failed)?,
                None,
            ),
            OtlpProtocol::Grpc => {
                let runtime = ExportRuntime::start()?;
                let _entered = runtime.handle.enter();
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(target.endpoint.clone())
                    .with_timeout(target.timeout)
                    .build()
                    .map_err(failed)?;
                (exporter, Some(runtime))
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        global::set_tracer_provider(provider.clone());
        log::info!(
            event = "tracing_enabled",
            service,
            endpoint = target.endpoint.as_str(),
            protocol:? = target.protocol;
            "exporting traces"
        );
        Ok(Self {
            provider: Some(provider),
            _runtime: runtime,
        })
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = &self.provider {
            if let Err(err) = provider.shutdown() {
                log::warn!(event = "tracing_shutdown_failed", error:% = err; "cannot flush traces");
            }
        }
    }
}

/// The running metrics exporter of a service: a Prometheus listener, an OTLP pusher, or
/// nothing. [`MetricsExport::stop`] stops it (a last push for OTLP).
pub struct MetricsExport {
    kind: ExportKind,
}

enum ExportKind {
    Prometheus { server: ServerHandle, port: u16 },
    Otlp(otlp::PushTask),
    None,
}

impl MetricsExport {
    /// Starts exporting `registry` as `config` says. Must run inside an actix system. A
    /// Prometheus listener that cannot bind is an error naming its address and variables.
    pub fn start(
        service: &'static str,
        registry: Registry,
        config: &TelemetryConfig,
    ) -> Result<Self, TelemetryError> {
        let kind = match &config.metrics {
            MetricsExporter::Prometheus(listener) => {
                let (server, port) = prometheus_listener(registry, listener)?;
                ExportKind::Prometheus { server, port }
            }
            MetricsExporter::Otlp(target) => {
                ExportKind::Otlp(otlp::PushTask::start(service, registry, target)?)
            }
            MetricsExporter::None => ExportKind::None,
        };
        Ok(Self { kind })
    }

    /// The port of the Prometheus listener, when there is one.
    pub fn port(&self) -> Option<u16> {
        match &self.kind {
            ExportKind::Prometheus { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// The port for a log line: `none` when metrics are pushed or off.
    pub fn port_text(&self) -> String {
        self.port()
            .map_or("none".to_owned(), |port| port.to_string())
    }

    /// Stops the listener, or pushes once more and stops pushing.
    pub async fn stop(self) {
        match self.kind {
            ExportKind::Prometheus { server, .. } => server.stop(true).await,
            ExportKind::Otlp(task) => task.stop().await,
            ExportKind::None => {}
        }
    }
}

/// Serves `GET <path>` (Prometheus text format) for `registry` on its own listener, so
/// scraping never competes with the service's API.
fn prometheus_listener(
    registry: Registry,
    listener: &PrometheusListener,
) -> Result<(ServerHandle, u16), TelemetryError> {
    let bound = bind(
        &listener.host,
        listener.port,
        "OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT",
    )?;
    let port = bound.local_addr()?.port();
    let registry = web::Data::new(registry);
    let path = listener.path.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .route(&path, web::get().to(render))
    })
    .workers(1)
    .listen(bound)?
    .disable_signals()
    .shutdown_timeout(1)
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok((handle, port))
}

async fn render(registry: web::Data<Registry>) -> HttpResponse {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type(encoder.format_type())
            .body(buffer),
        Err(err) => {
            log::error!(event = "metrics_encode_failed", error:% = err; "cannot encode metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// The `http_request_method` label of a request: one of the nine standard methods, or
/// `_OTHER` as the semantic conventions say. HTTP lets a client send any token as a method;
/// taking it as a label would let anyone create series without bound.
pub fn method_label(method: &actix_web::http::Method) -> &str {
    use actix_web::http::Method;
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    if STANDARD.contains(method) {
        method.as_str()
    } else {
        "_OTHER"
    }
}

/// Name of the HTTP server metric, as OpenTelemetry's `http.server.request.duration` (unit
/// `s`) reaches Prometheus.
pub const HTTP_SERVER_DURATION: &str = "http_server_request_duration_seconds";

/// The bucket boundaries the semantic conventions advise for `http.server.request.duration`.
pub const HTTP_SERVER_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// HTTP request metrics of one service, under OpenTelemetry's semantic names so dashboards
/// written for instrumented services (Canonical's included) read them unchanged:
/// `http_server_request_duration_seconds{http_route,http_request_method,
/// http_response_status_code,url_scheme}`; its `_count` is the number of requests. The route
/// is the matched pattern (`/api/v1/flavors/{name}`), never the raw path, and empty when no
/// route matched, so cardinality stays bounded.
#[derive(Clone)]
pub struct HttpMetrics {
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates and registers the metric.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_SERVER_DURATION,
                "Duration of HTTP server requests: time from request to response headers.",
            )
            .buckets(HTTP_SERVER_DURATION_BUCKETS.to_vec()),
            &[
                "http_route",
                "http_request_method",
                "http_response_status_code",
                "url_scheme",
            ],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { duration })
    }

    /// actix-web middleware recording every request (use with `middleware::from_fn`).
    pub async fn middleware(
        request: ServiceRequest,
        next: Next<impl MessageBody>,
    ) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
        let metrics = request.app_data::<web::Data<HttpMetrics>>().cloned();
        let started = Instant::now();
        let route = request.match_pattern().unwrap_or_default();
        let method = method_label(request.method()).to_owned();
        let response = next.call(request).await?;
        if let Some(metrics) = metrics {
            let status = response.status().as_u16().to_string();
            metrics
                .duration
                // The services serve plain HTTP (TLS ends in front of them).
                .with_label_values(&[&route, &method, &status, "http"])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(response)
    }
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key) {
            Some(AMQPValue::LongString(value)) => std::str::from_utf8(value.as_bytes()).ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|key| key.as_str()).collect()
    }
}

/// Writes the trace context of `context` (`traceparent`, `tracestate`) into AMQP headers.
pub fn inject(context: &Context, headers: &mut FieldTable) {
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut HeaderInjector(headers));
    });
}

/// The trace context carried in AMQP headers (an empty context when there is none).
pub fn extract(headers: &FieldTable) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn only_standard_methods_are_labels() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let custom = Method::from_bytes(b"X-RANDOM-1234").unwrap();
        assert_eq!(method_label(&custom), "_OTHER");
    }

    #[test]
    fn trace_context_round_trips_through_amqp_headers() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span_context.clone());
        let mut headers = FieldTable::default();
        inject(&context, &mut headers);
        assert!(matches!(
            headers.inner().get("traceparent"),
            Some(AMQPValue::LongString(v))
                if v.to_string() == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        let extracted = extract(&headers);
        assert_eq!(
            extracted.span().span_context().trace_id(),
            span_context.trace_id()
        );
        assert_eq!(
            extracted.span().span_context().span_id(),
            span_context.span_id()
        );
        assert!(!extract(&FieldTable::default())
            .span()
            .span_context()
            .is_valid());
    }
}
