//! The `OTEL_*` variables, read as the OpenTelemetry specification ("SDK environment
//! variables") and Canonical's services define them, plus `APP_METRICS_PATH`.
//!
//! Where the specification and Canonical's services differ, the choice is written on the
//! variable; every unsupported value stops start-up with an error naming the variable.

use std::time::Duration;

use crate::config::{self, ConfigError, Source, ValueError};

/// Where the metrics go: `OTEL_METRICS_EXPORTER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsExporter {
    /// `prometheus` (the default, what both charms set): a `/metrics` listener of its own.
    Prometheus(PrometheusListener),
    /// `otlp`: pushed to an OTLP receiver every `OTEL_METRIC_EXPORT_INTERVAL`.
    Otlp(OtlpTarget),
    /// `none`: not exported (still counted, so nothing else changes).
    None,
}

/// The Prometheus listener: `OTEL_EXPORTER_PROMETHEUS_HOST`, `OTEL_EXPORTER_PROMETHEUS_PORT`
/// and `APP_METRICS_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusListener {
    /// `OTEL_EXPORTER_PROMETHEUS_HOST` (default `localhost`, as the specification and
    /// Canonical's services; the charms set `0.0.0.0`): an IP address or a host name.
    pub host: String,
    /// `OTEL_EXPORTER_PROMETHEUS_PORT` (default 9464; 0 picks a free port, which is logged).
    pub port: u16,
    /// `APP_METRICS_PATH` (default `/metrics`): the path served, which the charms' scrape job
    /// also uses (Canonical's services serve `/metrics` whatever it says).
    pub path: String,
}

/// The OTLP transport: `OTEL_EXPORTER_OTLP_PROTOCOL` and its per-signal variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`.
    Grpc,
    /// `http/protobuf` (`http` is taken as the same, as Canonical's services do).
    HttpProtobuf,
}

/// One signal's OTLP receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    /// How to send.
    pub protocol: OtlpProtocol,
    /// Where: the whole URL for `http/protobuf` (`.../v1/traces`), the server for `grpc`.
    pub endpoint: String,
    /// How long one export may take.
    pub timeout: Duration,
    /// How often metrics are pushed (`OTEL_METRIC_EXPORT_INTERVAL`; unused for traces).
    pub interval: Duration,
}

impl OtlpTarget {
    /// An OTLP/HTTP (protobuf) target at `endpoint`, with the default timeout and interval.
    pub fn http(endpoint: impl Into<String>) -> Self {
        Self {
            protocol: OtlpProtocol::HttpProtobuf,
            endpoint: endpoint.into(),
            timeout: DEFAULT_EXPORT_TIMEOUT,
            interval: DEFAULT_METRIC_INTERVAL,
        }
    }
}

/// Telemetry settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `OTEL_METRICS_EXPORTER` and its exporter's variables.
    pub metrics: MetricsExporter,
    /// `OTEL_TRACES_EXPORTER=otlp`: the traces' receiver; `None` for `none`.
    pub traces: Option<OtlpTarget>,
}

/// Default of `OTEL_EXPORTER_PROMETHEUS_PORT`.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9464;
/// Default of `OTEL_EXPORTER_OTLP_TIMEOUT` (the specification's 10 s).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `OTEL_METRIC_EXPORT_INTERVAL` (the specification's 60 s).
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// The two signals exported over OTLP, with the names of their variables.
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn protocol_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        }
    }

    fn endpoint_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }

    fn timeout_variable(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        }
    }

    /// The path OTLP/HTTP appends to `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }
}

