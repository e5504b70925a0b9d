//! Gateway configuration, read once from the environment at start-up.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use actors::amqp::Topology;
use actors::config::{self, ConfigError, Environment, Source, ValueError};
use actors::telemetry::TelemetryConfig;
use secrecy::SecretString;

/// Everything the gateway needs to run. Built by [`Config::from_env`] in production; tests
/// build it with [`Config::from_source`] and adjust fields (listen address, topology).
#[derive(Debug)]
pub struct Config {
    /// Address to listen on. Always `0.0.0.0` from the environment; tests use `127.0.0.1`.
    pub host: IpAddr,
    /// `APP_PORT` (default 8080). Port 0 picks a free port (tests).
    pub port: u16,
    /// `RABBITMQ_CONNECT_STRING` (required): AMQP URI of the broker.
    pub rabbitmq_uri: SecretString,
    /// `APP_WEBHOOK_SECRET_VALUE` (required): the secret GitHub signs deliveries with.
    pub webhook_secret: SecretString,
    /// `APP_WEBHOOK_SECRET_PREVIOUS_VALUE` (optional): also accepted, while rotating secrets.
    pub previous_webhook_secret: Option<SecretString>,
    /// `APP_MAX_BODY_BYTES` (default 1 MiB): larger bodies get 413 and are not read further.
    pub max_body_bytes: usize,
    /// `APP_PUBLISH_TIMEOUT` (default 5 s): how long a webhook may wait for the broker's
    /// confirm before it is answered 503.
    pub publish_timeout: Duration,
    /// `APP_MAX_IN_FLIGHT` (default 1024): publishes awaiting the broker's confirm at once;
    /// beyond it webhooks are answered 503 at once instead of queueing (memory stays bounded).
    pub max_in_flight: usize,
    /// `APP_REQUEST_TIMEOUT` (default 10 s): longest time to receive a request body; a client
    /// that sends it slower gets 408.
    pub request_timeout: Duration,
    /// `APP_AMQP_NAME` (default `github-workflow-jobs`): AMQP exchange and queue names.
    pub topology: Topology,
    /// Prometheus listener and OTLP traces (`OTEL_EXPORTER_*`).
    pub telemetry: TelemetryConfig,
    /// `APP_GITHUB_PATH`, `APP_WEBHOOK_ID`, `APP_REDELIVERY_INTERVAL` and the GitHub
    /// App (`APP_GITHUB_*`); `None` (no redelivery) when none of them is set.
    pub redelivery: Option<RedeliveryConfig>,
}

/// Default of `APP_PORT`.
pub const DEFAULT_PORT: u16 = 8080;
/// Default of `APP_MAX_BODY_BYTES`: 1 MiB. GitHub caps payloads at 25 MB but `workflow_job`
/// payloads are a few KB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default of `APP_PUBLISH_TIMEOUT`: well inside GitHub's 10 s delivery timeout.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of `APP_MAX_IN_FLIGHT`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub use actors::config::DEFAULT_REQUEST_TIMEOUT;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    /// Reads any [`Source`] of variables (a fixed list in tests).
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let rabbitmq_uri = config::required(source, "RABBITMQ_CONNECT_STRING").and_then(|v| {
            config::amqp_uri(&v).map_err(|r| ConfigError::new("RABBITMQ_CONNECT_STRING", r))
        })?;
        Ok(Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: config::parsed(source, "APP_PORT", DEFAULT_PORT, config::port)?,
            rabbitmq_uri: rabbitmq_uri.into(),
            webhook_secret: config::required(source, "APP_WEBHOOK_SECRET_VALUE")?.into(),
            previous_webhook_secret: source
                .get("APP_WEBHOOK_SECRET_PREVIOUS_VALUE")
                .map(Into::into),
            max_body_bytes: config::parsed(
                source,
                "APP_MAX_BODY_BYTES",
                DEFAULT_MAX_BODY_BYTES,
                config::positive_integer,
            )?,
            publish_timeout: config::parsed(
                source,
                "APP_PUBLISH_TIMEOUT",
                DEFAULT_PUBLISH_TIMEOUT,
                config::duration,
            )?,
            max_in_flight: config::parsed(
                source,
                "APP_MAX_IN_FLIGHT",
                DEFAULT_MAX_IN_FLIGHT,
                config::positive_integer,
            )?,
            request_timeout: config::request_timeout(source)?,
            topology: config::topology(source)?,
            telemetry: TelemetryConfig::from_source(source)?,
            redelivery: RedeliveryConfig::from_source(source)?,
        })
    }
}

