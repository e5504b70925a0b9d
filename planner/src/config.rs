//! Configuration, read once from the environment at start-up and validated before serving.

use std::{fmt, net::IpAddr, time::Duration};

use secrecy::SecretString;

use actors::amqp::Topology;

use crate::domain::labels::IgnoredLabels;

/// A variable that is missing or has a bad value; start-up stops with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Everything the planner needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `POSTGRESQL_DB_CONNECT_STRING` (required): `postgres://` or `postgresql://` URL.
    pub database_url: SecretString,
    /// `RABBITMQ_CONNECT_STRING` (required): `amqp://` or `amqps://` URL.
    pub rabbitmq_url: SecretString,
    /// Address the HTTP server binds: `0.0.0.0` in production, `127.0.0.1` in tests.
    pub bind_address: IpAddr,
    /// `APP_PORT` (default 8080); 0 picks a free port (tests).
    pub port: u16,
    /// `APP_ADMIN_TOKEN_VALUE` (required): `planner_v0_` and 20 of `[A-Za-z0-9_-]`.
    pub admin_token: SecretString,
    /// `APP_IGNORED_LABELS` (default `self-hosted,linux`): labels left out of matching.
    pub ignored_labels: IgnoredLabels,
    /// `APP_CONSUMER_PREFETCH` (default 64, 1..=65535): unacknowledged deliveries in flight.
    pub consumer_prefetch: u16,
    /// `APP_DB_POOL_SIZE` (default 10, 1..=100): PostgreSQL connections per process.
    pub db_pool_size: u32,
    /// How long a request or the consumer waits for a database connection (5 s; tests: 1 s).
    pub db_checkout_timeout: Duration,
    /// Whether `serve` runs pending migrations first (`planner serve --no-migrate` turns it off).
    pub migrate_on_start: bool,
    /// AMQP names; production names unless a test picks its own.
    pub topology: Topology,
    /// HTTP worker threads; `None`: one per core.
    pub http_workers: Option<usize>,
    /// Retry delays of the consumer (broker reconnects and database retries): first and cap.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
}

const ADMIN_TOKEN_PREFIX: &str = "planner_v0_";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|value| !value.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let invalid = |name: &'static str, reason: &str| ConfigError::Invalid {
            name,
            reason: reason.to_owned(),
        };

        let database_url = required("POSTGRESQL_DB_CONNECT_STRING")?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid(
                "POSTGRESQL_DB_CONNECT_STRING",
                "must start with postgres:// or postgresql://",
            ));
        }
        let rabbitmq_url = required("RABBITMQ_CONNECT_STRING")?;
        if !(rabbitmq_url.starts_with("amqp://") || rabbitmq_url.starts_with("amqps://")) {
            return Err(invalid(
                "RABBITMQ_CONNECT_STRING",
                "must start with amqp:// or amqps://",
            ));
        }
        let admin_token = required("APP_ADMIN_TOKEN_VALUE")?;
        if !is_valid_admin_token(&admin_token) {
            return Err(invalid(
                "APP_ADMIN_TOKEN_VALUE",
                "must match ^planner_v0_[A-Za-z0-9_-]{20}$",
            ));
        }
        let port = parse_or(&lookup, "APP_PORT", 8080u16)?;
        let consumer_prefetch = parse_or(&lookup, "APP_CONSUMER_PREFETCH", 64u16)?;
        if consumer_prefetch == 0 {
            return Err(invalid("APP_CONSUMER_PREFETCH", "must be at least 1"));
        }
        let db_pool_size = parse_or(&lookup, "APP_DB_POOL_SIZE", 10u32)?;
        if !(1..=100).contains(&db_pool_size) {
            return Err(invalid("APP_DB_POOL_SIZE", "must be between 1 and 100"));
        }
        let ignored_labels = match lookup("APP_IGNORED_LABELS") {
            Some(list) => IgnoredLabels::new(crate::domain::labels::parse_list(&list)),
            None => IgnoredLabels::default(),
        };

        Ok(Self {
            database_url: database_url.into(),
            rabbitmq_url: rabbitmq_url.into(),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            port,
            admin_token: admin_token.into(),
            ignored_labels,
            consumer_prefetch,
            db_pool_size,
            db_checkout_timeout: crate::store::CHECKOUT_TIMEOUT,
            migrate_on_start: true,
            topology: Topology::default(),
            http_workers: None,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
        })
    }

    /// A configuration for tests: loopback, a free port, the given AMQP names, short retries and
    /// a small pool.
    pub fn for_tests(
        database_url: &str,
        rabbitmq_url: &str,
        admin_token: &str,
        topology: Topology,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            rabbitmq_url: rabbitmq_url.into(),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            admin_token: admin_token.into(),
            ignored_labels: IgnoredLabels::default(),
            consumer_prefetch: 64,
            db_pool_size: 4,
            db_checkout_timeout: Duration::from_secs(1),
            migrate_on_start: false,
            topology,
            http_workers: Some(1),
            retry_min_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_millis(500),
        }
    }
}

