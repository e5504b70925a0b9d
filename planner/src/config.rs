//! Configuration, read once from the environment at start-up and validated before serving.

use std::{net::IpAddr, time::Duration};

use secrecy::SecretString;

use actors::amqp::Topology;
use actors::config::{self, Environment, Source};
use actors::telemetry::TelemetryConfig;

use crate::domain::labels::IgnoredLabels;

pub use actors::config::ConfigError;

pub use crate::pressure::formula::DEFAULT_MAX_AGE as DEFAULT_JOB_MAX_AGE;

pub use actors::config::DEFAULT_REQUEST_TIMEOUT;

/// Everything the planner needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `POSTGRESQL_DB_CONNECT_STRING` (required): a `postgres://` or `postgresql://` URL or
    /// libpq's `key=value` pairs; several hosts (`host=a,b`, `postgresql://a,b/db`) with
    /// `target_session_attrs=read-write` find the primary after a failover.
    pub database_url: SecretString,
    /// `POSTGRESQL_DB_LISTEN_CONNECT_STRING` (default: `POSTGRESQL_DB_CONNECT_STRING`): the
    /// connection the pressure calculator holds `LISTEN` on. Behind a transaction pooler
    /// (PgBouncer), a direct connection to PostgreSQL: a pooler cannot hold a `LISTEN`.
    pub listen_database_url: SecretString,
    /// `APP_DB_PGBOUNCER` (default `false`): the pool goes through PgBouncer (transaction
    /// pooling), so it prepares no named statements (diesel's statement cache is off).
    pub db_pgbouncer: bool,
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
    /// `APP_CONSUMER_PREFETCH` (default 256, 1..=65535): unacknowledged deliveries in flight;
    /// a transaction applies at most half of them, two run at once. 256 measured twice the
    /// throughput of 64 on a backlog (larger transactions, fewer commits; `BENCHMARKS.md`).
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
    /// Cap of the consumer's retry delay.
    pub retry_max_delay: Duration,
    /// How often queue depths are polled for the metrics (15 s; tests: 100 ms).
    pub queue_depth_interval: Duration,
    /// `APP_JOB_MAX_AGE` (default 5 days): older jobs do not count towards pressure.
    pub job_max_age: Duration,
    /// `APP_STREAM_HEARTBEAT` (default 30 s): longest silence on a pressure stream.
    pub stream_heartbeat: Duration,
    /// `APP_REQUEST_TIMEOUT` (default 10 s): longest time to receive a request body; a client
    /// that sends it slower gets 408 (as the gateway does).
    pub request_timeout: Duration,
    /// Metrics exporter and traces (`OTEL_*`, `APP_METRICS_PATH`).
    pub telemetry: TelemetryConfig,
    /// `APP_METRICS_MAX_REPOS` (default 200): repositories named in the `repo` label of the
    /// job metrics; later ones count as `other`.
    pub metrics_max_repos: usize,
    /// `APP_GITHUB_*` (optional): the GitHub App; reconciliation runs only when it is set.
    pub github: Option<actors::github::AppConfig>,
    /// `APP_RECONCILE_*`: when and how much to reconcile.
    pub reconcile: ReconcileConfig,
    /// `APP_CONSOLE_*`: the web console's managers and GitHub.
    pub console: crate::console::ConsoleConfig,
}

const ADMIN_TOKEN_PREFIX: &str = "planner_v0_";

const LISTEN_VARIABLE: &str = "POSTGRESQL_DB_LISTEN_CONNECT_STRING";

