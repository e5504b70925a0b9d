//! The `gce` backend: one Compute Engine VM per runner, from an instance template.
//!
//! - **Create**: `instances.insert` with `sourceInstanceTemplate`, a `requestId` (Compute Engine
//!   ignores a retried request with the same id), the runner's name, labels (`manager-id`,
//!   `flavor`, `zone`, `template`, `owner`, `repository` where known; values sanitised to GCE's
//!   rules) and metadata: the JIT configuration under [`JIT_CONFIG_KEY`] (a credential: only the
//!   VM reads it, never logged), `block-project-ssh-keys=true` and the startup script
//!   (`manager/gce/startup.sh`, which runs the runner once and powers the VM off). The zone
//!   operation is followed for at most `APP_GCE_OPERATION_TIMEOUT`.
//! - **Fallback**: a capacity error (`ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`, a
//!   `stockout`), in the HTTP answer or inside the operation, moves to the next zone, then to
//!   the next template; any other error stops. The zones are the listed ones, then (unless
//!   `other_zones = false`) the other `UP` zones of their regions, in name order, listed once
//!   the listed ones are out of capacity and kept for [`REGION_ZONES_TTL`]. A timed-out insert
//!   may still create its VM, so it is never tried elsewhere: the VM is looked up by name in
//!   that zone.
//! - **List**: `aggregatedList` across the project's zones, filtered by this manager's and
//!   flavor's labels, page by page. A VM that is `TERMINATED` (its runner ended and powered it
//!   off, or Spot preempted it), `STOPPING`, `STOPPED` or `SUSPENDED` is listed as ended.
//! - **Delete**: `instances.delete`, followed for the same bound; a VM already gone is fine.
//! - Every request (to Compute Engine and to the token endpoint) has a timeout; 5xx, 429 and
//!   transport errors are retried with backoff ([`retry_delay`]); a 401 renews the token once.

mod auth;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

pub use auth::{Auth, COMPUTE_SCOPE, METADATA_TOKEN_PATH};

use super::{Backend, BackendError, Instance, RunnerSpec};
use crate::config::{GceBackendConfig, GceEnv};

/// Metadata key of the JIT configuration; the startup script reads it.
pub const JIT_CONFIG_KEY: &str = "github-runner-jitconfig";
/// The startup script every VM gets.
pub const STARTUP_SCRIPT: &str = include_str!("../../gce/startup.sh");
/// Attempts of one request on transient failures (5xx, 429, no answer): the first and three
/// retries.
const ATTEMPTS: u32 = 4;
/// First delay between attempts; doubled each time.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// How long the list of the regions' other `UP` zones is kept.
pub const REGION_ZONES_TTL: Duration = Duration::from_secs(5 * 60);
/// Largest answer read.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// VMs per page of a listing.
const PAGE_SIZE: u32 = 500;
/// Pages of one listing at most (a runaway `nextPageToken` stops here).
const MAX_PAGES: usize = 1000;

/// What a call to Compute Engine can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GceError {
    /// Bad settings (key file, URLs).
    #[error("{0}")]
    Config(String),
    /// No token.
    #[error("authentication: {0}")]
    Auth(String),
    /// No answer: refused, reset, or the timeout.
    #[error("no answer: {0}")]
    Transport(String),
    /// The operation was not done within the bound.
    #[error("operation not done after {0:?}")]
    Timeout(Duration),
    /// Compute Engine refused or failed the call (HTTP status, or an operation's error).
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status (0 inside an operation).
        status: u16,
        /// The first error's `code` or `reason` (`ZONE_RESOURCE_POOL_EXHAUSTED`, `notFound`).
        code: String,
        /// Its message.
        message: String,
    },
}

impl GceError {
    /// Whether another zone or template may have what this one lacks.
    pub fn is_capacity(&self) -> bool {
        match self {
            Self::Api { code, message, .. } => is_capacity(code, message),
            _ => false,
        }
    }

    /// Whether the call's outcome is unknown (it may still take effect).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
            || matches!(self, Self::Transport(reason) if reason.starts_with("timeout"))
    }

    fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Capacity errors as Compute Engine reports them: the operation's error `code`, an HTTP
