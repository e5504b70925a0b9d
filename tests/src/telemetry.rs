//! Reading what the services export: Prometheus text from `/metrics`, and OTLP exports (traces
//! and metrics, over HTTP/protobuf or gRPC) received by real receivers started inside the test.

use std::collections::BTreeMap;

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

/// One scrape: each series (`name{labels}`) with its value.
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// GETs `url` and parses the Prometheus text format.
    pub async fn get(url: &str) -> Self {
        Self::get_with(&reqwest::Client::new(), url).await
    }

    /// [`Scrape::get`] with a client of the caller's (a client is costly to build: polling
    /// loops keep one).
    pub async fn get_with(client: &reqwest::Client, url: &str) -> Self {
        let text = client
            .get(url)
            .send()
            .await
            .expect("scrape /metrics")
            .error_for_status()
            .expect("/metrics answers 200")
            .text()
            .await
            .expect("metrics body");
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(series)
    }

    /// The value of one series, e.g. `foo_total` or `foo_total{reason="x"}`; fails the test
    /// when it is not exported.
    pub fn value(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("{series} is not exported; have: {:#?}", self.0.keys()))
    }

    /// The sum of every series of metric `name`, whatever its labels (0 when none).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(key, _)| key.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .sum()
    }

    /// The sum of the series of metric `name` whose labels include every pair of `labels` (0
    /// when none).
    pub fn sum_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter_map(|(key, value)| {
                let (metric, pairs) = parse_series(key);
                let all = labels
                    .iter()
                    .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v));
                (metric == name && all).then_some(value)
            })
            .sum()
    }

    /// Each exported metric name with the label names its series carry (labels with an empty
    /// value count as absent, as Prometheus takes them).
    pub fn labels(&self) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for key in self.0.keys() {
            let (metric, pairs) = parse_series(key);
            out.entry(metric.to_owned()).or_default().extend(
                pairs
                    .into_iter()
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, _)| name),
            );
        }
        out
    }

    /// The metric names exported (labels stripped, histogram/summary suffixes kept).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.0
            .keys()
            .map(|key| key.split('{').next().unwrap_or(key).to_owned())
            .collect()
    }
}

/// A series key `name{a="x",b="y"}` as its name and label pairs (values unescaped).
pub fn parse_series(key: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key, Vec::new());
    };
    let mut pairs = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let label = label.trim_start_matches(',').trim().to_owned();
        if label.is_empty() || label == "}" || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        pairs.push((label, value));
    }
    (name, pairs)
}

/// What an OTLP receiver got: each span, and each metrics export whole.
struct Exports {
    spans: mpsc::UnboundedSender<Span>,
    metrics: mpsc::UnboundedSender<ExportMetricsServiceRequest>,
}

impl Exports {
    /// Decodes one export of `signal` (`traces` or `metrics`); false when it is not one.
    fn take(&self, signal: &str, body: &[u8]) -> bool {
        match signal {
            "traces" => {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return false;
                };
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let _ = self.spans.send(span);
                        }
                    }
                }
                true
            }
            "metrics" => match ExportMetricsServiceRequest::decode(body) {
                Ok(request) => self.metrics.send(request).is_ok(),
                Err(_) => false,
            },
            _ => false,
        }
    }
}

/// What a receiver received, in order; both receivers deref to it.
pub struct Exported {
    spans: mpsc::UnboundedReceiver<Span>,
    metrics: mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
}

fn exports() -> (Exports, Exported) {
    let (spans_tx, spans) = mpsc::unbounded_channel();
    let (metrics_tx, metrics) = mpsc::unbounded_channel();
    (
        Exports {
            spans: spans_tx,
            metrics: metrics_tx,
        },
        Exported { spans, metrics },
    )
}

impl Exported {
    /// The next span received, waiting up to `limit`.
    pub async fn next(&mut self, limit: std::time::Duration) -> Span {
        crate::within(limit, "an exported span", self.spans.recv())
            .await
            .expect("receiver open")
    }

