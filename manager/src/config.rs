//! The manager's configuration: environment variables read once at start-up, and the TOML
//! flavor file they point at. Both are validated before anything starts; an error names the
//! variable, or the file, line and key at fault, and never repeats a secret.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actors::config::{self, ConfigError, Environment, Source, ValueError};
use actors::github::AppConfig;
use actors::telemetry::TelemetryConfig;
use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::github::RunnerScope;

/// Default of `APP_RECONCILE_INTERVAL`.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// Default of `APP_PRESSURE_GRACE`: how long the last known pressure is kept while the planner
/// cannot be reached (Canonical's runner manager waits as long).
pub const DEFAULT_PRESSURE_GRACE: Duration = Duration::from_secs(5 * 60);
/// Default of `APP_CREATE_PARALLELISM`.
pub const DEFAULT_CREATE_PARALLELISM: usize = 4;
/// Default state directory of the exec backend (`APP_EXEC_STATE_DIR`).
pub const DEFAULT_EXEC_STATE_DIR: &str = "/var/lib/github-runner-manager/exec";
/// Default `max_runners` of a flavor.
pub const DEFAULT_MAX_RUNNERS: u32 = 10;
/// Default `boot_timeout` of a flavor.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default `max_lifetime` of a flavor: GitHub's job limit (5 days) and 5 minutes, as
/// google-cloud-github-runner force-deletes its VMs.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(5 * 24 * 3600 + 5 * 60);
/// Default `stop_grace` of the exec backend: SIGTERM, then SIGKILL after this long.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Labels every runner has on top of its flavor's, unless the flavor lists its own.
pub const DEFAULT_LABELS: [&str; 2] = ["self-hosted", "linux"];
/// Longest manager id: runner names are `<id>-<flavor>-<8 characters>`, at most 64 in GitHub.
const MAX_ID_LEN: usize = 20;
/// Longest flavor name usable here (same budget).
const MAX_FLAVOR_LEN: usize = 34;
/// Longest Compute Engine instance name; a gce runner's VM is named after the runner.
const MAX_GCE_NAME_LEN: usize = 63;
/// What a runner name adds to `<manager id>-<flavor>`: `-` and 8 hex digits.
const RUNNER_NAME_SUFFIX_LEN: usize = 9;

/// Everything the manager needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `APP_PLANNER_URL` (required): base URL of a planner (or of a load balancer before them).
    pub planner_url: Url,
    /// `APP_PLANNER_TOKEN_VALUE` (required): a general planner token; the status API accepts it
    /// too.
    pub planner_token: SecretString,
    /// `APP_MANAGER_ID` (default: the host name): every runner this manager creates carries it,
    /// and it never touches a runner without it.
    pub manager_id: String,
    /// `APP_MANAGER_CONFIG` (required): path of the TOML flavor file.
    pub config_path: PathBuf,
    /// The flavors of that file.
    pub flavors: Vec<FlavorConfig>,
    /// Address the status API binds: `0.0.0.0` in production, `127.0.0.1` in tests.
    pub bind_address: IpAddr,
    /// `APP_PORT` (default 8080); 0 picks a free port.
    pub port: u16,
    /// `APP_MANAGER_ADMIN_TOKEN_VALUE` (optional): another token the status API accepts.
    pub admin_token: Option<SecretString>,
    /// `APP_GITHUB_APP_ID`, `APP_GITHUB_APP_INSTALLATION_ID`, `APP_GITHUB_APP_PRIVATE_KEY_VALUE`
    /// (required), `APP_GITHUB_API_URL`.
    pub github: AppConfig,
    /// `APP_GITHUB_PATH` (required): `org` or `owner/repo`, where runners register.
    pub github_path: RunnerScope,
    /// `APP_RECONCILE_INTERVAL` (default 30 s): how often each flavor is reconciled when
    /// nothing changes.
    pub reconcile_interval: Duration,
    /// `APP_PRESSURE_GRACE` (default 5 min): how long the last known pressure holds while the
    /// planner cannot be reached; then each flavor falls back to `min_runners`.
    pub pressure_grace: Duration,
    /// `APP_CREATE_PARALLELISM` (default 4): runners a flavor creates at once.
    pub create_parallelism: usize,
    /// `APP_EXEC_STATE_DIR` (default `/var/lib/github-runner-manager/exec`): where the exec
    /// backend records its runners, so a restarted manager adopts them.
    pub exec_state_dir: PathBuf,
    /// `APP_GCE_*`: how the `gce` backend reaches Compute Engine.
    pub gce: GceEnv,
    /// Delays of the pressure stream's reconnects (200 ms doubling to 30 s, jittered).
    pub reconnect: actors::reconnect::Backoff,
    /// Prometheus listener and OTLP traces (`OTEL_EXPORTER_*`).
    pub telemetry: TelemetryConfig,
}

/// Default of `APP_GCE_API_URL`.
pub const DEFAULT_GCE_API_URL: &str = "https://compute.googleapis.com";
/// Default of `APP_GCE_METADATA_URL`: the metadata server every GCE VM and Cloud Run service has.
pub const DEFAULT_GCE_METADATA_URL: &str = "http://metadata.google.internal";
/// Default of `APP_GCE_OPERATION_TIMEOUT`.
pub const DEFAULT_GCE_OPERATION_TIMEOUT: Duration = Duration::from_secs(180);

