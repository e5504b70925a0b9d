//! Reading a service's configuration from the environment: shared helpers so both services
//! report a bad variable the same way, naming it, and never echo a secret's value.

use std::time::Duration;

/// A configuration variable that is missing or invalid. Start-up stops with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration variable {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub reason: String,
}

impl ConfigError {
    /// An error about `variable`.
    pub fn new(variable: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            variable,
            reason: reason.to_string(),
        }
    }
}

/// Why a value is refused, as the parsers here and the services' own rules say it; a
/// [`ConfigError`] adds the variable. A message repeats the value only where it cannot be a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a whole number above zero.
    #[error("{0:?} is not a positive whole number")]
    NotPositiveInteger(String),
    /// Not a whole number in `min..=max`.
    #[error("must be a whole number between {min} and {max}")]
    OutOfRange {
        /// Smallest value allowed.
        min: u64,
        /// Largest value allowed.
        max: u64,
    },
    /// Not 0-65535.
    #[error("{0:?} is not a port number (0-65535)")]
    NotPort(String),
    /// Neither seconds nor a duration with units.
    #[error("{0:?} is not a duration such as 5s, 500ms or 2m")]
    NotDuration(String),
    /// A duration of zero.
    #[error("must be greater than zero")]
    Zero,
    /// Not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address")]
    NotIpAddress(String),
    /// Not a URL at all; the text names an example.
    #[error("is not a URL such as {0}")]
    NotUrl(&'static str),
    /// A URL or URI of another scheme; the text names the schemes allowed.
    #[error("must be an {0}")]
    Scheme(&'static str),
    /// An `amqp://` URI that does not parse (the value is not repeated: it may hold a password).
    #[error("is not a valid AMQP URI")]
    AmqpUri,
    /// A name too long, empty or with other characters than those allowed.
    #[error("must be 1-{max} characters of {allowed}")]
    Characters {
        /// Longest length allowed.
        max: usize,
        /// The characters allowed, as people read them (`a-z 0-9 -`).
        allowed: &'static str,
    },
    /// Not a whole number of milliseconds above zero.
    #[error("{0:?} is not a positive whole number of milliseconds")]
    NotMillis(String),
    /// Neither an IP address nor a host name.
    #[error("{0:?} is not an IP address or a host name")]
    NotHost(String),
    /// Not an absolute URL path other than `/`.
    #[error("{0:?} is not an absolute URL path such as /metrics")]
    NotPath(String),
    /// A name outside a fixed list; the text names the list.
    #[error("{value:?} is not supported (supported: {supported})")]
    Unsupported {
        /// The value given.
        value: String,
        /// The values allowed, comma-separated.
        supported: &'static str,
    },
    /// Another rule, stated in full.
    #[error("{0}")]
    Rule(&'static str),
    /// One of several comma-separated values is wrong.
    #[error("{error} (URI {index} of {count})")]
    InList {
        /// Which one (from 1).
        index: usize,
        /// How many there are.
        count: usize,
        /// What is wrong with it.
        error: Box<ValueError>,
    },
}

/// Where variables come from: the process environment in production, a map in tests.
pub trait Source {
    /// The value of `name`, if set. An empty value counts as unset.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct Environment;

impl Source for Environment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

/// A fixed list of variables (tests).
impl Source for &[(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
            .filter(|v| !v.trim().is_empty())
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Source::get(&self.as_slice(), name)
    }
}

/// A required variable.
pub fn required(source: &dyn Source, name: &'static str) -> Result<String, ConfigError> {
    source
        .get(name)
        .ok_or_else(|| ConfigError::new(name, "is required but not set"))
}

/// An optional variable parsed with `parse`, or `default` when unset.
pub fn parsed<T>(
    source: &dyn Source,
    name: &'static str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Result<T, ConfigError> {
    match source.get(name) {
        None => Ok(default),
        Some(value) => parse(value.trim()).map_err(|reason| ConfigError::new(name, reason)),
    }
}

/// A positive whole number.
pub fn positive_integer<T>(value: &str) -> Result<T, ValueError>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    match value.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(ValueError::NotPositiveInteger(value.to_owned())),
    }
}

/// A whole number in `min..=max`.
pub fn integer_between<T>(value: &str, min: T, max: T) -> Result<T, ValueError>
where
    T: std::str::FromStr + PartialOrd + Into<u64> + Copy,
{
    match value.parse::<T>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ValueError::OutOfRange {
            min: min.into(),
            max: max.into(),
        }),
    }
}