/// error's `reason`, or a stockout in the message.
pub fn is_capacity(code: &str, message: &str) -> bool {
    const CODES: [&str; 6] = [
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "QUOTA_EXCEEDED",
        "quotaExceeded",
        "RESOURCE_POOL_EXHAUSTED",
        "stockout",
    ];
    CODES.contains(&code) || message.to_ascii_lowercase().contains("stockout")
}

/// The first error of an operation's `error` or an HTTP answer's `error`.
fn first_error(status: u16, error: &Value) -> GceError {
    let first = error["errors"].get(0).unwrap_or(&Value::Null);
    let code = first["code"]
        .as_str()
        .or(first["reason"].as_str())
        .or(error["status"].as_str())
        .unwrap_or("UNKNOWN");
    // An error's details may carry the stockout reason.
    let reason = first["errorDetails"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorInfo"]["reason"].as_str())
        .unwrap_or_default();
    let message = first["message"]
        .as_str()
        .or(error["message"].as_str())
        .unwrap_or_default();
    GceError::Api {
        status,
        code: code.to_owned(),
        message: if reason.is_empty() {
            message.to_owned()
        } else {
            format!("{message} ({reason})")
        },
    }
}

/// The wait before retry `attempt` (1 for the first retry) of a request that failed for a
/// transient reason: [`RETRY_BASE`], doubled each time.
fn retry_delay(attempt: u32) -> Duration {
    RETRY_BASE * 2u32.pow(attempt.saturating_sub(1))
}

/// The region of a zone: `europe-west1` of `europe-west1-b`.
fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

/// The names of the `UP` zones of a page of `zones.list` that are in one of `regions`.
fn up_zones_in<'a>(
    page: &'a Value,
    regions: &'a BTreeSet<&str>,
) -> impl Iterator<Item = String> + 'a {
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|zone| zone["status"] == "UP")
        .filter(|zone| {
            let region = zone["region"].as_str().unwrap_or_default();
            regions.contains(region.rsplit('/').next().unwrap_or_default())
        })
        .filter_map(|zone| zone["name"].as_str().map(str::to_owned))
}

/// The VMs of a page of an aggregated instance listing, with their zones.
fn aggregated_instances(page: &Value) -> impl Iterator<Item = (&str, Instance)> {
    page["items"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(scope, items)| Some((scope.strip_prefix("zones/")?, items)))
        .flat_map(|(zone, items)| {
            items["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |vm| (zone, instance(zone, vm)))
        })
}

/// A label value as Compute Engine allows it: at most 63 of `a-z 0-9 _ -`, lowercased; other
/// characters become `_`.
pub fn label_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .take(63)
        .collect()
}

pub(crate) fn transport(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    // Never the URL: it may hold a query with names.
    format!("{kind} error")
}