/// Default of `APP_REDELIVERY_INTERVAL`.
pub const DEFAULT_REDELIVERY_INTERVAL: Duration = Duration::from_secs(600);
/// Where the webhook lives: `APP_GITHUB_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOwner {
    /// An organization's hook.
    Org(String),
    /// A repository's hook (`owner/repo`).
    Repo(String, String),
}

/// Settings of redelivery.
#[derive(Debug, Clone)]
pub struct RedeliveryConfig {
    /// `APP_GITHUB_PATH`: `org` or `owner/repo`.
    pub owner: HookOwner,
    /// `APP_WEBHOOK_ID`: the hook's id.
    pub hook_id: u64,
    /// `APP_REDELIVERY_INTERVAL` (default 600 s): time between rounds.
    pub interval: Duration,
    /// The GitHub App (`APP_GITHUB_APP_*`, `APP_GITHUB_API_URL`).
    pub app: actors::github::AppConfig,
}

fn name_part(value: &str) -> bool {
    !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses `APP_GITHUB_PATH`.
pub fn parse_owner(value: &str) -> Result<HookOwner, ValueError> {
    let invalid = || ValueError::Rule("must be an organization (org) or a repository (owner/repo)");
    match value.split_once('/') {
        None if name_part(value) => Ok(HookOwner::Org(value.to_owned())),
        Some((owner, repo)) if name_part(owner) && name_part(repo) => {
            Ok(HookOwner::Repo(owner.to_owned(), repo.to_owned()))
        }
        _ => Err(invalid()),
    }
}

impl RedeliveryConfig {
    /// Reads the redelivery variables: `Ok(None)` when neither the hook (`APP_GITHUB_PATH`,
    /// `APP_WEBHOOK_ID`) nor a GitHub App is configured; otherwise all of them are required.
    pub fn from_source(source: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let app = actors::github::AppConfig::from_source(source)?;
        let hook_set = ["APP_GITHUB_PATH", "APP_WEBHOOK_ID"]
            .iter()
            .any(|name| source.get(name).is_some());
        if app.is_none() && !hook_set {
            return Ok(None);
        }
        let owner = config::required(source, "APP_GITHUB_PATH").and_then(|value| {
            parse_owner(value.trim()).map_err(|reason| ConfigError::new("APP_GITHUB_PATH", reason))
        })?;
        let hook_id = config::required(source, "APP_WEBHOOK_ID").and_then(|value| {
            config::positive_integer::<u64>(value.trim())
                .map_err(|reason| ConfigError::new("APP_WEBHOOK_ID", reason))
        })?;
        let interval = config::parsed(
            source,
            "APP_REDELIVERY_INTERVAL",
            DEFAULT_REDELIVERY_INTERVAL,
            config::duration,
        )?;
        let app = app.ok_or_else(|| {
            ConfigError::new(
                "APP_GITHUB_APP_ID",
                "is required for redelivery (APP_GITHUB_PATH/APP_WEBHOOK_ID are set)",
            )
        })?;
        Ok(Some(Self {
            owner,
            hook_id,
            interval,
            app,
        }))
    }

    /// `/orgs/{org}/hooks/{id}` or `/repos/{owner}/{repo}/hooks/{id}`.
    pub fn hook_path(&self) -> String {
        match &self.owner {
            HookOwner::Org(org) => format!("/orgs/{org}/hooks/{}", self.hook_id),
            HookOwner::Repo(owner, repo) => {
                format!("/repos/{owner}/{repo}/hooks/{}", self.hook_id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    #[test]
    fn defaults_apply() {
        let config = Config::from_source(&[
            ("RABBITMQ_CONNECT_STRING", URI),
            ("APP_WEBHOOK_SECRET_VALUE", "s3cret"),
        ])
        .unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.publish_timeout, Duration::from_secs(5));
        assert_eq!(config.max_in_flight, 1024);
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert!(config.previous_webhook_secret.is_none());
        assert_eq!(config.webhook_secret.expose_secret(), "s3cret");
        assert_eq!(config.topology, Topology::default());
    }

    #[test]
    fn every_variable_is_read() {
        let config = Config::from_source(&[
            ("RABBITMQ_CONNECT_STRING", URI),
            ("APP_WEBHOOK_SECRET_VALUE", "new"),
            ("APP_WEBHOOK_SECRET_PREVIOUS_VALUE", "old"),
            ("APP_PORT", "9000"),
            ("APP_MAX_BODY_BYTES", "2048"),
            ("APP_PUBLISH_TIMEOUT", "1500ms"),
            ("APP_MAX_IN_FLIGHT", "7"),
            ("APP_REQUEST_TIMEOUT", "3s"),
        ])
        .unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.max_body_bytes, 2048);
        assert_eq!(config.publish_timeout, Duration::from_millis(1500));
        assert_eq!(config.max_in_flight, 7);
        assert_eq!(config.request_timeout, Duration::from_secs(3));
        assert_eq!(
            config.previous_webhook_secret.unwrap().expose_secret(),
            "old"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("APP_WEBHOOK_SECRET_VALUE", "s")],
                "RABBITMQ_CONNECT_STRING",
            ),
            (
                &[("RABBITMQ_CONNECT_STRING", URI)],
                "APP_WEBHOOK_SECRET_VALUE",
            ),
            (
                &[
                    ("RABBITMQ_CONNECT_STRING", URI),
                    ("APP_WEBHOOK_SECRET_VALUE", "s"),
                    ("APP_PORT", "eighty"),
                ],
                "APP_PORT",
            ),
            (
                &[
                    ("RABBITMQ_CONNECT_STRING", URI),
                    ("APP_WEBHOOK_SECRET_VALUE", "s"),
                    ("APP_MAX_BODY_BYTES", "-1"),
                ],
                "APP_MAX_BODY_BYTES",
            ),
            (
                &[
                    ("RABBITMQ_CONNECT_STRING", URI),
                    ("APP_WEBHOOK_SECRET_VALUE", "s"),
                    ("APP_PUBLISH_TIMEOUT", "0s"),
                ],
                "APP_PUBLISH_TIMEOUT",
            ),
        ];
        for (vars, variable) in cases {
            let err = Config::from_source(&vars).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = Config::from_source(&[
            (
                "RABBITMQ_CONNECT_STRING",
                "amqp://guest:hunter2@127.0.0.1:5672/%2f",
            ),
            ("APP_WEBHOOK_SECRET_VALUE", "topsecret"),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("topsecret"));
    }

    const KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-private-key.pem");

    #[test]
    fn hook_paths_follow_the_owner() {
        assert_eq!(
            parse_owner("canonical"),
            Ok(HookOwner::Org("canonical".into()))
        );
        assert_eq!(
            parse_owner("canonical/repo.x"),
            Ok(HookOwner::Repo("canonical".into(), "repo.x".into()))
        );
        for bad in ["", "a/b/c", "a/", "../x", "a b"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configuration_is_all_or_nothing() {
        assert!(RedeliveryConfig::from_source(&[("OTHER", "x")])
            .unwrap()
            .is_none());
        let full = [
            ("APP_GITHUB_APP_ID", "1"),
            ("APP_GITHUB_APP_INSTALLATION_ID", "2"),
            ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", KEY),
            ("APP_GITHUB_PATH", "octo/repo"),
            ("APP_WEBHOOK_ID", "77"),
        ];
        let config = RedeliveryConfig::from_source(&full).unwrap().unwrap();
        assert_eq!(config.hook_path(), "/repos/octo/repo/hooks/77");
        assert_eq!(config.interval, DEFAULT_REDELIVERY_INTERVAL);
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("APP_GITHUB_PATH", "octo")], "APP_WEBHOOK_ID"),
            (&[("APP_WEBHOOK_ID", "1")], "APP_GITHUB_PATH"),
            (
                &[("APP_GITHUB_PATH", "octo"), ("APP_WEBHOOK_ID", "1")],
                "APP_GITHUB_APP_ID",
            ),
            (&full[..3], "APP_GITHUB_PATH"),
        ];
        for (vars, variable) in cases {
            let err = RedeliveryConfig::from_source(&vars).expect_err("an error");
            assert_eq!(err.variable, variable, "{err}");
        }
    }
}