/// Timeout of one request to Compute Engine or a token endpoint.
pub const GCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How the `gce` backend reaches Google (read even when no flavor uses it; checked anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceEnv {
    /// `APP_GCE_CREDENTIALS_FILE` (optional): a service-account key file (JSON). Unset: the
    /// metadata server's token of the VM or service the manager runs on.
    pub credentials_file: Option<PathBuf>,
    /// `APP_GCE_API_URL` (default `https://compute.googleapis.com`).
    pub api_url: Url,
    /// `APP_GCE_METADATA_URL` (default `http://metadata.google.internal`): the metadata server.
    pub metadata_url: Url,
    /// `APP_GCE_OPERATION_TIMEOUT` (default 3 min): how long an insert's or delete's zone
    /// operation is followed before the VM is looked up by name instead.
    pub operation_timeout: Duration,
    /// Timeout of one HTTP request (30 s).
    pub request_timeout: Duration,
}

impl GceEnv {
    /// Reads the `APP_GCE_*` variables.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let url = |name: &'static str, default: &str| {
            let value = source.get(name).unwrap_or_else(|| default.to_owned());
            actors::github::parse_api_url(value.trim())
                .map_err(|reason| ConfigError::new(name, reason))
        };
        let credentials_file = match source.get("APP_GCE_CREDENTIALS_FILE") {
            None => None,
            Some(path) if path.trim().is_empty() => {
                return Err(ConfigError::new(
                    "APP_GCE_CREDENTIALS_FILE",
                    "must not be empty",
                ))
            }
            Some(path) => Some(PathBuf::from(path.trim())),
        };
        Ok(Self {
            credentials_file,
            api_url: url("APP_GCE_API_URL", DEFAULT_GCE_API_URL)?,
            metadata_url: url("APP_GCE_METADATA_URL", DEFAULT_GCE_METADATA_URL)?,
            operation_timeout: config::parsed(
                source,
                "APP_GCE_OPERATION_TIMEOUT",
                DEFAULT_GCE_OPERATION_TIMEOUT,
                config::duration,
            )?,
            request_timeout: GCE_REQUEST_TIMEOUT,
        })
    }
}

/// One `[[flavor]]` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlavorConfig {
    /// `name`: a flavor of the planner.
    pub name: String,
    /// `max_runners` (default 10): the cap.
    pub max_runners: u32,
    /// `min_runners` (default 0): the floor, and what is kept while the planner is unreachable.
    pub min_runners: u32,
    /// `labels`: the runner's labels; `None`: the planner flavor's labels + `self-hosted`,
    /// `linux`.
    pub labels: Option<Vec<String>>,
    /// `runner_group` (default: GitHub's default group).
    pub runner_group: Option<String>,
    /// `boot_timeout` (default 15 min): not online in GitHub by then -> removed.
    pub boot_timeout: Duration,
    /// `max_lifetime` (default 5 days 5 min): removed even if busy.
    pub max_lifetime: Duration,
    /// `[flavor.backend]`: where its runners run.
    pub backend: BackendConfig,
}

/// `[flavor.backend]`, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// `kind = "exec"`: a command per runner.
    Exec {
        /// `command`: program and arguments (never the JIT config; that is in the environment).
        command: Vec<String>,
        /// `stop_grace` (default 10 s): SIGTERM, then SIGKILL after this long.
        stop_grace: Duration,
    },
    /// `kind = "gce"`: a Compute Engine VM per runner, from an instance template.
    Gce(GceBackendConfig),
}

/// `[flavor.backend]` of `kind = "gce"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceBackendConfig {
    /// `project`: the Google Cloud project the VMs run in.
    pub project: String,
    /// `zones`: tried in this order when a zone has no capacity.
    pub zones: Vec<String>,
    /// `templates`: instance templates (`name`: global; `regions/<region>/<name>`: regional),
    /// tried in this order once every zone is out of capacity for the one before.
    pub templates: Vec<String>,
    /// `spot` (default false): Spot VMs; a preempted one stops and is replaced.
    pub spot: bool,
    /// `network_tags` (default none): network tags of the VMs (firewall rules).
    pub network_tags: Vec<String>,
    /// `other_zones` (default true): once the listed `zones` have no capacity, the other zones
    /// of their regions that are `UP` are tried too, in name order.
    pub other_zones: bool,
}