/// A TCP port (0-65535; 0 lets the system pick a free one, which the service logs).
pub fn port(value: &str) -> Result<u16, ValueError> {
    value
        .parse::<u16>()
        .map_err(|_| ValueError::NotPort(value.to_owned()))
}

/// A positive duration: plain seconds (`5`) or with units (`500ms`, `5s`, `2m`, `120h`).
pub fn duration(value: &str) -> Result<Duration, ValueError> {
    let parsed = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|_| ValueError::NotDuration(value.to_owned()))?,
    };
    if parsed.is_zero() {
        return Err(ValueError::Zero);
    }
    Ok(parsed)
}

/// A listener that could not be bound: the address and the variables that set it, so two
/// services left on the same default port say which setting to change.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (set by {variables}): {error}")]
pub struct BindError {
    /// The address asked for, `host:port`.
    pub address: String,
    /// The variables that choose it, e.g. `APP_PORT`.
    pub variables: &'static str,
    /// What the system said (`Address already in use (os error 98)`, ...).
    pub error: std::io::Error,
}

impl From<BindError> for std::io::Error {
    fn from(err: BindError) -> Self {
        std::io::Error::new(err.error.kind(), err)
    }
}

/// Binds a TCP listener on `host:port` (a host name is resolved), or says which address and
/// which `variables` are at fault.
pub fn bind(
    host: &str,
    port: u16,
    variables: &'static str,
) -> Result<std::net::TcpListener, BindError> {
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let failed = |error| BindError {
        address: address.clone(),
        variables,
        error,
    };
    // A host name may resolve to several addresses: IPv4 first, as Go's services listen
    // (`localhost` is then 127.0.0.1, where the documentation's URLs point).
    let mut addresses: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(failed)?
            .collect();
    addresses.sort_by_key(|address| address.is_ipv6());
    std::net::TcpListener::bind(addresses.as_slice()).map_err(failed)
}

/// Default of `APP_REQUEST_TIMEOUT`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `APP_REQUEST_TIMEOUT` (default 10 s, both services): longest time to receive a request body;
/// a client that sends it slower gets 408.
pub fn request_timeout(source: &dyn Source) -> Result<Duration, ConfigError> {
    parsed(
        source,
        "APP_REQUEST_TIMEOUT",
        DEFAULT_REQUEST_TIMEOUT,
        duration,
    )
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, any case).
pub fn boolean(value: &str) -> Result<bool, ValueError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ValueError::Rule("must be true or false")),
    }
}

/// One AMQP URI (`amqp://` or `amqps://`) or several separated by commas (the nodes of a
/// cluster); the error never repeats the value (it may hold a password).
pub fn amqp_uri(value: &str) -> Result<String, ValueError> {
    let uris: Vec<&str> = crate::amqp::split_uris(value).collect();
    if uris.is_empty() {
        return Err(ValueError::Scheme("amqp:// or amqps:// URI"));
    }
    for (index, uri) in uris.iter().enumerate() {
        let checked = if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
            Err(ValueError::Scheme("amqp:// or amqps:// URI"))
        } else {
            uri.parse::<lapin::uri::AMQPUri>()
                .map(|_| ())
                .map_err(|_| ValueError::AmqpUri)
        };
        match checked {
            Err(error) if uris.len() > 1 => {
                return Err(ValueError::InList {
                    index: index + 1,
                    count: uris.len(),
                    error: Box::new(error),
                })
            }
            Err(error) => return Err(error),
            Ok(()) => {}
        }
    }
    Ok(value.to_owned())
}

/// `APP_AMQP_NAME`: base name of the AMQP exchange and queue (default
/// `github-workflow-jobs`, Canonical's); the dead-letter exchange and queue add `-dlx`/`-dlq`.
/// `APP_AMQP_QUEUE_TYPE`: `classic` (default) or `quorum`, the type of both queues.
/// Both services must use the same values. Tests and side-by-side deployments set their own.
pub fn topology(source: &dyn Source) -> Result<crate::amqp::Topology, ConfigError> {
    let queue_type = parsed(
        source,
        "APP_AMQP_QUEUE_TYPE",
        crate::amqp::QueueType::Classic,
        str::parse,
    )?;
    Ok(topology_names(source)?.with_queue_type(queue_type))
}