/// Whether `token` has the admin token's shape: `planner_v0_` and 20 of `[A-Za-z0-9_-]`.
pub fn is_valid_admin_token(token: &str) -> bool {
    token.strip_prefix(ADMIN_TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 20
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

fn parse_or<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match lookup(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|err: T::Err| ConfigError::Invalid {
                name,
                reason: err.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ADMIN: &str = "planner_v0_abcdefghij0123456789";

    fn valid() -> HashMap<&'static str, String> {
        HashMap::from([
            (
                "POSTGRESQL_DB_CONNECT_STRING",
                "postgresql://u:pw@db/planner".to_owned(),
            ),
            (
                "RABBITMQ_CONNECT_STRING",
                "amqp://guest:guest@mq:5672/%2f".to_owned(),
            ),
            ("APP_ADMIN_TOKEN_VALUE", ADMIN.to_owned()),
        ])
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let config = load(&valid()).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.consumer_prefetch, 64);
        assert_eq!(config.ignored_labels, IgnoredLabels::default());
        assert_eq!(config.topology, Topology::default());
        assert!(config.migrate_on_start);
    }

    #[test]
    fn every_required_variable_is_named_when_missing() {
        for name in [
            "POSTGRESQL_DB_CONNECT_STRING",
            "RABBITMQ_CONNECT_STRING",
            "APP_ADMIN_TOKEN_VALUE",
        ] {
            let mut vars = valid();
            vars.remove(name);
            let err = load(&vars).unwrap_err();
            assert_eq!(err, ConfigError::Missing(name));
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value) in [
            ("POSTGRESQL_DB_CONNECT_STRING", "mysql://x"),
            ("RABBITMQ_CONNECT_STRING", "http://x"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v0_short"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v1_abcdefghij0123456789"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v0_abcdefghij012345678!"),
            ("APP_PORT", "http"),
            ("APP_PORT", "70000"),
            ("APP_CONSUMER_PREFETCH", "0"),
            ("APP_DB_POOL_SIZE", "0"),
        ] {
            let mut vars = valid();
            vars.insert(name, value.to_owned());
            let err = load(&vars).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={value}: {err}"
            );
            let secret = name.ends_with("CONNECT_STRING") || name == "APP_ADMIN_TOKEN_VALUE";
            if secret {
                assert!(
                    !err.to_string().contains(value),
                    "a secret is echoed: {err}"
                );
            }
        }
    }

    #[test]
    fn ignored_labels_are_configurable() {
        let mut vars = valid();
        vars.insert("APP_IGNORED_LABELS", "Self-Hosted, X64".to_owned());
        let config = load(&vars).unwrap();
        assert_eq!(
            config.ignored_labels,
            IgnoredLabels::new(["self-hosted", "x64"])
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = load(&valid()).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains(ADMIN));
        assert!(!printed.contains("pw@db"));
        assert!(printed.contains("REDACTED"));
    }
}