impl TelemetryConfig {
    /// Reads the variables of the README's telemetry table.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let metrics = match exporter(
            source,
            "OTEL_METRICS_EXPORTER",
            "prometheus",
            // `memory` is Canonical's name for keeping the metrics in the process unexported.
            &["prometheus", "otlp", "none", "memory"],
        )? {
            "prometheus" => MetricsExporter::Prometheus(PrometheusListener {
                host: config::parsed(
                    source,
                    "OTEL_EXPORTER_PROMETHEUS_HOST",
                    "localhost".to_owned(),
                    host,
                )?,
                port: config::parsed(
                    source,
                    "OTEL_EXPORTER_PROMETHEUS_PORT",
                    DEFAULT_PROMETHEUS_PORT,
                    config::port,
                )?,
                path: config::parsed(source, "APP_METRICS_PATH", "/metrics".to_owned(), path)?,
            }),
            "otlp" => MetricsExporter::Otlp(target(source, Signal::Metrics)?),
            _ => MetricsExporter::None,
        };
        // The specification's default is `otlp`, Canonical's `none`: traces go out when asked
        // for by name, or when an endpoint says where (as this service always did).
        let endpoint_set = source.get(Signal::Traces.endpoint_variable()).is_some()
            || source.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let traces = match exporter(
            source,
            "OTEL_TRACES_EXPORTER",
            if endpoint_set { "otlp" } else { "none" },
            &["otlp", "none"],
        )? {
            "otlp" => Some(target(source, Signal::Traces)?),
            _ => None,
        };
        Ok(Self { metrics, traces })
    }

    /// A Prometheus listener on 127.0.0.1 and a free port, no traces (tests).
    pub fn loopback() -> Self {
        Self {
            metrics: MetricsExporter::Prometheus(PrometheusListener {
                host: "127.0.0.1".to_owned(),
                port: 0,
                path: "/metrics".to_owned(),
            }),
            traces: None,
        }
    }

    /// The Prometheus listener, when metrics are served that way.
    pub fn prometheus(&self) -> Option<&PrometheusListener> {
        match &self.metrics {
            MetricsExporter::Prometheus(listener) => Some(listener),
            _ => None,
        }
    }
}

/// The exporter named by `variable` (one of `supported`), or `default`.
fn exporter(
    source: &dyn Source,
    variable: &'static str,
    default: &'static str,
    supported: &[&'static str],
) -> Result<&'static str, ConfigError> {
    let Some(value) = source.get(variable) else {
        return Ok(default);
    };
    let value = value.trim().to_ascii_lowercase();
    supported
        .iter()
        .find(|name| **name == value)
        .copied()
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                format!(
                    "{value:?} is not supported (supported: {})",
                    supported.join(", ")
                ),
            )
        })
}

/// The OTLP target of `signal`: protocol, endpoint and timeout by the specification's rules
/// (the per-signal variable first, then the general one, then the default).
fn target(source: &dyn Source, signal: Signal) -> Result<OtlpTarget, ConfigError> {
    let protocol_variable = if source.get(signal.protocol_variable()).is_some() {
        signal.protocol_variable()
    } else {
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    };
    let protocol = config::parsed(
        source,
        protocol_variable,
        OtlpProtocol::HttpProtobuf,
        |value| match value.to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(ValueError::Unsupported {
                value: other.to_owned(),
                supported: "grpc, http/protobuf",
            }),
        },
    )?;
    let endpoint = if source.get(signal.endpoint_variable()).is_some() {
        config::parsed(source, signal.endpoint_variable(), String::new(), url)?
    } else {
        let base = config::parsed(source, "OTEL_EXPORTER_OTLP_ENDPOINT", None, |v| {
            url(v).map(Some)
        })?;
        match (protocol, base) {
            (OtlpProtocol::Grpc, Some(base)) => base,
            (OtlpProtocol::Grpc, None) => "http://localhost:4317".to_owned(),
            (OtlpProtocol::HttpProtobuf, base) => format!(
                "{}/{}",
                base.as_deref()
                    .unwrap_or("http://localhost:4318")
                    .trim_end_matches('/'),
                signal.http_path()
            ),
        }
    };
    let timeout_variable = if source.get(signal.timeout_variable()).is_some() {
        signal.timeout_variable()
    } else {
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    };
    let timeout = config::parsed(source, timeout_variable, DEFAULT_EXPORT_TIMEOUT, millis)?;
    let interval = config::parsed(
        source,
        "OTEL_METRIC_EXPORT_INTERVAL",
        DEFAULT_METRIC_INTERVAL,
        millis,
    )?;
    Ok(OtlpTarget {
        protocol,
        endpoint,
        timeout,
        interval,
    })
}

