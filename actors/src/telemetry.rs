//! Telemetry both services share: the Prometheus `/metrics` listener, HTTP
//! request metrics, and OpenTelemetry traces exported over OTLP/HTTP (protobuf) with the W3C
//! trace context carried in AMQP headers, so one trace spans gateway and planner.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use actix_web::{
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
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
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::config::{self, ConfigError, Source};

/// Telemetry settings, from the environment (names as Canonical's charms set them).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `OTEL_EXPORTER_PROMETHEUS_HOST` (default `0.0.0.0`).
    pub prometheus_host: IpAddr,
    /// `OTEL_EXPORTER_PROMETHEUS_PORT` (default 9464; 0 picks a free port).
    pub prometheus_port: u16,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: OTLP/HTTP traces URL (e.g.
    /// `http://tempo:4318/v1/traces`). Unset: no traces are exported.
    pub otlp_traces_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Reads the variables above.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            prometheus_host: config::parsed(
                source,
                "OTEL_EXPORTER_PROMETHEUS_HOST",
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                |v| v.parse().map_err(|_| format!("{v:?} is not an IP address")),
            )?,
            prometheus_port: config::parsed(
                source,
                "OTEL_EXPORTER_PROMETHEUS_PORT",
                9464,
                config::port,
            )?,
            otlp_traces_endpoint: config::parsed(
                source,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                None,
                |v| {
                    if v.starts_with("http://") || v.starts_with("https://") {
                        Ok(Some(v.to_owned()))
                    } else {
                        Err("must be an http:// or https:// URL".to_owned())
                    }
                },
            )?,
        })
    }
}

/// The process's trace pipeline. Dropping it does nothing; call [`Tracing::shutdown`] to flush.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Installs the W3C trace-context propagator and, when an endpoint is configured, a batch
    /// OTLP/HTTP exporter (its own thread, 10 s export timeout) as the global tracer provider.
    pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<Self, String> {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let Some(endpoint) = &config.otlp_traces_endpoint else {
            return Ok(Self { provider: None });
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| format!("OTLP exporter: {err}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        global::set_tracer_provider(provider.clone());
        log::info!(
            event = "tracing_enabled",
            service,
            endpoint;
            "exporting traces"
        );
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown() {
                log::warn!(event = "tracing_shutdown_failed", error:% = err; "cannot flush traces");
            }
        }
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

/// Serves `GET /metrics` (Prometheus text format) for `registry` on its own listener, so
/// scraping never competes with the service's API. Returns the server and its port.
pub fn metrics_server(
    registry: Registry,
    host: IpAddr,
    port: u16,
) -> std::io::Result<(Server, u16)> {
    let listener = TcpListener::bind(SocketAddr::new(host, port))?;
    let port = listener.local_addr()?.port();
    let registry = web::Data::new(registry);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .route("/metrics", web::get().to(render))
    })
    .workers(1)
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(1)
    .run();
    Ok((server, port))
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

/// The `method` label of a request: one of the nine standard methods, or `other`. HTTP lets a
/// client send any token as a method; taking it as a label would let anyone create series
/// without bound.
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
        "other"
    }
}

/// HTTP request metrics of one service: `<prefix>_http_requests_total{route,method,status}` and
/// `<prefix>_http_request_duration_seconds{route,method}`. The route is the matched pattern
/// (`/api/v1/flavors/{name}`), never the raw path, so cardinality stays bounded.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates and registers the two metrics.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_http_requests_total"),
                "HTTP requests answered, by matched route, method and status code.",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                format!("{prefix}_http_request_duration_seconds"),
                "Time from request to response headers, by matched route and method.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    /// actix-web middleware recording every request (use with `middleware::from_fn`).
    pub async fn middleware(
        request: ServiceRequest,
        next: Next<impl MessageBody>,
    ) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
        let metrics = request.app_data::<web::Data<HttpMetrics>>().cloned();
        let started = Instant::now();
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = method_label(request.method()).to_owned();
        let response = next.call(request).await?;
        if let Some(metrics) = metrics {
            let status = response.status().as_u16().to_string();
            metrics
                .requests
                .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
                .inc();
            metrics
                .duration
                .with_label_values(&[route.as_str(), method.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(response)
    }
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
        assert_eq!(method_label(&custom), "other");
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

    #[test]
    fn telemetry_variables_have_defaults_and_are_checked() {
        let defaults = TelemetryConfig::from_source(&[("X", "y")]).unwrap();
        assert_eq!(defaults.prometheus_port, 9464);
        assert_eq!(defaults.prometheus_host.to_string(), "0.0.0.0");
        assert!(defaults.otlp_traces_endpoint.is_none());
        let err = TelemetryConfig::from_source(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "tempo")])
            .unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let err = TelemetryConfig::from_source(&[("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost!")])
            .unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_PROMETHEUS_HOST");
    }
}
