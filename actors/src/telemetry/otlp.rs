//! Pushing a Prometheus registry over OTLP (`OTEL_METRICS_EXPORTER=otlp`): every
//! `OTEL_METRIC_EXPORT_INTERVAL` the registry is gathered and sent as one
//! `ExportMetricsServiceRequest`, over HTTP/protobuf or gRPC. Counters become monotonic
//! cumulative sums, gauges gauges, histograms explicit-bucket histograms; names and labels stay
//! the Prometheus ones, so a Prometheus-compatible backend shows the same series as a scrape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    },
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prometheus::{
    proto::{MetricFamily, MetricType},
    Registry,
};
use prost::Message;

use super::{OtlpProtocol, OtlpTarget, TelemetryError};

/// The periodic push; [`PushTask::stop`] pushes once more and ends it.
pub(super) struct PushTask {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl PushTask {
    /// Starts pushing `registry` to `target` (the first push after one interval).
    pub(super) fn start(
        service: &'static str,
        registry: Registry,
        target: &OtlpTarget,
    ) -> Result<Self, TelemetryError> {
        let mut sender = Sender::new(target)?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (interval, timeout) = (target.interval, target.timeout);
        let endpoint = target.endpoint.clone();
        let started = unix_nanos(SystemTime::now());
        let done = actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                let last = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = &mut stopped => true,
                };
                let request = request(service, started, &registry.gather());
                match tokio::time::timeout(timeout, sender.send(request)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => log::warn!(
                        event = "metrics_push_failed",
                        endpoint = endpoint.as_str(),
                        error:% = err;
                        "cannot push metrics"
                    ),
                    Err(_) => log::warn!(
                        event = "metrics_push_failed",
                        endpoint = endpoint.as_str(),
                        timeout:? = timeout;
                        "no answer to a metrics push in time"
                    ),
                }
                if last {
                    return;
                }
            }
        });
        log::info!(
            event = "metrics_push_enabled",
            endpoint = target.endpoint.as_str(),
            protocol:? = target.protocol,
            interval:? = interval;
            "pushing metrics"
        );
        Ok(Self { stop, done })
    }

    /// Pushes what was counted since the last push, then stops.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Why one push failed (logged; the next push sends everything again, values being cumulative).
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Grpc(#[from] tonic::Status),
}

enum Sender {
    Http {
        client: reqwest::Client,
        endpoint: String,
    },
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
}