/// A positive number of milliseconds (the specification's unit for these variables).
fn millis(value: &str) -> Result<Duration, ValueError> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(ValueError::NotMillis(value.to_owned())),
    }
}

fn url(value: &str) -> Result<String, ValueError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.to_owned())
    } else {
        Err(ValueError::Scheme("http:// or https:// URL"))
    }
}

/// An IP address or a host name (resolved when the listener binds).
fn host(value: &str) -> Result<String, ValueError> {
    let valid = value.parse::<std::net::IpAddr>().is_ok()
        || (value.len() <= 253
            && value.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ValueError::NotHost(value.to_owned()))
    }
}

/// An absolute URL path other than `/`, such as `/metrics`.
fn path(value: &str) -> Result<String, ValueError> {
    let valid = value.starts_with('/')
        && value.len() > 1
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ValueError::NotPath(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus(config: &TelemetryConfig) -> &PrometheusListener {
        config.prometheus().expect("a Prometheus listener")
    }

    #[test]
    fn defaults_are_a_prometheus_listener_on_9464_and_no_traces() {
        let config = TelemetryConfig::from_source(&[("X", "y")]).unwrap();
        let listener = prometheus(&config);
        assert_eq!(listener.host, "localhost");
        assert_eq!(listener.port, 9464);
        assert_eq!(listener.path, "/metrics");
        assert_eq!(config.traces, None);
    }

    #[test]
    fn canonical_charm_environment_is_understood() {
        let config = TelemetryConfig::from_source(&[
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "9100"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:4318/v1/traces",
            ),
        ])
        .unwrap();
        assert_eq!(prometheus(&config).host, "0.0.0.0");
        assert_eq!(prometheus(&config).port, 9100);
        assert_eq!(
            config.traces,
            Some(OtlpTarget::http("http://tempo:4318/v1/traces"))
        );
    }

    #[test]
    fn endpoints_follow_the_specification() {
        // The general endpoint gets the signal's path over HTTP, is the server over gRPC.
        let config = TelemetryConfig::from_source(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ])
        .unwrap();
        let MetricsExporter::Otlp(metrics) = &config.metrics else {
            panic!("metrics over OTLP: {config:?}");
        };
        assert_eq!(metrics.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(metrics.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(metrics.interval, Duration::from_secs(5));
        let traces = config.traces.unwrap();
        assert_eq!(traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(traces.endpoint, "http://collector:4317");

        let grpc = TelemetryConfig::from_source(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(grpc.traces.unwrap().endpoint, "http://localhost:4317");
        let http = TelemetryConfig::from_source(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
        assert_eq!(
            http.traces.unwrap().endpoint,
            "http://localhost:4318/v1/traces"
        );
        // An endpoint alone turns traces on; `none` turns them off whatever the endpoint.
        let implied =
            TelemetryConfig::from_source(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
                .unwrap();
        assert_eq!(implied.traces.unwrap().endpoint, "http://c:4318/v1/traces");
        let off = TelemetryConfig::from_source(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ])
        .unwrap();
        assert_eq!(off.traces, None);
        let none = TelemetryConfig::from_source(&[("OTEL_METRICS_EXPORTER", "NONE")]).unwrap();
        assert_eq!(none.metrics, MetricsExporter::None);
        // Canonical's services take `memory` (their default) for metrics kept unexported.
        let memory = TelemetryConfig::from_source(&[("OTEL_METRICS_EXPORTER", "memory")]).unwrap();
        assert_eq!(memory.metrics, MetricsExporter::None);
    }

    #[test]
    fn unsupported_values_name_their_variable() {
        for (variable, value) in [
            ("OTEL_METRICS_EXPORTER", "console"),
            ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "tempo:4318"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost!"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "x"),
            ("APP_METRICS_PATH", "metrics"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ] {
            let mut source = vec![(variable, value)];
            if variable.contains("OTLP") {
                source.push(("OTEL_TRACES_EXPORTER", "otlp"));
            }
            let err = TelemetryConfig::from_source(&source.as_slice()).unwrap_err();
            assert_eq!(err.variable, variable, "{value}: {err}");
            assert!(err.to_string().contains(variable), "{err}");
        }
    }
}