/// A flavor file at fault: which file, line and key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {key}: {reason}", path.display())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the fault (1 when the file cannot be read at all).
    pub line: usize,
    /// The key at fault, e.g. `flavor[1].boot_timeout` (`-` when none applies).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Why the configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// An environment variable.
    #[error(transparent)]
    Variable(#[from] ConfigError),
    /// The flavor file.
    #[error("flavor file {0}")]
    File(#[from] FileError),
}

impl Config {
    /// Reads the process environment and the flavor file it names.
    pub fn from_env() -> Result<Self, Invalid> {
        Self::from_source(&Environment)
    }

    /// Reads any [`Source`] of variables and the flavor file `APP_MANAGER_CONFIG` names.
    pub fn from_source(source: &dyn Source) -> Result<Self, Invalid> {
        let planner_url = config::required(source, "APP_PLANNER_URL").and_then(|v| {
            actors::github::parse_api_url(&v)
                .map_err(|reason| ConfigError::new("APP_PLANNER_URL", reason))
        })?;
        let planner_token = config::required(source, "APP_PLANNER_TOKEN_VALUE")?;
        let manager_id = match source.get("APP_MANAGER_ID") {
            Some(id) => id.trim().to_owned(),
            None => host_name()?,
        };
        validate_id(&manager_id).map_err(|reason| ConfigError::new("APP_MANAGER_ID", reason))?;
        let config_path = PathBuf::from(config::required(source, "APP_MANAGER_CONFIG")?);
        let github = AppConfig::from_source(source)?.ok_or_else(|| {
            ConfigError::new(
                "APP_GITHUB_APP_ID",
                "is required: the manager gets runner configurations from GitHub",
            )
        })?;
        let github_path =
            config::required(source, "APP_GITHUB_PATH").and_then(|v| RunnerScope::parse(&v))?;
        let admin_token = source
            .get("APP_MANAGER_ADMIN_TOKEN_VALUE")
            .map(|token| {
                if token.trim().len() < 16 {
                    Err(ConfigError::new(
                        "APP_MANAGER_ADMIN_TOKEN_VALUE",
                        "must be at least 16 characters",
                    ))
                } else {
                    Ok(SecretString::from(token.trim().to_owned()))
                }
            })
            .transpose()?;
        let create_parallelism = config::parsed(
            source,
            "APP_CREATE_PARALLELISM",
            DEFAULT_CREATE_PARALLELISM,
            |v| config::integer_between(v, 1u8, 64).map(usize::from),
        )?;
        let flavors = read_flavors(&config_path, &manager_id)?;
        if flavors
            .iter()
            .any(|f| matches!(f.backend, BackendConfig::Gce(_)))
            && !manager_id.starts_with(|c: char| c.is_ascii_lowercase())
        {
            return Err(ConfigError::new(
                "APP_MANAGER_ID",
                "must start with a letter (a-z) when a flavor has kind = \"gce\": runner VMs \
                 are named <manager id>-<flavor>-<8 hex digits>, and Compute Engine names \
                 start with a letter",
            )
            .into());
        }
        let exec_state_dir = exec_state_dir(source, &flavors)?;
        Ok(Self {
            planner_url,
            planner_token: planner_token.trim().to_owned().into(),
            manager_id,
            config_path,
            flavors,
            bind_address: IpAddr::from([0, 0, 0, 0]),
            port: config::parsed(source, "APP_PORT", 8080, config::port)?,
            admin_token,
            github,
            github_path,
            reconcile_interval: config::parsed(
                source,
                "APP_RECONCILE_INTERVAL",
                DEFAULT_RECONCILE_INTERVAL,
                config::duration,
            )?,
            pressure_grace: config::parsed(
                source,
                "APP_PRESSURE_GRACE",
                DEFAULT_PRESSURE_GRACE,
                config::duration,
            )?,
            create_parallelism,
            exec_state_dir,
            gce: GceEnv::from_source(source)?,
            reconnect: actors::reconnect::Backoff::new(
                Duration::from_millis(200),
                Duration::from_secs(30),
            ),
            telemetry: TelemetryConfig::from_source(source)?,
        })
    }
}

/// `APP_EXEC_STATE_DIR`, checked when an `exec` flavor will record runners there.
fn exec_state_dir(source: &dyn Source, flavors: &[FlavorConfig]) -> Result<PathBuf, ConfigError> {
    let dir = PathBuf::from(
        source
            .get("APP_EXEC_STATE_DIR")
            .unwrap_or_else(|| DEFAULT_EXEC_STATE_DIR.to_owned()),
    );
    if flavors
        .iter()
        .any(|flavor| matches!(flavor.backend, BackendConfig::Exec { .. }))
    {
        crate::backend::exec::check_state_dir(&dir)
            .map_err(|reason| ConfigError::new("APP_EXEC_STATE_DIR", reason))?;
    }
    Ok(dir)
}

fn host_name() -> Result<String, ConfigError> {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default();
    // A fully qualified name keeps its first label.
    let short = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if short.is_empty() {
        return Err(ConfigError::new(
            "APP_MANAGER_ID",
            "is not set and the host name cannot be read",
        ));
    }
    Ok(short)
}

/// A manager id: 1-20 of `a-z 0-9 -`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<(), ValueError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ValueError::Characters {
            max: MAX_ID_LEN,
            allowed: "a-z 0-9 - (not starting with -)",
        })
    }
}