impl Config {
    /// The retry delays (first and cap) of the consumer and the pressure calculator.
    pub fn retry(&self) -> actors::reconnect::Backoff {
        actors::reconnect::Backoff::new(self.retry_min_delay, self.retry_max_delay)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    /// Reads any [`Source`] of variables (the environment, or a fixed list in tests).
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let database_url = config::required(source, "POSTGRESQL_DB_CONNECT_STRING")?;
        check_database_url("POSTGRESQL_DB_CONNECT_STRING", &database_url)?;
        let listen_database_url = match source.get(LISTEN_VARIABLE) {
            Some(url) => {
                check_database_url(LISTEN_VARIABLE, &url)?;
                url
            }
            None => database_url.clone(),
        };
        // The LISTEN connection reads the string itself (tokio-postgres, TLS as libpq): refuse
        // what it cannot honour now, naming the variable it came from.
        crate::pgtls::ListenTarget::parse(&listen_database_url).map_err(|err| {
            let variable = if source.get(LISTEN_VARIABLE).is_some() {
                LISTEN_VARIABLE
            } else {
                "POSTGRESQL_DB_CONNECT_STRING"
            };
            ConfigError::new(variable, format!("for the LISTEN connection: {err}"))
        })?;
        let db_pgbouncer = config::parsed(source, "APP_DB_PGBOUNCER", false, config::boolean)?;
        let rabbitmq_url = config::required(source, "RABBITMQ_CONNECT_STRING").and_then(|v| {
            config::amqp_uri(&v).map_err(|r| ConfigError::new("RABBITMQ_CONNECT_STRING", r))
        })?;
        let admin_token = config::required(source, "APP_ADMIN_TOKEN_VALUE")?;
        if !is_valid_admin_token(&admin_token) {
            return Err(ConfigError::new(
                "APP_ADMIN_TOKEN_VALUE",
                "must match ^planner_v0_[A-Za-z0-9_-]{20}$",
            ));
        }
        let consumer_prefetch = config::parsed(
            source,
            "APP_CONSUMER_PREFETCH",
            256u16,
            config::positive_integer,
        )?;
        let db_pool_size = config::parsed(source, "APP_DB_POOL_SIZE", 10u32, |v| {
            config::integer_between(v, 1, 100)
        })?;
        let ignored_labels = match source.get("APP_IGNORED_LABELS") {
            Some(list) => IgnoredLabels::new(crate::domain::labels::parse_list(&list)),
            None => IgnoredLabels::default(),
        };

        Ok(Self {
            database_url: database_url.into(),
            listen_database_url: listen_database_url.into(),
            db_pgbouncer,
            rabbitmq_url: rabbitmq_url.into(),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            port: config::parsed(source, "APP_PORT", 8080, config::port)?,
            admin_token: admin_token.into(),
            ignored_labels,
            consumer_prefetch,
            db_pool_size,
            db_checkout_timeout: crate::store::CHECKOUT_TIMEOUT,
            migrate_on_start: true,
            topology: config::topology(source)?,
            http_workers: None,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            queue_depth_interval: Duration::from_secs(15),
            job_max_age: config::parsed(
                source,
                "APP_JOB_MAX_AGE",
                DEFAULT_JOB_MAX_AGE,
                config::duration,
            )?,
            stream_heartbeat: actors::stream::heartbeat_from(source)?,
            request_timeout: config::request_timeout(source)?,
            telemetry: TelemetryConfig::from_source(source)?,
            metrics_max_repos: config::parsed(
                source,
                "APP_METRICS_MAX_REPOS",
                crate::metrics::DEFAULT_MAX_REPOS,
                config::positive_integer,
            )?,
            github: actors::github::AppConfig::from_source(source)?,
            reconcile: ReconcileConfig::from_source(source)?,
            console: crate::console::ConsoleConfig::from_source(source)?,
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
            listen_database_url: database_url.into(),
            db_pgbouncer: false,
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
            queue_depth_interval: Duration::from_millis(100),
            job_max_age: DEFAULT_JOB_MAX_AGE,
            stream_heartbeat: actors::stream::DEFAULT_HEARTBEAT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            telemetry: TelemetryConfig::loopback(),
            metrics_max_repos: crate::metrics::DEFAULT_MAX_REPOS,
            github: None,
            reconcile: ReconcileConfig::default(),
            console: crate::console::ConsoleConfig::default(),
        }
    }
}

/// `POSTGRESQL_DB_CONNECT_STRING` must be a URL or `key=value` pairs that both libpq (the pool)
/// and tokio-postgres (the `LISTEN` connection) read; the error never quotes it (a password).
fn check_database_url(variable: &'static str, value: &str) -> Result<(), ConfigError> {
    let url = value.starts_with("postgres://") || value.starts_with("postgresql://");
    let pairs = !value.contains("://") && value.contains('=');
    // The rest is read where it is used: libpq for the pool, planner::pgtls for the LISTEN
    // connection (which parses it at start-up, naming the variable).
    if !(url || pairs) {
        return Err(ConfigError::new(
            variable,
            "must be a postgres:// or postgresql:// URL or key=value pairs (host=... dbname=...)",
        ));
    }
    Ok(())
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

/// Default of `APP_RECONCILE_AFTER`.
pub const DEFAULT_RECONCILE_AFTER: Duration = Duration::from_secs(15 * 60);
/// Default of `APP_RECONCILE_INTERVAL`.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `APP_RECONCILE_BATCH`.
pub const DEFAULT_RECONCILE_BATCH: u32 = 50;

/// Settings of reconciliation (used only when a GitHub App is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// `APP_RECONCILE_AFTER` (default 15 min): how long a job goes without news before it is
    /// checked, and between two checks of a job that stays open.
    pub after: Duration,
    /// `APP_RECONCILE_INTERVAL` (default 1 min): time between rounds.
    pub interval: Duration,
    /// `APP_RECONCILE_BATCH` (default 50, at most 1000): jobs checked per round at most.
    pub batch: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            after: DEFAULT_RECONCILE_AFTER,
            interval: DEFAULT_RECONCILE_INTERVAL,
            batch: DEFAULT_RECONCILE_BATCH,
        }
    }
}