pub(crate) async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, GceError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| GceError::Transport(transport(&err)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(GceError::Transport("answer too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A Compute Engine REST client: token, timeouts, retries.
pub struct Client {
    http: reqwest::Client,
    auth: Auth,
    api_url: Url,
}

impl Client {
    /// A client with the settings of `env`.
    pub fn new(env: &GceEnv) -> Result<Self, GceError> {
        let http = reqwest::Client::builder()
            .connect_timeout(env.request_timeout.min(Duration::from_secs(5)))
            .timeout(env.request_timeout)
            .user_agent(concat!("github-runner-manager/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| GceError::Config(format!("HTTP client: {err}")))?;
        let auth = match &env.credentials_file {
            Some(path) => Auth::from_key_file(path, http.clone())?,
            None => Auth::from_metadata(&env.metadata_url, http.clone())?,
        };
        Ok(Self {
            http,
            auth,
            api_url: env.api_url.clone(),
        })
    }

    /// One call: `path` is below the API's base URL. Answers 2xx as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, GceError> {
        let mut url = self
            .api_url
            .join(path)
            .map_err(|err| GceError::Config(format!("API path: {err}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.once(method.clone(), url.clone(), body).await;
            match &result {
                Err(GceError::Api { status: 401, .. }) if !refreshed => {
                    refreshed = true;
                    self.auth.invalidate().await;
                    continue;
                }
                Err(err) if attempt < ATTEMPTS && transient(err) => {
                    let wait = retry_delay(attempt);
                    log::debug!(
                        event = "gce_retry",
                        method:% = method,
                        path = url.path(),
                        attempt,
                        error:% = err;
                        "retrying a Compute Engine request"
                    );
                    tokio::time::sleep(wait).await;
                }
                _ => return result,
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, GceError> {
        let token = self.auth.token().await?;
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| GceError::Transport(transport(&err)))?;
        let status = response.status();
        let bytes = read_body(response).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(match value.get("error") {
            Some(error) => first_error(status.as_u16(), error),
            None => GceError::Api {
                status: status.as_u16(),
                code: status.canonical_reason().unwrap_or("error").to_owned(),
                message: String::new(),
            },
        })
    }
}

fn transient(err: &GceError) -> bool {
    match err {
        GceError::Transport(_) => true,
        GceError::Api { status, .. } => transient_status(*status),
        _ => false,
    }
}

/// Whether an HTTP status from Google is worth another try: too many requests, or a server
/// error.
fn transient_status(status: u16) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS.as_u16() || status >= 500
}

/// The gce backend of one flavor.
pub struct Gce {
    client: Client,
    config: GceBackendConfig,
    manager_id: String,
    flavor: String,
    /// `owner` and `repository` labels, where the runners register.
    scope_labels: Vec<(&'static str, String)>,
    operation_timeout: Duration,
    /// Zone of each VM seen, so a delete needs no listing.
    zones: Mutex<HashMap<String, String>>,
    /// The regions' other `UP` zones, and when they were listed.
    region_zones: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<String>)>>,
    /// Capacity misses by flavor, zone and template, when counted.
    capacity_misses: Option<prometheus::IntCounterVec>,
}

impl Gce {
    /// The backend of `flavor`; `scope` is where its runners register (for the labels).
    pub fn new(
        env: &GceEnv,
        config: GceBackendConfig,
        manager_id: &str,
        flavor: &str,
        scope: Option<&actors::github::RunnerScope>,
    ) -> Result<Self, GceError> {
        use actors::github::RunnerScope;
        let scope_labels = match scope {
            Some(RunnerScope::Org(org)) => vec![("owner", label_value(org))],
            Some(RunnerScope::Repo { owner, repo }) => vec![
                ("owner", label_value(owner)),
                ("repository", label_value(repo)),
            ],
            None => Vec::new(),
        };
        Ok(Self {
            client: Client::new(env)?,
            config,
            manager_id: manager_id.to_owned(),
            flavor: flavor.to_owned(),
            scope_labels,
            operation_timeout: env.operation_timeout,
            zones: Mutex::new(HashMap::new()),
            region_zones: tokio::sync::Mutex::new(None),
            capacity_misses: None,
        })
    }

    /// Counts each insert that finds no capacity in `counter` (labels: flavor, zone,
    /// template).
    pub fn count_capacity_misses(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.capacity_misses = Some(counter);
        self
    }

    fn project_path(&self) -> String {
        format!("compute/v1/projects/{}", self.config.project)
    }

    fn template_url(&self, template: &str) -> String {
        if template.contains('/') {
            format!("projects/{}/{template}", self.config.project)
        } else {
            format!(
                "projects/{}/global/instanceTemplates/{template}",
                self.config.project
            )
        }
    }

    /// The body of an insert of `spec` in `zone` from `template`.
    pub fn insert_body(&self, spec: &RunnerSpec, zone: &str, template: &str) -> Value {
        let mut labels = serde_json::Map::new();
        for (key, value) in [
            ("manager-id", label_value(&self.manager_id)),
            ("flavor", label_value(&self.flavor)),
            ("zone", label_value(zone)),
            ("template", label_value(template)),
        ]
        .into_iter()
        .chain(self.scope_labels.iter().cloned())
        {
            labels.insert(key.to_owned(), Value::String(value));
        }
        let mut body = json!({
            "name": spec.name,
            "labels": labels,
            "metadata": {"items": [
                {"key": JIT_CONFIG_KEY, "value": spec.jit_config.expose_secret()},
                {"key": "block-project-ssh-keys", "value": "true"},
                {"key": "startup-script", "value": STARTUP_SCRIPT},
            ]},
        });
        if !self.config.network_tags.is_empty() {
            body["tags"] = json!({"items": self.config.network_tags});
        }
        if self.config.spot {
            body["scheduling"] = json!({
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "STOP",
                "automaticRestart": false,
                "onHostMaintenance": "TERMINATE",
            });
        }
        body
    }

    /// Follows a zone operation until it is done (its error, if any) or the bound passes.
    async fn wait(&self, zone: &str, operation: Value) -> Result<(), GceError> {
        let deadline = tokio::time::Instant::now() + self.operation_timeout;
        let poll =
            (self.operation_timeout / 20).clamp(Duration::from_millis(50), Duration::from_secs(2));
        let mut operation = operation;
        loop {
            if operation["status"] == "DONE" {
                return match operation.get("error") {
                    Some(error) if !error.is_null() => Err(first_error(0, error)),
                    _ => Ok(()),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GceError::Timeout(self.operation_timeout));
            }
            tokio::time::sleep(poll).await;
            let name = operation["name"]
                .as_str()
                .ok_or_else(|| GceError::Api {
                    status: 0,
                    code: "INVALID".into(),
                    message: "operation without a name".into(),
                })?
                .to_owned();
            let path = format!("{}/zones/{zone}/operations/{name}", self.project_path());
            operation = self.client.call(Method::GET, &path, &[], None).await?;
        }
    }

    /// One insert in `zone` from `template`, followed to its end.
    async fn insert(&self, spec: &RunnerSpec, zone: &str, template: &str) -> Result<(), GceError> {
        let path = format!("{}/zones/{zone}/instances", self.project_path());
        let request_id = request_id();
        let template_url = self.template_url(template);
        let body = self.insert_body(spec, zone, template);
        let operation = self
            .client
            .call(
                Method::POST,
                &path,
                &[
                    ("requestId", request_id.as_str()),
                    ("sourceInstanceTemplate", template_url.as_str()),
                ],
                Some(&body),
            )
            .await;
        match operation {
            // The name is taken in this zone: an earlier attempt created it.
            Err(GceError::Api { status: 409, .. }) => Ok(()),
            Err(err) => Err(err),
            Ok(operation) => self.wait(zone, operation).await,
        }
    }

    async fn get(&self, zone: &str, name: &str) -> Result<Option<Instance>, GceError> {
        let path = format!("{}/zones/{zone}/instances/{name}", self.project_path());
        match self.client.call(Method::GET, &path, &[], None).await {
            Ok(vm) => Ok(Some(instance(zone, &vm))),
            Err(GceError::Api { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates the runner's VM in the first zone with capacity, then with the next template.
    async fn create_vm(&self, spec: RunnerSpec) -> Result<Instance, BackendError> {
        let mut zones = self.config.zones.clone();
        let mut widened = !self.config.other_zones;
        let mut last = None;
        for template in &self.config.templates {
            let mut next = 0;
            while let Some(zone) = zones.get(next).cloned() {
                next += 1;
                match self.attempt(&spec, &zone, template).await? {
                    Attempt::Created(vm) => return Ok(vm),
                    Attempt::NoCapacity(err) => last = Some(err),
                }
                if next == zones.len() && !widened {
                    widened = true;
                    zones.extend(self.other_zones_or_none(&spec.name).await);
                }
            }
        }
        Err(BackendError::NoCapacity(format!(
            "in no zone for any template; last: {}",
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// One insert of the runner's VM in `zone` from `template`.
    async fn attempt(
        &self,
        spec: &RunnerSpec,
        zone: &str,
        template: &str,
    ) -> Result<Attempt, BackendError> {
        match self.insert(spec, zone, template).await {
            Ok(()) => {
                let found = self.get(zone, &spec.name).await.map_err(start)?;
                let vm = found.ok_or_else(|| {
                    BackendError::Start(format!("{} was inserted and is gone", spec.name))
                })?;
                self.remember(&vm.name, zone);
                log::info!(
                    event = "gce_instance_created",
                    "runner.name" = spec.name,
                    zone,
                    template;
                    "instance created"
                );
                Ok(Attempt::Created(vm))
            }
            Err(err) if err.is_capacity() => {
                if let Some(misses) = &self.capacity_misses {
                    misses
                        .with_label_values(&[self.flavor.as_str(), zone, template])
                        .inc();
                }
                log::warn!(
                    event = "gce_no_capacity",
                    "runner.name" = spec.name,
                    zone,
                    template,
                    error:% = err;
                    "no capacity in the zone"
                );
                Ok(Attempt::NoCapacity(err))
            }
            Err(err) if err.is_timeout() => {
                // It may still be created: look it up here, never insert elsewhere.
                log::warn!(
                    event = "gce_insert_timed_out",
                    "runner.name" = spec.name,
                    zone,
                    template;
                    "instance insert timed out: looking it up"
                );
                match self.get(zone, &spec.name).await.map_err(start)? {
                    Some(vm) => {
                        self.remember(&vm.name, zone);
                        Ok(Attempt::Created(vm))
                    }
                    None => Err(BackendError::Start(format!(
                        "insert in {zone} timed out ({err}); not found by name"
                    ))),
                }
            }
            Err(err) => Err(start(err)),
        }
    }

    /// [`Gce::other_zones`], or none when they cannot be listed (the create goes on with the
    /// next template).
    async fn other_zones_or_none(&self, runner: &str) -> Vec<String> {
        self.other_zones().await.unwrap_or_else(|err| {
            log::warn!(
                event = "gce_zones_unlisted",
                "runner.name" = runner,
                error:% = err;
                "the regions' other zones cannot be listed"
            );
            Vec::new()
        })
    }

    /// The `UP` zones of the listed zones' regions that are not listed, in name order; listed
    /// at most once per [`REGION_ZONES_TTL`].
    pub async fn other_zones(&self) -> Result<Vec<String>, GceError> {
        let mut cached = self.region_zones.lock().await;
        if let Some((listed_at, zones)) = cached.as_ref() {
            if listed_at.elapsed() < REGION_ZONES_TTL {
                return Ok(zones.clone());
            }
        }
        let regions: BTreeSet<&str> = self.config.zones.iter().map(|z| region_of(z)).collect();
        let path = format!("{}/zones", self.project_path());
        let mut found = BTreeSet::new();
        self.each_page(&path, &[("filter", "status = \"UP\"")], |page| {
            found.extend(up_zones_in(page, &regions));
        })
        .await?;
        let zones: Vec<String> = found
            .into_iter()
            .filter(|zone| !self.config.zones.contains(zone))
            .collect();
        *cached = Some((tokio::time::Instant::now(), zones.clone()));
        Ok(zones)
    }

    /// Calls `visit` with every page of the listing at `path` (with `query`), following
    /// `nextPageToken`.
    async fn each_page(
        &self,
        path: &str,
        query: &[(&str, &str)],
        mut visit: impl FnMut(&Value),
    ) -> Result<(), GceError> {
        let page_size = PAGE_SIZE.to_string();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut paged = query.to_vec();
            paged.push(("maxResults", page_size.as_str()));
            if let Some(token) = &token {
                paged.push(("pageToken", token.as_str()));
            }
            let page = self.client.call(Method::GET, path, &paged, None).await?;
            visit(&page);
            match page["nextPageToken"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(()),
            }
        }
        Err(GceError::Transport(format!("more than {MAX_PAGES} pages")))
    }

    fn remember(&self, name: &str, zone: &str) {
        self.zones
            .lock()
            .expect("zones")
            .insert(name.to_owned(), zone.to_owned());
    }

    /// Every VM of this manager and flavor, page by page.
    pub async fn list_vms(&self) -> Result<Vec<Instance>, GceError> {
        let filter = format!(
            "(labels.manager-id = \"{}\") AND (labels.flavor = \"{}\")",
            label_value(&self.manager_id),
            label_value(&self.flavor)
        );
        let path = format!("{}/aggregated/instances", self.project_path());
        let mut found = Vec::new();
        let mut zones = HashMap::new();
        self.each_page(
            &path,
            &[
                ("filter", filter.as_str()),
                ("returnPartialSuccess", "true"),
            ],
            |page| {
                for (zone, vm) in aggregated_instances(page) {
                    zones.insert(vm.name.clone(), zone.to_owned());
                    found.push(vm);
                }
            },
        )
        .await?;
        *self.zones.lock().expect("zones") = zones;
        Ok(found)
    }

    async fn delete_vm(&self, name: &str) -> Result<(), BackendError> {
        let known = self.zones.lock().expect("zones").get(name).cloned();
        let zone = match known {
            Some(zone) => zone,
            None => {
                self.list_vms().await.map_err(stop)?;
                match self.zones.lock().expect("zones").get(name).cloned() {
                    Some(zone) => zone,
                    None => return Ok(()),
                }
            }
        };
        let path = format!("{}/zones/{zone}/instances/{name}", self.project_path());
        let id = request_id();
        match self
            .client
            .call(Method::DELETE, &path, &[("requestId", id.as_str())], None)
            .await
        {
            Err(GceError::Api { status: 404, .. }) => {}
            Err(err) => return Err(stop(err)),
            Ok(operation) => match self.wait(&zone, operation).await {
                // Still deleting: the next listing shows whether it went.
                Err(err) if err.is_timeout() => {
                    log::warn!(
                        event = "gce_delete_pending",
                        "runner.name" = name,
                        zone;
                        "instance deletion still pending"
                    );
                    return Ok(());
                }
                Err(err) if err.status() == Some(404) => {}
                Err(err) => return Err(stop(err)),
                Ok(()) => {}
            },
        }
        self.zones.lock().expect("zones").remove(name);
        log::info!(
            event = "gce_instance_deleted",
            "runner.name" = name,
            zone;
            "instance deleted"
        );
        Ok(())
    }
}

/// How one zone and template went.
enum Attempt {
    Created(Instance),
    NoCapacity(GceError),
}

fn start(err: GceError) -> BackendError {
    BackendError::Start(err.to_string())
}

fn stop(err: GceError) -> BackendError {
    BackendError::Stop(err.to_string())
}

/// A random UUID (v4) for `requestId`.
fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A VM of a listing or a `get`.
fn instance(zone: &str, vm: &Value) -> Instance {
    let status = vm["status"].as_str().unwrap_or_default();
    Instance {
        name: vm["name"].as_str().unwrap_or_default().to_owned(),
        backend_id: format!("{zone}/{}", vm["id"].as_str().unwrap_or_default()),
        created_at: vm["creationTimestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
        ended: matches!(status, "TERMINATED" | "STOPPING" | "STOPPED" | "SUSPENDED"),
    }
}

impl Backend for Gce {
    fn kind(&self) -> &'static str {
        "gce"
    }

    fn create(&self, spec: RunnerSpec) -> BoxFuture<'_, Result<Instance, BackendError>> {
        self.create_vm(spec).boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.delete_vm(name).boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, BackendError>> {
        async move {
            self.list_vms()
                .await
                .map_err(|err| BackendError::State(err.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time() {
        assert_eq!(retry_delay(1), RETRY_BASE);
        assert_eq!(retry_delay(2), RETRY_BASE * 2);
        assert_eq!(retry_delay(3), RETRY_BASE * 4);
    }

    #[test]
    fn a_captured_aggregated_list_gives_its_vms_and_which_have_ended() {
        let page: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/gce/aggregated-list.json"
        ))
        .unwrap();
        let vms: Vec<(&str, Instance)> = aggregated_instances(&page).collect();
        let seen: Vec<(&str, &str, &str, bool)> = vms
            .iter()
            .map(|(zone, vm)| (*zone, vm.name.as_str(), vm.backend_id.as_str(), vm.ended))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "europe-west1-b",
                    "m1-small-ab12cd34",
                    "europe-west1-b/5402883120932457382",
                    false
                ),
                (
                    "europe-west1-c",
                    "m1-small-ef56gh78",
                    "europe-west1-c/1187362098765432109",
                    true
                ),
            ]
        );
        assert_eq!(
            vms[0].1.created_at.to_rfc3339(),
            "2026-12-01T10:26:40.110+00:00"
        );
    }

    #[test]
    fn other_zones_are_the_up_ones_of_the_same_regions() {
        let page = json!({"items": [
            {"name": "europe-west1-b", "status": "UP",
             "region": "https://www.googleapis.com/compute/v1/projects/p/regions/europe-west1"},
            {"name": "europe-west1-d", "status": "DOWN",
             "region": "https://www.googleapis.com/compute/v1/projects/p/regions/europe-west1"},
            {"name": "europe-west10-a", "status": "UP",
             "region": "https://www.googleapis.com/compute/v1/projects/p/regions/europe-west10"},
            {"name": "us-central1-a", "status": "UP",
             "region": "https://www.googleapis.com/compute/v1/projects/p/regions/us-central1"},
        ]});
        assert_eq!(region_of("europe-west1-b"), "europe-west1");
        let regions = BTreeSet::from(["europe-west1"]);
        let zones: Vec<String> = up_zones_in(&page, &regions).collect();
        assert_eq!(zones, ["europe-west1-b"]);
    }

    #[test]
    fn capacity_errors_are_told_from_others() {
        let operation: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/gce/operation-stockout.json"
        ))
        .unwrap();
        assert!(first_error(0, &operation["error"]).is_capacity());
        for (code, message) in [
            ("ZONE_RESOURCE_POOL_EXHAUSTED", ""),
            ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", ""),
            ("QUOTA_EXCEEDED", "Quota 'CPUS' exceeded."),
            ("quotaExceeded", ""),
            ("UNSUPPORTED_OPERATION", "resource_availability: stockout"),
        ] {
            assert!(is_capacity(code, message), "{code}");
        }
        for (code, message) in [
            ("RESOURCE_NOT_FOUND", "template missing"),
            ("PERMISSION_DENIED", ""),
            ("invalid", "bad name"),
        ] {
            assert!(!is_capacity(code, message), "{code}");
        }
        let http = json!({"errors": [{"reason": "quotaExceeded", "message": "Quota exceeded"}]});
        assert!(first_error(403, &http).is_capacity());
        let denied = json!({"errors": [{"reason": "forbidden", "message": "no"}]});
        assert!(!first_error(403, &denied).is_capacity());
        assert!(GceError::Timeout(Duration::from_secs(1)).is_timeout());
        assert!(!GceError::Timeout(Duration::from_secs(1)).is_capacity());
    }

    #[test]
    fn label_values_follow_gce_rules() {
        assert_eq!(label_value("Acme.Corp/Repo"), "acme_corp_repo");
        assert_eq!(label_value("europe-west1-b"), "europe-west1-b");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_ne!(id, request_id());
    }

    #[test]
    fn stopped_and_terminated_vms_are_ended() {
        for (status, ended) in [
            ("RUNNING", false),
            ("PROVISIONING", false),
            ("STAGING", false),
            ("TERMINATED", true),
            ("STOPPING", true),
        ] {
            let vm = json!({"name": "r", "id": "1", "status": status,
                "creationTimestamp": "2026-01-02T03:04:05.678-08:00"});
            let instance = instance("europe-west1-b", &vm);
            assert_eq!(instance.ended, ended, "{status}");
            assert_eq!(instance.backend_id, "europe-west1-b/1");
            assert_eq!(
                instance.created_at.to_rfc3339(),
                "2026-01-02T11:04:05.678+00:00"
            );
        }
    }
}