/// Reads and checks the flavor file at `path` for the manager `manager_id` (its runners' names
/// must fit their backend's rules).
pub fn read_flavors(path: &Path, manager_id: &str) -> Result<Vec<FlavorConfig>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|err| FileError {
        path: path.to_owned(),
        line: 1,
        key: "-".to_owned(),
        reason: format!("cannot be read: {err}"),
    })?;
    parse_flavors(path, &text, manager_id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    flavor: Vec<FlavorShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorShape {
    name: Spanned<String>,
    max_runners: Option<Spanned<u32>>,
    min_runners: Option<Spanned<u32>>,
    labels: Option<Spanned<Vec<String>>>,
    runner_group: Option<Spanned<String>>,
    boot_timeout: Option<Spanned<String>>,
    max_lifetime: Option<Spanned<String>>,
    backend: Spanned<BackendShape>,
}

/// `[flavor.backend]`: one struct for every kind (the fields of each kind are checked by
/// [`parse_flavors`]), so every value keeps its position in the file for the messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendShape {
    kind: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    stop_grace: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
    zones: Option<Spanned<Vec<String>>>,
    templates: Option<Spanned<Vec<String>>>,
    spot: Option<Spanned<bool>>,
    network_tags: Option<Spanned<Vec<String>>>,
    other_zones: Option<Spanned<bool>>,
}

/// Parses the text of a flavor file (`path` is only for the messages) of the manager
/// `manager_id`.
pub fn parse_flavors(
    path: &Path,
    text: &str,
    manager_id: &str,
) -> Result<Vec<FlavorConfig>, FileError> {
    let fault = |offset: usize, key: String, reason: String| FileError {
        path: path.to_owned(),
        line: line_of(text, offset),
        key,
        reason,
    };
    let shape: FileShape = toml::from_str(text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start);
        fault(offset, key_at(text, offset), err.message().to_owned())
    })?;
    if shape.flavor.is_empty() {
        return Err(fault(0, "flavor".into(), "no [[flavor]] is listed".into()));
    }
    let mut flavors: Vec<FlavorConfig> = Vec::with_capacity(shape.flavor.len());
    for (index, flavor) in shape.flavor.into_iter().enumerate() {
        let key = |name: &str| format!("flavor[{index}].{name}");
        let name = flavor.name.get_ref().clone();
        validate_flavor_name(&name)
            .map_err(|r| fault(flavor.name.span().start, key("name"), r.to_string()))?;
        if flavors.iter().any(|other| other.name == name) {
            return Err(fault(
                flavor.name.span().start,
                key("name"),
                format!("flavor {name:?} is listed twice"),
            ));
        }
        let max_runners = flavor
            .max_runners
            .as_ref()
            .map_or(DEFAULT_MAX_RUNNERS, |v| *v.get_ref());
        let min_runners = flavor.min_runners.as_ref().map_or(0, |v| *v.get_ref());
        if min_runners > max_runners {
            let at = flavor
                .min_runners
                .as_ref()
                .map_or(flavor.name.span().start, |v| v.span().start);
            return Err(fault(
                at,
                key("min_runners"),
                format!("{min_runners} is above max_runners ({max_runners})"),
            ));
        }
        let labels = match &flavor.labels {
            None => None,
            Some(labels) => {
                let list = labels.get_ref();
                if list.is_empty() || list.iter().any(|l| l.trim().is_empty() || l.len() > 100) {
                    return Err(fault(
                        labels.span().start,
                        key("labels"),
                        "must be a non-empty list of non-empty labels (at most 100 characters)"
                            .into(),
                    ));
                }
                Some(list.iter().map(|l| l.trim().to_owned()).collect())
            }
        };
        let runner_group = match &flavor.runner_group {
            Some(group) if group.get_ref().trim().is_empty() => {
                return Err(fault(
                    group.span().start,
                    key("runner_group"),
                    "must not be empty".into(),
                ))
            }
            group => group.as_ref().map(|g| g.get_ref().trim().to_owned()),
        };
        let duration = |value: &Option<Spanned<String>>, name: &str, default: Duration| {
            value.as_ref().map_or(Ok(default), |v| {
                config::duration(v.get_ref().trim())
                    .map_err(|reason| fault(v.span().start, key(name), reason.to_string()))
            })
        };
        let boot_timeout = duration(&flavor.boot_timeout, "boot_timeout", DEFAULT_BOOT_TIMEOUT)?;
        let max_lifetime = duration(&flavor.max_lifetime, "max_lifetime", DEFAULT_MAX_LIFETIME)?;
        if max_lifetime <= boot_timeout {
            let at = flavor
                .max_lifetime
                .as_ref()
                .map_or(flavor.name.span().start, |v| v.span().start);
            return Err(fault(
                at,
                key("max_lifetime"),
                "must be longer than boot_timeout".into(),
            ));
        }
        let backend_at = flavor.backend.span().start;
        let shape = flavor.backend.into_inner();
        let backend = match shape.kind.get_ref().as_str() {
            "exec" => {
                let gce_field = [
                    (shape.project.as_ref().map(|v| v.span().start), "project"),
                    (shape.zones.as_ref().map(|v| v.span().start), "zones"),
                    (
                        shape.templates.as_ref().map(|v| v.span().start),
                        "templates",
                    ),
                    (shape.spot.as_ref().map(|v| v.span().start), "spot"),
                    (
                        shape.network_tags.as_ref().map(|v| v.span().start),
                        "network_tags",
                    ),
                    (
                        shape.other_zones.as_ref().map(|v| v.span().start),
                        "other_zones",
                    ),
                ]
                .into_iter()
                .find_map(|(at, name)| at.map(|at| (at, name)));
                if let Some((at, name)) = gce_field {
                    return Err(fault(
                        at,
                        key(&format!("backend.{name}")),
                        "is not a field of kind \"exec\"".into(),
                    ));
                }
                let command = shape.command.ok_or_else(|| {
                    fault(
                        backend_at,
                        key("backend.command"),
                        "is required for kind \"exec\"".into(),
                    )
                })?;
                if command.get_ref().is_empty() || command.get_ref()[0].trim().is_empty() {
                    return Err(fault(
                        command.span().start,
                        key("backend.command"),
                        "must name a program: [\"/path/to/program\", \"arg\", ...]".into(),
                    ));
                }
                BackendConfig::Exec {
                    command: command.into_inner(),
                    stop_grace: duration(
                        &shape.stop_grace,
                        "backend.stop_grace",
                        DEFAULT_STOP_GRACE,
                    )?,
                }
            }
            "gce" => {
                let gce = parse_gce(&shape, backend_at).map_err(|(at, name, reason)| {
                    fault(at, key(&format!("backend.{name}")), reason)
                })?;
                gce_runner_names(manager_id, &name)
                    .map_err(|reason| fault(flavor.name.span().start, key("name"), reason))?;
                BackendConfig::Gce(gce)
            }
            other => {
                return Err(fault(
                    shape.kind.span().start,
                    key("backend.kind"),
                    format!("unknown backend kind {other:?}; known: \"exec\", \"gce\""),
                ))
            }
        };
        flavors.push(FlavorConfig {
            name,
            max_runners,
            min_runners,
            labels,
            runner_group,
            boot_timeout,
            max_lifetime,
            backend,
        });
    }
    Ok(flavors)
}