impl ReconcileConfig {
    /// Reads `APP_RECONCILE_AFTER`, `APP_RECONCILE_INTERVAL` and `APP_RECONCILE_BATCH`.
    pub fn from_source(source: &dyn Source) -> Result<Self, config::ConfigError> {
        use actors::config::{duration, parsed};
        Ok(Self {
            after: parsed(
                source,
                "APP_RECONCILE_AFTER",
                DEFAULT_RECONCILE_AFTER,
                duration,
            )?,
            interval: parsed(
                source,
                "APP_RECONCILE_INTERVAL",
                DEFAULT_RECONCILE_INTERVAL,
                duration,
            )?,
            batch: parsed(
                source,
                "APP_RECONCILE_BATCH",
                DEFAULT_RECONCILE_BATCH,
                |v| config::integer_between(v, 1, 1000),
            )?,
        })
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

    struct Vars<'a>(&'a HashMap<&'static str, String>);

    impl Source for Vars<'_> {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned().filter(|v| !v.is_empty())
        }
    }

    fn load(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_source(&Vars(vars))
    }

    #[test]
    fn defaults() {
        let config = load(&valid()).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.consumer_prefetch, 256);
        assert_eq!(config.ignored_labels, IgnoredLabels::default());
        assert_eq!(config.topology, Topology::default());
        assert!(config.migrate_on_start);
        assert_eq!(config.job_max_age, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(config.stream_heartbeat, Duration::from_secs(30));
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(
            config.telemetry.prometheus().map(|listener| listener.port),
            Some(9464)
        );
        assert_eq!(config.metrics_max_repos, 200);
        assert!(!config.db_pgbouncer);
        use secrecy::ExposeSecret;
        assert_eq!(
            config.listen_database_url.expose_secret(),
            config.database_url.expose_secret(),
            "LISTEN on the main connection string by default"
        );
    }

    #[test]
    fn pgbouncer_and_a_direct_listen_connection() {
        use secrecy::ExposeSecret;
        let mut vars = valid();
        vars.insert("APP_DB_PGBOUNCER", "true".to_owned());
        vars.insert(
            "POSTGRESQL_DB_LISTEN_CONNECT_STRING",
            "postgresql://u:pw@db-direct/planner?sslmode=require".to_owned(),
        );
        let config = load(&vars).unwrap();
        assert!(config.db_pgbouncer);
        assert_eq!(
            config.listen_database_url.expose_secret(),
            "postgresql://u:pw@db-direct/planner?sslmode=require"
        );
        // A main string the LISTEN connection cannot honour is named as the main one.
        let mut vars = valid();
        vars.insert(
            "POSTGRESQL_DB_CONNECT_STRING",
            "postgresql://u:pw@db/planner?sslmode=verify-everything".to_owned(),
        );
        let err = load(&vars).unwrap_err();
        assert_eq!(err.variable, "POSTGRESQL_DB_CONNECT_STRING");
        assert!(
            err.to_string().contains("LISTEN connection: sslmode"),
            "{err}"
        );
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
            assert_eq!(err.variable, name);
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value) in [
            ("POSTGRESQL_DB_CONNECT_STRING", "mysql://x"),
            ("POSTGRESQL_DB_LISTEN_CONNECT_STRING", "mysql://x"),
            (
                "POSTGRESQL_DB_LISTEN_CONNECT_STRING",
                "postgres://u:pw@db/p?sslcert=/c.pem",
            ),
            ("APP_DB_PGBOUNCER", "maybe"),
            ("RABBITMQ_CONNECT_STRING", "http://x"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v0_short"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v1_abcdefghij0123456789"),
            ("APP_ADMIN_TOKEN_VALUE", "planner_v0_abcdefghij012345678!"),
            ("APP_PORT", "http"),
            ("APP_PORT", "70000"),
            ("APP_CONSUMER_PREFETCH", "0"),
            ("APP_DB_POOL_SIZE", "0"),
            ("APP_JOB_MAX_AGE", "forever"),
            ("APP_STREAM_HEARTBEAT", "0s"),
            ("APP_REQUEST_TIMEOUT", "soon"),
            ("APP_AMQP_NAME", "no spaces"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "x"),
            ("OTEL_METRICS_EXPORTER", "console"),
            ("APP_METRICS_MAX_REPOS", "0"),
        ] {
            let mut vars = valid();
            vars.insert(name, value.to_owned());
            let err = load(&vars).unwrap_err();
            assert!(err.variable == name, "{name}={value}: {err}");
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
    fn database_urls_may_name_several_hosts() {
        for url in [
            "postgresql://u:pw@a:5432,b:5433/planner?target_session_attrs=read-write",
            "host=a,b port=5432,5433 dbname=planner user=u target_session_attrs=read-write",
        ] {
            let mut vars = valid();
            vars.insert("POSTGRESQL_DB_CONNECT_STRING", url.to_owned());
            assert!(load(&vars).is_ok(), "{url}");
        }
        let mut vars = valid();
        vars.insert(
            "POSTGRESQL_DB_CONNECT_STRING",
            "host=a target_session_attrs=maybe".to_owned(),
        );
        assert_eq!(
            load(&vars).unwrap_err().variable,
            "POSTGRESQL_DB_CONNECT_STRING"
        );
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
    fn request_timeout_is_configurable() {
        let mut vars = valid();
        vars.insert("APP_REQUEST_TIMEOUT", "1500ms".to_owned());
        assert_eq!(
            load(&vars).unwrap().request_timeout,
            Duration::from_millis(1500)
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

    #[test]
    fn configuration_defaults_and_errors() {
        let config = ReconcileConfig::from_source(&[("OTHER", "x")]).unwrap();
        assert_eq!(config, ReconcileConfig::default());
        assert_eq!(config.after, std::time::Duration::from_secs(900));
        let config = ReconcileConfig::from_source(&[
            ("APP_RECONCILE_AFTER", "2m"),
            ("APP_RECONCILE_INTERVAL", "10s"),
            ("APP_RECONCILE_BATCH", "7"),
        ])
        .unwrap();
        assert_eq!(config.after, std::time::Duration::from_secs(120));
        assert_eq!(config.interval, std::time::Duration::from_secs(10));
        assert_eq!(config.batch, 7);
        for (name, value) in [
            ("APP_RECONCILE_AFTER", "soon"),
            ("APP_RECONCILE_INTERVAL", "0"),
            ("APP_RECONCILE_BATCH", "0"),
            ("APP_RECONCILE_BATCH", "5000"),
        ] {
            let err = ReconcileConfig::from_source(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }
}