    /// The next metrics export received, waiting up to `limit`.
    pub async fn next_metrics(
        &mut self,
        limit: std::time::Duration,
    ) -> ExportMetricsServiceRequest {
        crate::within(limit, "a metrics export", self.metrics.recv())
            .await
            .expect("receiver open")
    }

    /// Receives spans until one named `name` arrives; returns it and every span before it.
    pub async fn until(&mut self, name: &str, limit: std::time::Duration) -> Vec<Span> {
        let mut seen = Vec::new();
        loop {
            let span = self.next(limit).await;
            let done = span.name == name;
            seen.push(span);
            if done {
                return seen;
            }
        }
    }
}

/// Both receivers read as [`Exported`].
macro_rules! deref_to_exported {
    ($receiver:ty) => {
        impl std::ops::Deref for $receiver {
            type Target = Exported;
            fn deref(&self) -> &Exported {
                &self.received
            }
        }

        impl std::ops::DerefMut for $receiver {
            fn deref_mut(&mut self) -> &mut Exported {
                &mut self.received
            }
        }
    };
}

deref_to_exported!(OtlpReceiver);
deref_to_exported!(GrpcReceiver);

/// The metric names of a metrics export.
pub fn exported_names(request: &ExportMetricsServiceRequest) -> std::collections::BTreeSet<String> {
    request
        .resource_metrics
        .iter()
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
        .map(|metric| metric.name.clone())
        .collect()
}

/// An OTLP/HTTP (protobuf) receiver on 127.0.0.1:0 (`/v1/traces`, `/v1/metrics`) that decodes
/// every export.
pub struct OtlpReceiver {
    /// The URL to set as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub endpoint: String,
    /// The URL to set as `OTEL_EXPORTER_OTLP_ENDPOINT` (both signals).
    pub base: String,
    received: Exported,
    handle: actix_web::dev::ServerHandle,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub fn start() -> Self {
        let (exports, received) = exports();
        let exports = web::Data::new(exports);
        let server = HttpServer::new(move || {
            App::new().app_data(exports.clone()).route(
                    "/v1/{signal}",
                    web::post().to(
                        |signal: web::Path<String>,
                         body: web::Bytes,
                         exports: web::Data<Exports>| async move {
                            if !exports.take(&signal, &body) {
                                return HttpResponse::BadRequest().finish();
                            }
                            HttpResponse::Ok()
                                .content_type("application/x-protobuf")
                                .finish()
                        },
                    ),
                )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind OTLP receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self {
            endpoint: format!("http://127.0.0.1:{port}/v1/traces"),
            base: format!("http://127.0.0.1:{port}"),
            received,
            handle,
        }
    }

    /// Stops the receiver.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1:0: HTTP/2 with gRPC's framing, answering every
/// `Export` of the trace and metrics services with an empty success. Stops when dropped.
pub struct GrpcReceiver {
    /// The URL to set as `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    pub endpoint: String,
    received: Exported,
    accept: tokio::task::JoinHandle<()>,
}

impl GrpcReceiver {
    /// Starts the receiver.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC receiver");
        let port = listener.local_addr().expect("local address").port();
        let (exports, received) = exports();
        let exports = std::sync::Arc::new(exports);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let exports = exports.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        tokio::spawn(answer(request, respond, exports.clone()));
                    }
                });
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            received,
            accept,
        }
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one gRPC request, hands its message to `exports`, answers an empty message with
/// `grpc-status` 0 (or 12, unimplemented, for another method).
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    exports: std::sync::Arc<Exports>,
) {
    let signal = match request.uri().path() {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => "traces",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => "metrics",
        _ => "",
    };
    let mut body = request.into_body();
    let mut data = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // A gRPC message: a compression flag, a 4-byte big-endian length, the message.
    let taken = data.len() >= 5 && data[0] == 0 && exports.take(signal, &data[5..]);
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("a response");
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let _ = stream.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
    let mut trailers = http::HeaderMap::new();
    let status = if taken { "0" } else { "12" };
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let _ = stream.send_trailers(trailers);
}

/// The string or integer value of attribute `key` of `span`, as text.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}