/// A fault in `[flavor.backend]`: offset, key under `backend.`, reason.
type BackendFault = (usize, &'static str, String);

/// The fields of `kind = "gce"`, checked against Compute Engine's naming rules.
fn parse_gce(shape: &BackendShape, at: usize) -> Result<GceBackendConfig, BackendFault> {
    for (present, name) in [
        (shape.command.as_ref().map(|v| v.span().start), "command"),
        (
            shape.stop_grace.as_ref().map(|v| v.span().start),
            "stop_grace",
        ),
    ] {
        if let Some(offset) = present {
            return Err((offset, name, "is not a field of kind \"gce\"".into()));
        }
    }
    let project =
        shape
            .project
            .as_ref()
            .ok_or((at, "project", "is required for kind \"gce\"".to_owned()))?;
    let project_ok = |p: &str| {
        (6..=63).contains(&p.len())
            && p.starts_with(|c: char| c.is_ascii_lowercase())
            && !p.ends_with('-')
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.'
            })
    };
    if !project_ok(project.get_ref().trim()) {
        return Err((
            project.span().start,
            "project",
            "must be a project id: 6-63 characters of a-z 0-9 -, starting with a letter".into(),
        ));
    }
    let list = |value: &Option<Spanned<Vec<String>>>,
                name: &'static str,
                ok: &dyn Fn(&str) -> bool,
                rule: &str|
     -> Result<Vec<String>, BackendFault> {
        let value =
            value
                .as_ref()
                .ok_or((at, name, format!("is required for kind \"gce\" ({rule})")))?;
        let items: Vec<String> = value
            .get_ref()
            .iter()
            .map(|s| s.trim().to_owned())
            .collect();
        if items.is_empty() || !items.iter().all(|s| ok(s)) {
            return Err((
                value.span().start,
                name,
                format!("must be a non-empty list of {rule}"),
            ));
        }
        if items
            .iter()
            .enumerate()
            .any(|(i, s)| items[..i].contains(s))
        {
            return Err((value.span().start, name, "lists a value twice".into()));
        }
        Ok(items)
    };
    let gce_name = |s: &str| {
        (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let zones = list(
        &shape.zones,
        "zones",
        &|s| gce_name(s) && s.matches('-').count() >= 2,
        "zones such as \"europe-west1-b\"",
    )?;
    let template_ok = |s: &str| match s.split('/').collect::<Vec<_>>().as_slice() {
        [name] => gce_name(name),
        ["regions", region, name] => gce_name(region) && gce_name(name),
        _ => false,
    };
    let templates = list(
        &shape.templates,
        "templates",
        &template_ok,
        "instance templates: \"name\" (global) or \"regions/<region>/name\"",
    )?;
    let network_tags = match &shape.network_tags {
        None => Vec::new(),
        Some(_) => list(
            &shape.network_tags,
            "network_tags",
            &gce_name,
            "network tags (a-z 0-9 -)",
        )?,
    };
    Ok(GceBackendConfig {
        project: project.get_ref().trim().to_owned(),
        zones,
        templates,
        spot: shape.spot.as_ref().is_some_and(|s| *s.get_ref()),
        network_tags,
        other_zones: shape.other_zones.as_ref().is_none_or(|o| *o.get_ref()),
    })
}

/// Whether the runners of flavor `flavor` of manager `manager_id`, named
/// `<manager id>-<flavor>-<8 hex digits>`, are Compute Engine instance names
/// (`[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters). The id's first letter is checked
/// with `APP_MANAGER_ID`, and the name's end is the hex digits.
fn gce_runner_names(manager_id: &str, flavor: &str) -> Result<(), String> {
    if !flavor
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{flavor:?} must be of a-z 0-9 - only for kind \"gce\": the flavor is part of its \
             runner VMs' names, and Compute Engine names allow no _ or ."
        ));
    }
    let length = manager_id.len() + 1 + flavor.len() + RUNNER_NAME_SUFFIX_LEN;
    if length > MAX_GCE_NAME_LEN {
        return Err(format!(
            "with APP_MANAGER_ID {manager_id:?}, runner VM names would be {length} characters; \
             Compute Engine allows {MAX_GCE_NAME_LEN}: shorten the flavor name or the manager id"
        ));
    }
    Ok(())
}