impl Sender {
    fn new(target: &OtlpTarget) -> Result<Self, TelemetryError> {
        let failed = |reason: String| TelemetryError::MetricsExporter {
            endpoint: target.endpoint.clone(),
            reason,
        };
        match target.protocol {
            OtlpProtocol::HttpProtobuf => Ok(Self::Http {
                client: reqwest::Client::builder()
                    .timeout(target.timeout)
                    .build()
                    .map_err(|err| failed(err.to_string()))?,
                endpoint: target.endpoint.clone(),
            }),
            OtlpProtocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone())
                    .map_err(|err| failed(err.to_string()))?
                    .connect_timeout(target.timeout)
                    .timeout(target.timeout);
                if target.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                        .map_err(|err| failed(err.to_string()))?;
                }
                Ok(Self::Grpc(MetricsServiceClient::new(
                    endpoint.connect_lazy(),
                )))
            }
        }
    }

    async fn send(&mut self, request: ExportMetricsServiceRequest) -> Result<(), PushError> {
        match self {
            Self::Http { client, endpoint } => {
                let response = client
                    .post(endpoint.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(PushError::Status(response.status()))
                }
            }
            Self::Grpc(client) => {
                client.export(request).await?;
                Ok(())
            }
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// One OTLP request holding every series of `families`, for `service`, cumulative since
/// `started` (Unix nanoseconds).
fn request(service: &str, started: u64, families: &[MetricFamily]) -> ExportMetricsServiceRequest {
    let now = unix_nanos(SystemTime::now());
    let metrics = families
        .iter()
        .filter_map(|family| {
            let attributes = |metric: &prometheus::proto::Metric| {
                metric
                    .get_label()
                    .iter()
                    .map(|label| string(label.name(), label.value()))
                    .collect::<Vec<_>>()
            };
            let number = |metric: &prometheus::proto::Metric, value: f64| NumberDataPoint {
                attributes: attributes(metric),
                start_time_unix_nano: started,
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            };
            let series = family.get_metric();
            let data = match family.get_field_type() {
                MetricType::COUNTER => Data::Sum(Sum {
                    data_points: series
                        .iter()
                        .map(|m| number(m, m.get_counter().value()))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                MetricType::GAUGE => Data::Gauge(Gauge {
                    data_points: series
                        .iter()
                        .map(|m| number(m, m.get_gauge().value()))
                        .collect(),
                }),
                MetricType::HISTOGRAM => Data::Histogram(Histogram {
                    data_points: series
                        .iter()
                        .map(|m| {
                            let histogram = m.get_histogram();
                            let buckets = histogram.get_bucket();
                            // Prometheus counts are cumulative, OTLP's per bucket; the last
                            // OTLP bucket is (last bound, +Inf).
                            let mut counts = Vec::with_capacity(buckets.len() + 1);
                            let mut below = 0;
                            for bucket in buckets {
                                counts.push(bucket.cumulative_count() - below);
                                below = bucket.cumulative_count();
                            }
                            counts.push(histogram.get_sample_count().saturating_sub(below));
                            HistogramDataPoint {
                                attributes: attributes(m),
                                start_time_unix_nano: started,
                                time_unix_nano: now,
                                count: histogram.get_sample_count(),
                                sum: Some(histogram.get_sample_sum()),
                                bucket_counts: counts,
                                explicit_bounds: buckets.iter().map(|b| b.upper_bound()).collect(),
                                ..Default::default()
                            }
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
                // The services declare no summaries or untyped metrics.
                _ => return None,
            };
            Some(Metric {
                name: family.name().to_owned(),
                description: family.help().to_owned(),
                data: Some(data),
                ..Default::default()
            })
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: service.to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram as PromHistogram, HistogramOpts, IntCounterVec, IntGauge, Opts};

    use super::*;

    #[test]
    fn counters_gauges_and_histograms_become_otlp_series() {
        let registry = Registry::new();
        let counter = IntCounterVec::new(Opts::new("a_total", "A."), &["platform"]).unwrap();
        let gauge = IntGauge::new("b", "B.").unwrap();
        let histogram =
            PromHistogram::with_opts(HistogramOpts::new("c_seconds", "C.").buckets(vec![1.0, 5.0]))
                .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        registry.register(Box::new(histogram.clone())).unwrap();
        counter.with_label_values(&["github"]).inc_by(3);
        gauge.set(7);
        for value in [0.5, 2.0, 3.0, 60.0] {
            histogram.observe(value);
        }

        let request = request("svc", 1, &registry.gather());
        let resource = &request.resource_metrics[0];
        assert_eq!(
            resource.resource.as_ref().unwrap().attributes,
            vec![string("service.name", "svc")]
        );
        let metrics = &resource.scope_metrics[0].metrics;
        let by_name = |name: &str| {
            metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.data.clone())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let Data::Sum(sum) = by_name("a_total") else {
            panic!("a_total is not a sum");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            sum.data_points[0].attributes,
            vec![string("platform", "github")]
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        let Data::Gauge(gauge) = by_name("b") else {
            panic!("b is not a gauge");
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(7.0))
        );
        let Data::Histogram(histogram) = by_name("c_seconds") else {
            panic!("c_seconds is not a histogram");
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![1.0, 5.0]);
        assert_eq!(point.bucket_counts, vec![1, 2, 1]);
        assert_eq!(point.count, 4);
        assert_eq!(point.sum, Some(65.5));
    }
}