fn topology_names(source: &dyn Source) -> Result<crate::amqp::Topology, ConfigError> {
    parsed(
        source,
        "APP_AMQP_NAME",
        crate::amqp::Topology::default(),
        |value| {
            let valid = !value.is_empty()
                && value.len() <= 200
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if valid {
                Ok(crate::amqp::Topology::named(value))
            } else {
                Err(ValueError::Characters {
                    max: 200,
                    allowed: "A-Z a-z 0-9 - _ . :",
                })
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("5d"), Ok(Duration::from_secs(5 * 24 * 3600)));
        assert!(duration("0").is_err());
        assert!(duration("soon").is_err());
    }

    #[test]
    fn amqp_names_are_configurable_and_checked() {
        let default = topology(&[("OTHER", "x")]).unwrap();
        assert_eq!(default.queue, "github-workflow-jobs");
        let custom = topology(&[("APP_AMQP_NAME", "staging-jobs")]).unwrap();
        assert_eq!(custom.exchange, "staging-jobs");
        assert_eq!(custom.dead_letter_queue, "staging-jobs-dlq");
        let err = topology(&[("APP_AMQP_NAME", "bad name")]).unwrap_err();
        assert_eq!(err.variable, "APP_AMQP_NAME");
    }

    #[test]
    fn queue_types_are_configurable_and_checked() {
        use crate::amqp::QueueType;
        assert_eq!(
            topology(&[("OTHER", "x")]).unwrap().queue_type,
            QueueType::Classic
        );
        let quorum = topology(&[("APP_AMQP_NAME", "jobs"), ("APP_AMQP_QUEUE_TYPE", "quorum")]);
        let quorum = quorum.unwrap();
        assert_eq!(
            (quorum.queue.as_str(), quorum.queue_type),
            ("jobs", QueueType::Quorum)
        );
        let err = topology(&[("APP_AMQP_QUEUE_TYPE", "stream")]).unwrap_err();
        assert_eq!(err.variable, "APP_AMQP_QUEUE_TYPE");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        assert_eq!(integer_between("10", 1u32, 100), Ok(10));
        let err = integer_between("0", 1u32, 100).unwrap_err();
        assert_eq!(err.to_string(), "must be a whole number between 1 and 100");
        assert!(integer_between("101", 1u32, 100).is_err());
        assert!(integer_between("many", 1u32, 100).is_err());
    }

    #[test]
    fn ports_are_checked() {
        assert_eq!(port("8080"), Ok(8080));
        assert_eq!(port("0"), Ok(0));
        assert!(port("-1").is_err());
        assert!(port("70000").is_err());
        assert!(port("http").is_err());
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_address_and_the_variable() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind("127.0.0.1", port, "APP_PORT").unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("APP_PORT"), "{text}");
        assert!(text.contains("in use"), "{text}");
        assert_eq!(std::io::Error::from(err).to_string(), text);
        assert!(bind("127.0.0.1", 0, "APP_PORT").is_ok());
        let local = bind("localhost", 0, "APP_PORT").unwrap();
        assert!(
            local.local_addr().unwrap().is_ipv4(),
            "localhost is 127.0.0.1 first"
        );
        let err = bind("no-such-host.invalid", 0, "OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid:0"), "{err}");
    }

    #[test]
    fn amqp_uri_errors_do_not_echo_the_value() {
        let err = amqp_uri("http://user:hunter2@host").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let err = amqp_uri("amqp://user:hunter2@host:port").unwrap_err();
        assert_eq!(err, ValueError::AmqpUri);
        assert!(!err.to_string().contains("hunter2"));
        assert!(amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
    }

    #[test]
    fn amqp_uri_lists_are_checked_node_by_node() {
        assert!(amqp_uri("amqp://a:5701/%2f, amqp://b:5702/%2f").is_ok());
        let err = amqp_uri("amqp://a:5701/%2f,http://u:hunter2@b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("URI 2 of 2"), "{err}");
        assert!(!err.contains("hunter2"));
        assert!(amqp_uri(" , ").is_err());
    }

    #[test]
    fn missing_and_empty_are_reported_by_name() {
        let source = [("SET", "x"), ("EMPTY", " ")];
        assert_eq!(required(&source, "SET"), Ok("x".to_owned()));
        let err = required(&source, "EMPTY").unwrap_err();
        assert_eq!(err.variable, "EMPTY");
        assert!(err.to_string().contains("EMPTY"));
        assert_eq!(parsed(&source, "UNSET", 7u32, positive_integer), Ok(7));
    }
}