/// A flavor name as the planner allows it, short enough for runner names.
fn validate_flavor_name(name: &str) -> Result<(), ValueError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_FLAVOR_LEN
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if valid {
        Ok(())
    } else {
        Err(ValueError::Characters {
            max: MAX_FLAVOR_LEN,
            allowed: "a-z 0-9 - _ .",
        })
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key written at the start of the line holding `offset` (`key = ...`), else `-`.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim().starts_with('[') => {
            key.trim().to_owned()
        }
        _ => line.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-private-key.pem");

    const GOOD: &str = r#"
[[flavor]]
name = "small"
max_runners = 20
min_runners = 1
labels = ["jammy", "x64"]
runner_group = "Default"
boot_timeout = "15m"
max_lifetime = "5d 5m"
[flavor.backend]
kind = "exec"
command = ["/usr/local/bin/start-runner", "--ephemeral"]

[[flavor]]
name = "large"
[flavor.backend]
kind = "exec"
command = ["/bin/runner"]
stop_grace = "2s"
"#;

    fn parse(text: &str) -> Result<Vec<FlavorConfig>, FileError> {
        parse_flavors(Path::new("flavors.toml"), text, "m1")
    }

    #[test]
    fn a_full_file_is_read_with_defaults() {
        let flavors = parse(GOOD).unwrap();
        assert_eq!(flavors.len(), 2);
        let small = &flavors[0];
        assert_eq!(small.name, "small");
        assert_eq!((small.min_runners, small.max_runners), (1, 20));
        assert_eq!(
            small.labels.as_deref(),
            Some(&["jammy".into(), "x64".into()][..])
        );
        assert_eq!(small.runner_group.as_deref(), Some("Default"));
        assert_eq!(small.boot_timeout, Duration::from_secs(900));
        assert_eq!(small.max_lifetime, Duration::from_secs(5 * 86400 + 300));
        let large = &flavors[1];
        assert_eq!(
            (large.min_runners, large.max_runners),
            (0, DEFAULT_MAX_RUNNERS)
        );
        assert_eq!(large.labels, None);
        assert_eq!(large.boot_timeout, DEFAULT_BOOT_TIMEOUT);
        // GitHub's job limit, 5 days, and 5 minutes.
        assert_eq!(large.max_lifetime, Duration::from_secs(5 * 86400 + 5 * 60));
        assert_eq!(
            large.backend,
            BackendConfig::Exec {
                command: vec!["/bin/runner".into()],
                stop_grace: Duration::from_secs(2)
            }
        );
    }

    fn fault(text: &str) -> FileError {
        parse(text).expect_err("the file must be refused")
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let unknown = fault(&GOOD.replace("min_runners = 1", "min_runner = 1"));
        assert_eq!(unknown.line, 5, "{unknown}");
        assert_eq!(unknown.key, "min_runner", "{unknown}");
        assert!(unknown.reason.contains("unknown field"), "{unknown}");
        assert!(unknown
            .to_string()
            .starts_with("flavors.toml:5: min_runner:"));

        let duration = fault(&GOOD.replace("\"5d 5m\"", "\"soon\""));
        assert_eq!(
            (duration.line, duration.key.as_str()),
            (9, "flavor[0].max_lifetime")
        );

        let floor = fault(&GOOD.replace("min_runners = 1", "min_runners = 30"));
        assert_eq!(
            (floor.line, floor.key.as_str()),
            (5, "flavor[0].min_runners")
        );

        let twice = fault(&GOOD.replace("name = \"large\"", "name = \"small\""));
        assert_eq!((twice.line, twice.key.as_str()), (15, "flavor[1].name"));

        let kind = fault(&GOOD.replace(
            "kind = \"exec\"\ncommand = [\"/bin",
            "kind = \"ssh\"\ncommand = [\"/bin",
        ));
        assert_eq!(
            (kind.line, kind.key.as_str()),
            (17, "flavor[1].backend.kind"),
            "{kind}"
        );
        assert!(kind.reason.contains("ssh"), "{kind}");

        let command = fault(&GOOD.replace("[\"/bin/runner\"]", "[]"));
        assert_eq!(
            (command.line, command.key.as_str()),
            (18, "flavor[1].backend.command")
        );

        let foreign = fault(&GOOD.replace("stop_grace = \"2s\"", "spot = true"));
        assert_eq!(
            (foreign.line, foreign.key.as_str()),
            (19, "flavor[1].backend.spot")
        );

        let backend_field = fault(&GOOD.replace("stop_grace = \"2s\"", "grace = \"2s\""));
        assert!(
            backend_field.reason.contains("unknown field"),
            "{backend_field}"
        );

        let wrong_type = fault(&GOOD.replace("max_runners = 20", "max_runners = \"many\""));
        assert_eq!(
            (wrong_type.line, wrong_type.key.as_str()),
            (4, "max_runners")
        );

        let lifetime = fault(&GOOD.replace("\"5d 5m\"", "\"10m\""));
        assert_eq!(lifetime.key, "flavor[0].max_lifetime");

        let name = fault(&GOOD.replace("\"large\"", "\"Large!\""));
        assert_eq!(name.key, "flavor[1].name");

        let empty = fault("");
        assert_eq!(empty.key, "flavor");
    }

    const GCE: &str = r#"
[[flavor]]
name = "vm"
[flavor.backend]
kind = "gce"
project = "my-project"
zones = ["europe-west1-b", "europe-west1-c"]
templates = ["runner-c4-8", "regions/europe-west1/runner-e2-8"]
spot = true
network_tags = ["runners"]
"#;

    #[test]
    fn a_gce_backend_is_read_and_checked() {
        let flavors = parse(GCE).unwrap();
        assert_eq!(
            flavors[0].backend,
            BackendConfig::Gce(GceBackendConfig {
                project: "my-project".into(),
                zones: vec!["europe-west1-b".into(), "europe-west1-c".into()],
                templates: vec![
                    "runner-c4-8".into(),
                    "regions/europe-west1/runner-e2-8".into()
                ],
                spot: true,
                network_tags: vec!["runners".into()],
                other_zones: true,
            })
        );
        let only_listed = parse(&GCE.replace("spot = true", "spot = true\nother_zones = false"));
        assert!(
            matches!(&only_listed.unwrap()[0].backend, BackendConfig::Gce(gce) if !gce.other_zones)
        );
        let exec = fault(&GOOD.replace("stop_grace = \"2s\"", "other_zones = false"));
        assert_eq!(
            (exec.line, exec.key.as_str()),
            (19, "flavor[1].backend.other_zones")
        );
        for (from, to, line, key) in [
            (
                "project = \"my-project\"\n",
                "",
                4,
                "flavor[0].backend.project",
            ),
            (
                "\"my-project\"",
                "\"My Project\"",
                6,
                "flavor[0].backend.project",
            ),
            (
                "[\"europe-west1-b\", \"europe-west1-c\"]",
                "[]",
                7,
                "flavor[0].backend.zones",
            ),
            (
                "\"europe-west1-c\"]",
                "\"europe-west1-b\"]",
                7,
                "flavor[0].backend.zones",
            ),
            (
                "\"runner-c4-8\",",
                "\"a/b\",",
                8,
                "flavor[0].backend.templates",
            ),
            (
                "[\"runners\"]",
                "[\"Bad Tag\"]",
                10,
                "flavor[0].backend.network_tags",
            ),
            (
                "spot = true",
                "spot = true\ncommand = [\"x\"]",
                10,
                "flavor[0].backend.command",
            ),
        ] {
            let err = fault(&GCE.replace(from, to));
            assert_eq!((err.line, err.key.as_str()), (line, key), "{err}");
        }
    }

    #[test]
    fn gce_variables_are_checked() {
        let env =
            GceEnv::from_source(&[("APP_GCE_API_URL", "http://127.0.0.1:1/")].as_slice()).unwrap();
        assert_eq!(env.api_url.as_str(), "http://127.0.0.1:1/");
        assert_eq!(env.credentials_file, None);
        assert_eq!(
            env.metadata_url.as_str(),
            "http://metadata.google.internal/"
        );
        for (name, value) in [
            ("APP_GCE_API_URL", "compute"),
            ("APP_GCE_METADATA_URL", "ftp://x"),
            ("APP_GCE_OPERATION_TIMEOUT", "long"),
        ] {
            let err = GceEnv::from_source(&[(name, value)].as_slice()).unwrap_err();
            assert_eq!(err.variable, name, "{err}");
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = read_flavors(Path::new("/nonexistent/flavors.toml"), "m1").unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/flavors.toml:1:"),
            "{err}"
        );
    }

    #[test]
    fn gce_flavors_whose_vm_names_compute_engine_refuses_are_refused() {
        for bad in ["vm_1", "vm.1"] {
            let err = fault(&GCE.replace("\"vm\"", &format!("{bad:?}")));
            assert_eq!((err.line, err.key.as_str()), (3, "flavor[0].name"), "{err}");
            assert!(err.reason.contains("Compute Engine"), "{err}");
        }
        // The same names are fine for a command.
        parse(&GOOD.replace("\"large\"", "\"large_1.x\"")).unwrap();

        // <id>-<flavor>-<8 hex digits>: at most 63 characters.
        let id = "a".repeat(MAX_ID_LEN);
        let flavor = |name: &str| GCE.replace("\"vm\"", &format!("{name:?}"));
        let longest = "f".repeat(MAX_GCE_NAME_LEN - MAX_ID_LEN - 1 - RUNNER_NAME_SUFFIX_LEN);
        parse_flavors(Path::new("flavors.toml"), &flavor(&longest), &id).unwrap();
        let err = parse_flavors(
            Path::new("flavors.toml"),
            &flavor(&format!("{longest}f")),
            &id,
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (3, "flavor[0].name"), "{err}");
        assert!(
            err.reason.contains("APP_MANAGER_ID") && err.reason.contains("64 characters"),
            "{err}"
        );
    }

    fn flavor_file(name: &str) -> PathBuf {
        flavor_file_with(name, GOOD)
    }

    fn flavor_file_with(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("manager-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_manager_id_of_gce_flavors_starts_with_a_letter() {
        let gce = flavor_file_with("gce-id", GCE);
        let exec = flavor_file_with("exec-id", GOOD);
        let config = |id: &str, path: &Path| {
            let path = path.to_str().unwrap();
            let vars = [
                ("APP_PLANNER_URL", "http://planner:8080"),
                ("APP_PLANNER_TOKEN_VALUE", "general-token"),
                ("APP_MANAGER_ID", id),
                ("APP_MANAGER_CONFIG", path),
                ("APP_GITHUB_APP_ID", "1"),
                ("APP_GITHUB_APP_INSTALLATION_ID", "2"),
                ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", KEY),
                ("APP_GITHUB_PATH", "my-org"),
            ];
            Config::from_source(&vars.as_slice())
        };
        match config("1runner", &gce) {
            Err(Invalid::Variable(err)) => {
                assert_eq!(err.variable, "APP_MANAGER_ID");
                assert!(err.reason.contains("gce"), "{err}");
            }
            other => panic!("{other:?}"),
        }
        config("runner1", &gce).unwrap();
        // A command's runners may be named anything GitHub takes.
        config("1runner", &exec).unwrap();
        std::fs::remove_file(gce).unwrap();
        std::fs::remove_file(exec).unwrap();
    }

    #[test]
    fn the_environment_is_read_and_checked() {
        let path = flavor_file("env");
        let path = path.to_str().unwrap();
        let state = std::env::temp_dir();
        let base = [
            ("APP_EXEC_STATE_DIR", state.to_str().unwrap()),
            ("APP_PLANNER_URL", "http://planner:8080"),
            ("APP_PLANNER_TOKEN_VALUE", "general-token"),
            ("APP_MANAGER_ID", "m1"),
            ("APP_MANAGER_CONFIG", path),
            ("APP_GITHUB_APP_ID", "1"),
            ("APP_GITHUB_APP_INSTALLATION_ID", "2"),
            ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", KEY),
            ("APP_GITHUB_PATH", "my-org"),
        ];
        let config = Config::from_source(&base).unwrap();
        assert_eq!(config.manager_id, "m1");
        assert_eq!(config.flavors.len(), 2);
        assert_eq!(config.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(config.pressure_grace, DEFAULT_PRESSURE_GRACE);
        assert_eq!(config.port, 8080);
        assert!(!format!("{config:?}").contains("general-token"));

        let with = |name: &'static str, value: &'static str| {
            let mut vars: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != name).collect();
            vars.push((name, value));
            Config::from_source(&vars.as_slice())
        };
        for (name, value) in [
            ("APP_PLANNER_URL", "planner"),
            ("APP_PLANNER_TOKEN_VALUE", ""),
            ("APP_MANAGER_ID", "Not An Id"),
            ("APP_GITHUB_PATH", "a/b/c"),
            ("APP_RECONCILE_INTERVAL", "often"),
            ("APP_PRESSURE_GRACE", "0"),
            ("APP_CREATE_PARALLELISM", "0"),
            ("APP_MANAGER_ADMIN_TOKEN_VALUE", "short"),
            ("APP_GITHUB_APP_ID", ""),
            ("APP_PORT", "http"),
            ("APP_EXEC_STATE_DIR", "/dev/null/runners"),
        ] {
            match with(name, value) {
                Err(Invalid::Variable(err)) => {
                    let expected = if name == "APP_GITHUB_APP_ID" {
                        "APP_GITHUB_APP_ID"
                    } else {
                        name
                    };
                    assert_eq!(err.variable, expected, "{err}");
                }
                other => panic!("{name}={value:?}: {other:?}"),
            }
        }
        match with("APP_MANAGER_CONFIG", "/nonexistent.toml") {
            Err(Invalid::File(err)) => assert_eq!(err.path, Path::new("/nonexistent.toml")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manager_ids_are_checked() {
        assert!(validate_id("runner-host-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("-x").is_err());
        assert!(validate_id("UPPER").is_err());
        assert!(validate_id(&"a".repeat(21)).is_err());
    }
}
