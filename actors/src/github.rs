//! GitHub App authentication and a small, rate-limit aware GitHub REST client, shared by the
//! gateway (webhook redelivery), the planner (job reconciliation) and the runner manager
//! (self-hosted runner registration).
//!
//! - [`AppConfig::from_source`]: the optional `APP_GITHUB_*` variables. Unset: `Ok(None)` and the
//!   services run exactly as without GitHub. Partial or invalid: a [`ConfigError`] naming the
//!   variable (an unparsable private key included: it is tried once at start-up).
//! - [`Client`]: signs an RS256 JWT (`iss` = App id, 9 minutes) to get an installation access
//!   token, caches the token and fetches a new one [`AppConfig::refresh_margin`] before it
//!   expires. Every request has a timeout and GitHub's `Accept`, `X-GitHub-Api-Version` and
//!   `User-Agent` headers. Rate limits (`X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`,
//!   `Retry-After`, 403/429 secondary limits) block the client until the limit lifts: while
//!   blocked it answers [`GitHubError::RateLimited`] without touching the network.
//!
//! - Runners ([`RunnerScope`] from `APP_GITHUB_PATH`): [`Client::generate_jit_config`],
//!   [`Client::list_runners`], [`Client::delete_runner`] ([`DeleteOutcome::Busy`] for GitHub's
//!   422: a runner with a job stays registered), [`Client::runner_group_id`]. Listings follow
//!   `Link` for at most [`MAX_PAGES`] pages.
//!
//! Secrets (the private key, JWTs, tokens, JIT runner configurations) live in
//! [`SecretString`]s and are never logged.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{self, ConfigError, Source, ValueError};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LINK, RETRY_AFTER,
};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// Default of `APP_GITHUB_API_URL`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
/// Longest wait for one request (connect, send, and read the whole answer).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long before its expiry an installation token is replaced (tokens live one hour).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Wait after a secondary rate limit that names no time (GitHub: "at least one minute").
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Largest answer body read (a page of 100 deliveries is some 50 KB).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Idle connections a client keeps to the API. A burst (a manager creating hundreds of
/// runners at once, each with its own JIT configuration call) opens a connection per request in
/// flight; past this many they are closed when done instead of held, with their buffers, for
/// the pool's idle timeout. Steady calls (the paged runner listing, the odd create) need few.
pub const IDLE_CONNECTIONS: usize = 16;

/// The GitHub App a service authenticates as. `Debug` never prints the key.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `APP_GITHUB_API_URL` (default `https://api.github.com`; GitHub Enterprise Server:
    /// `https://HOST/api/v3`), without a trailing slash.
    pub api_url: Url,
    /// `APP_GITHUB_APP_ID`: the App's id (or client id), the JWT's `iss`.
    pub app_id: String,
    /// `APP_GITHUB_APP_INSTALLATION_ID`: the installation whose token is used.
    pub installation_id: u64,
    /// `APP_GITHUB_APP_PRIVATE_KEY_VALUE`: the App's PEM private key.
    pub private_key: SecretString,
    /// Timeout of every request (not configurable from the environment).
    pub request_timeout: Duration,
    /// How long before expiry a token is replaced (tests shorten it).
    pub refresh_margin: Duration,
}

const APP_ID: &str = "APP_GITHUB_APP_ID";
const INSTALLATION_ID: &str = "APP_GITHUB_APP_INSTALLATION_ID";
const PRIVATE_KEY: &str = "APP_GITHUB_APP_PRIVATE_KEY_VALUE";
const API_URL: &str = "APP_GITHUB_API_URL";

impl AppConfig {
    /// Reads the `APP_GITHUB_*` variables: `Ok(None)` when none of the App's three is set;
    /// an error naming the variable when only some are, or one is invalid.
    pub fn from_source(source: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let set = [APP_ID, INSTALLATION_ID, PRIVATE_KEY]
            .iter()
            .any(|name| source.get(name).is_some());
        if !set {
            return Ok(None);
        }
        let app_id = config::required(source, APP_ID)?.trim().to_owned();
        if !app_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                APP_ID,
                "must be the App's id (or client id)",
            ));
        }
        let installation_id = config::required(source, INSTALLATION_ID).and_then(|v| {
            config::positive_integer::<u64>(v.trim())
                .map_err(|reason| ConfigError::new(INSTALLATION_ID, reason))
        })?;
        let pem = config::required(source, PRIVATE_KEY)?;
        // Some secret stores flatten newlines to a literal `\n`.
        let pem = if pem.contains('\n') {
            pem
        } else {
            pem.replace("\\n", "\n")
        };
        let api_url = config::parsed(source, API_URL, default_api_url(), parse_api_url)?;
        let config = Self {
            api_url,
            app_id,
            installation_id,
            private_key: pem.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
        };
        // Sign once now: a key that cannot sign stops start-up, not the first round an hour in.
        Signer::new(&config)
            .and_then(|signer| signer.jwt().map(drop))
            .map_err(|_| {
                ConfigError::new(PRIVATE_KEY, "is not a PEM RSA private key that can sign")
            })?;
        Ok(Some(config))
    }
}

fn default_api_url() -> Url {
    Url::parse(DEFAULT_API_URL).expect("default API URL")
}

/// An `http(s)://` URL, kept without a trailing slash.
pub fn parse_api_url(value: &str) -> Result<Url, ValueError> {
    let url = Url::parse(value.trim_end_matches('/'))
        .map_err(|_| ValueError::NotUrl("https://api.github.com"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ValueError::Scheme("http:// or https:// URL"));
    }
    Ok(url)
}

/// What a request to GitHub can end in, besides success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitHubError {
    /// A rate limit holds; nothing is sent before it lifts.
    #[error("rate limited for another {0:?}")]
    RateLimited(Duration),
    /// 404: the resource does not exist (or the installation cannot see it).
    #[error("not found")]
    NotFound,
    /// 401/403 that is not a rate limit: the App lacks a permission or its token was refused.
    #[error("refused with status {0}")]
    Forbidden(u16),
    /// 5xx: GitHub failed; try again later.
    #[error("server error {0}")]
    Server(u16),
    /// Any other status.
    #[error("unexpected status {0}")]
    Status(u16),
    /// No answer: connection refused, reset, or the timeout.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer that is not what GitHub documents.
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// The App's JWT could not be signed.
    #[error("cannot sign the App JWT")]
    Signing,
}

impl GitHubError {
    /// Whether a later attempt may succeed without anything changing here.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited(_) | Self::Server(_) | Self::Transport(_)
        )
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status (2xx).
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, GitHubError> {
        serde_json::from_slice(&self.body).map_err(|err| GitHubError::Invalid(err.to_string()))
    }

    /// The `rel="next"` URL of the `Link` header, if any.
    pub fn next_page(&self) -> Option<String> {
        let link = self.headers.get(LINK)?.to_str().ok()?;
        next_link(link)
    }
}

/// The `rel="next"` target of a `Link` header value.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|param| param.trim().replace(' ', "") == "rel=\"next\"");
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

struct Signer {
    key: EncodingKey,
    app_id: String,
}

impl Signer {
    fn new(config: &AppConfig) -> Result<Self, GitHubError> {
        let key = EncodingKey::from_rsa_pem(config.private_key.expose_secret().as_bytes())
            .map_err(|_| GitHubError::Signing)?;
        Ok(Self {
            key,
            app_id: config.app_id.clone(),
        })
    }

    /// A JWT valid from a minute ago (clock drift, as GitHub advises) for 9 minutes (GitHub
    /// allows at most 10).
    fn jwt(&self) -> Result<SecretString, GitHubError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: &self.app_id,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(|_| GitHubError::Signing)
    }
}

struct Token {
    value: SecretString,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: DateTime<Utc>,
}

struct Inner {
    http: reqwest::Client,
    config: AppConfig,
    signer: Signer,
    token: Mutex<Option<Token>>,
    blocked_until: std::sync::Mutex<Option<Instant>>,
    tokens_fetched: std::sync::atomic::AtomicU64,
}

/// A GitHub App client; clones share the token cache and the rate-limit state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.inner.config.api_url.as_str())
            .field("installation_id", &self.inner.config.installation_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config`; `user_agent` names the service (GitHub requires one).
    pub fn new(config: AppConfig, user_agent: &str) -> Result<Self, GitHubError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static(API_VERSION),
        );
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .default_headers(headers)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .build()
            .map_err(|err| GitHubError::Transport(err.to_string()))?;
        let signer = Signer::new(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                signer,
                token: Mutex::new(None),
                blocked_until: std::sync::Mutex::new(None),
                tokens_fetched: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The API base URL.
    pub fn api_url(&self) -> &Url {
        &self.inner.config.api_url
    }

    /// How many installation tokens this client has fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.inner
            .tokens_fetched
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `GET path` (`/repos/...`) or a full URL under the API URL (a `Link` target).
    pub async fn get(&self, path_or_url: &str) -> Result<Answer, GitHubError> {
        self.request(Method::GET, path_or_url).await
    }

    /// `POST path` without a body.
    pub async fn post(&self, path_or_url: &str) -> Result<Answer, GitHubError> {
        self.request(Method::POST, path_or_url).await
    }

    fn url(&self, path_or_url: &str) -> Result<Url, GitHubError> {
        let base = &self.inner.config.api_url;
        if path_or_url.starts_with('/') {
            let joined = format!("{}{path_or_url}", base.as_str().trim_end_matches('/'));
            return Url::parse(&joined).map_err(|err| GitHubError::Invalid(err.to_string()));
        }
        // A `Link` target: only ever send the token to the API's own origin.
        let url = Url::parse(path_or_url).map_err(|err| GitHubError::Invalid(err.to_string()))?;
        if url.origin() != base.origin() || !url.path().starts_with(base.path()) {
            return Err(GitHubError::Invalid(
                "link points outside the API URL".to_owned(),
            ));
        }
        Ok(url)
    }

    /// Whether a rate limit holds now, and for how long.
    pub fn blocked_for(&self) -> Option<Duration> {
        let mut blocked = self.inner.blocked_until.lock().expect("rate-limit state");
        match *blocked {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *blocked = None;
                None
            }
            None => None,
        }
    }

    fn block_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut blocked = self.inner.blocked_until.lock().expect("rate-limit state");
        if blocked.is_none_or(|current| current < until) {
            *blocked = Some(until);
        }
        log::warn!(
            event = "github_rate_limited",
            wait_ms = wait.as_millis();
            "GitHub rate limit reached: waiting"
        );
    }

    async fn request(&self, method: Method, path_or_url: &str) -> Result<Answer, GitHubError> {
        self.request_with(method, path_or_url, None).await
    }

    /// One authenticated request; `body` is sent as JSON.
    async fn request_with(
        &self,
        method: Method,
        path_or_url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, GitHubError> {
        if let Some(wait) = self.blocked_for() {
            return Err(GitHubError::RateLimited(wait));
        }
        let url = self.url(path_or_url)?;
        let token = self.token().await?;
        let mut request = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()));
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let result = self.send(request).await;
        if let Err(GitHubError::Forbidden(401)) = result {
            // The token was revoked or expired early: fetch a new one next time.
            *self.inner.token.lock().await = None;
        }
        if let Err(err) = &result {
            log::debug!(
                event = "github_request_failed",
                method:% = method,
                path = url.path(),
                error:% = err;
                "GitHub request failed"
            );
        }
        result
    }

    /// The cached installation token, or a new one when it is missing or about to expire.
    async fn token(&self) -> Result<SecretString, GitHubError> {
        let mut cached = self.inner.token.lock().await;
        let margin = chrono::Duration::from_std(self.inner.config.refresh_margin)
            .unwrap_or(chrono::Duration::zero());
        if let Some(token) = cached.as_ref() {
            if token.expires_at - margin > Utc::now() {
                return Ok(token.value.clone());
            }
        }
        let jwt = self.inner.signer.jwt()?;
        let path = format!(
            "/app/installations/{}/access_tokens",
            self.inner.config.installation_id
        );
        let answer = self
            .send(
                self.inner
                    .http
                    .post(self.url(&path)?)
                    .header(AUTHORIZATION, format!("Bearer {}", jwt.expose_secret())),
            )
            .await?;
        let TokenAnswer { token, expires_at } = answer.json()?;
        self.inner
            .tokens_fetched
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        log::info!(
            event = "github_token_fetched",
            installation_id = self.inner.config.installation_id,
            expires_at = expires_at.to_rfc3339();
            "GitHub installation token fetched"
        );
        let value = SecretString::from(token);
        *cached = Some(Token {
            value: value.clone(),
            expires_at,
        });
        Ok(value)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, GitHubError> {
        let mut response = request
            .send()
            .await
            .map_err(|err| GitHubError::Transport(without_url(&err)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(GitHubError::Invalid("answer too large".to_owned()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => return Err(GitHubError::Transport(without_url(&err))),
            }
        }
        let remaining = header_u64(&headers, "x-ratelimit-remaining");
        let reset_wait = header_u64(&headers, "x-ratelimit-reset").map(|reset| {
            let now = Utc::now().timestamp().max(0) as u64;
            Duration::from_secs(reset.saturating_sub(now).max(1))
        });
        let retry_after = header_u64(&headers, RETRY_AFTER.as_str()).map(Duration::from_secs);
        if status.is_success() {
            // The last request of the window succeeded: wait for the reset before the next.
            if remaining == Some(0) {
                self.block_for(reset_wait.unwrap_or(SECONDARY_LIMIT_WAIT));
            }
            return Ok(Answer {
                status,
                headers,
                body: body.into(),
            });
        }
        let says_rate_limit = String::from_utf8_lossy(&body)
            .to_ascii_lowercase()
            .contains("rate limit");
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (retry_after.is_some() || remaining == Some(0) || says_rate_limit));
        if limited {
            let wait = retry_after
                .or(if remaining == Some(0) {
                    reset_wait
                } else {
                    None
                })
                .unwrap_or(SECONDARY_LIMIT_WAIT);
            self.block_for(wait);
            return Err(GitHubError::RateLimited(wait));
        }
        Err(match status.as_u16() {
            404 => GitHubError::NotFound,
            code @ (401 | 403) => GitHubError::Forbidden(code),
            code @ 500..=599 => GitHubError::Server(code),
            code => GitHubError::Status(code),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Self-hosted runners: just-in-time registration, listing, deregistration, runner groups.

/// The variable that names where runners register.
pub const GITHUB_PATH: &str = "APP_GITHUB_PATH";
/// Most pages read from one listing (100 per page: 10,000 runners or groups); a longer listing,
/// or a `Link` chain that loops, ends in [`GitHubError::Invalid`] rather than running forever.
pub const MAX_PAGES: usize = 100;
/// Id of the runner group every organization and repository has, `Default`.
pub const DEFAULT_RUNNER_GROUP_ID: u64 = 1;
/// Name of that group.
pub const DEFAULT_RUNNER_GROUP: &str = "Default";

/// Where runners register: `APP_GITHUB_PATH` = "org" or "owner/repo".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerScope {
    /// An organization's runners (`orgs/{org}/actions/runners`).
    Org(String),
    /// One repository's runners (`repos/{owner}/{repo}/actions/runners`).
    Repo {
        /// The repository's owner (user or organization).
        owner: String,
        /// The repository's name.
        repo: String,
    },
}

impl RunnerScope {
    /// Reads `org` or `owner/repo`; the error names `APP_GITHUB_PATH`.
    pub fn parse(path: &str) -> Result<Self, ConfigError> {
        let path = path.trim();
        // Owners: letters, digits, hyphens (and `_`, as managed users have); repositories
        // also `.` (never `.` or `..` alone).
        let owner_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let repo_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(org), None, None) if owner_ok(org) => Ok(Self::Org(org.to_owned())),
            (Some(owner), Some(repo), None) if owner_ok(owner) && repo_ok(repo) => Ok(Self::Repo {
                owner: owner.to_owned(),
                repo: repo.to_owned(),
            }),
            _ => Err(ConfigError::new(
                GITHUB_PATH,
                format!(
                    "{path:?} is not an organization (\"my-org\") or a repository (\"owner/repo\")"
                ),
            )),
        }
    }

    /// The API path prefix, without a leading slash: `orgs/{org}` or `repos/{owner}/{repo}`.
    pub fn api_prefix(&self) -> String {
        match self {
            Self::Org(org) => format!("orgs/{org}"),
            Self::Repo { owner, repo } => format!("repos/{owner}/{repo}"),
        }
    }
}

impl std::fmt::Display for RunnerScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Org(org) => f.write_str(org),
            Self::Repo { owner, repo } => write!(f, "{owner}/{repo}"),
        }
    }
}

/// A just-in-time runner configuration: one runner, one job. The encoded configuration is the
/// runner's credential: it lives in a [`SecretString`] (`Debug` prints it redacted) and is
/// handed only to the runner process.
#[derive(Debug, Clone)]
pub struct JitConfig {
    /// The id GitHub gave the (not yet connected) runner.
    pub runner_id: u64,
    /// Its name.
    pub runner_name: String,
    /// `encoded_jit_config`: what `run.sh --jitconfig` takes.
    pub encoded_jit_config: SecretString,
}

/// A self-hosted runner as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Runner {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// Whether it runs a job now.
    pub busy: bool,
    /// Its label names.
    #[serde(deserialize_with = "label_names")]
    pub labels: Vec<String>,
}

impl Runner {
    /// Whether GitHub sees it connected.
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }
}

fn label_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Label {
        name: String,
    }
    let labels = Vec::<Label>::deserialize(d)?;
    Ok(labels.into_iter().map(|label| label.name).collect())
}

/// What deregistering a runner came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// 204: the registration is gone.
    Deleted,
    /// 404: there was none (already gone).
    NotFound,
    /// 422: the runner runs a job and stays registered.
    Busy,
}

#[derive(Serialize)]
struct JitRequest<'a> {
    name: &'a str,
    runner_group_id: u64,
    labels: &'a [String],
    work_folder: &'a str,
}

#[derive(Deserialize)]
struct JitAnswer {
    runner: JitRunner,
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct JitRunner {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct RunnerPage {
    runners: Vec<Runner>,
}

#[derive(Deserialize)]
struct RunnerGroup {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct RunnerGroupPage {
    runner_groups: Vec<RunnerGroup>,
}

impl Client {
    /// A JIT configuration for a new runner `name` in `runner_group_id` with `labels`
    /// (`POST {prefix}/actions/runners/generate-jitconfig`, 201). A name already registered
    /// answers 409 ([`GitHubError::Status`]), an unknown group 404.
    pub async fn generate_jit_config(
        &self,
        scope: &RunnerScope,
        name: &str,
        runner_group_id: u64,
        labels: &[String],
        work_folder: &str,
    ) -> Result<JitConfig, GitHubError> {
        let body = serde_json::to_vec(&JitRequest {
            name,
            runner_group_id,
            labels,
            work_folder,
        })
        .map_err(|err| GitHubError::Invalid(err.to_string()))?;
        let path = format!("/{}/actions/runners/generate-jitconfig", scope.api_prefix());
        let answer = self.request_with(Method::POST, &path, Some(body)).await?;
        if answer.status != StatusCode::CREATED {
            return Err(GitHubError::Status(answer.status.as_u16()));
        }
        // Never `answer.json()`: its error text could quote the body, which holds the secret.
        let JitAnswer {
            runner,
            encoded_jit_config,
        } = serde_json::from_slice(&answer.body)
            .map_err(|_| GitHubError::Invalid("JIT configuration answer".to_owned()))?;
        Ok(JitConfig {
            runner_id: runner.id,
            runner_name: runner.name,
            encoded_jit_config: encoded_jit_config.into(),
        })
    }

    /// Every runner of `scope` (`GET {prefix}/actions/runners?per_page=100`, following `Link`
    /// up to [`MAX_PAGES`] pages).
    pub async fn list_runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GitHubError> {
        let first = format!("/{}/actions/runners?per_page=100", scope.api_prefix());
        let mut runners = Vec::new();
        self.each_page(&first, |answer| {
            runners.extend(answer.json::<RunnerPage>()?.runners);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(runners)
    }

    /// Deregisters runner `id` (`DELETE {prefix}/actions/runners/{id}`): 204 [`Deleted`],
    /// 404 [`NotFound`], 422 (it runs a job) [`Busy`].
    ///
    /// [`Deleted`]: DeleteOutcome::Deleted
    /// [`NotFound`]: DeleteOutcome::NotFound
    /// [`Busy`]: DeleteOutcome::Busy
    pub async fn delete_runner(
        &self,
        scope: &RunnerScope,
        id: u64,
    ) -> Result<DeleteOutcome, GitHubError> {
        let path = format!("/{}/actions/runners/{id}", scope.api_prefix());
        match self.request_with(Method::DELETE, &path, None).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(GitHubError::NotFound) => Ok(DeleteOutcome::NotFound),
            Err(GitHubError::Status(422)) => Ok(DeleteOutcome::Busy),
            Err(err) => Err(err),
        }
    }

    /// The id of runner group `name`: for an organization from `GET
    /// orgs/{org}/actions/runner-groups` (all pages, exact name); a repository has only
    /// `Default` (id 1). `None`: no such group.
    pub async fn runner_group_id(
        &self,
        scope: &RunnerScope,
        name: &str,
    ) -> Result<Option<u64>, GitHubError> {
        if let RunnerScope::Repo { .. } = scope {
            return Ok((name == DEFAULT_RUNNER_GROUP).then_some(DEFAULT_RUNNER_GROUP_ID));
        }
        let first = format!("/{}/actions/runner-groups?per_page=100", scope.api_prefix());
        let mut found = None;
        self.each_page(&first, |answer| {
            found = answer
                .json::<RunnerGroupPage>()?
                .runner_groups
                .into_iter()
                .find(|group| group.name == name)
                .map(|group| group.id);
            Ok(match found {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            })
        })
        .await?;
        Ok(found)
    }

    /// GETs `first` and every `rel="next"` page after it, at most [`MAX_PAGES`], until `page`
    /// breaks.
    async fn each_page(
        &self,
        first: &str,
        mut page: impl FnMut(&Answer) -> Result<ControlFlow<()>, GitHubError>,
    ) -> Result<(), GitHubError> {
        let mut next = Some(first.to_owned());
        for _ in 0..MAX_PAGES {
            let Some(url) = next.take() else {
                return Ok(());
            };
            let answer = self.get(&url).await?;
            if page(&answer)?.is_break() {
                return Ok(());
            }
            next = answer.next_page();
        }
        match next {
            None => Ok(()),
            Some(_) => Err(GitHubError::Invalid(format!(
                "listing longer than {MAX_PAGES} pages"
            ))),
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A transport error's description without its URL (a `Link` URL may carry a cursor; nothing
/// secret, but logs stay short).
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request"
    };
    format!(
        "{kind}: {}",
        std::error::Error::source(err).map_or_else(|| err.to_string(), ToString::to_string)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../tests/fixtures/github-app/test-only-private-key.pem");

    #[test]
    fn unset_means_disabled() {
        assert!(AppConfig::from_source(&[("OTHER", "x")]).unwrap().is_none());
        // The URL alone has a default and enables nothing.
        assert!(
            AppConfig::from_source(&[(API_URL, "https://ghe.example/api/v3")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_full_configuration_is_read() {
        let config = AppConfig::from_source(&[
            (APP_ID, "1234"),
            (INSTALLATION_ID, "5678"),
            (PRIVATE_KEY, KEY),
            (API_URL, "https://ghe.example/api/v3/"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.app_id, "1234");
        assert_eq!(config.installation_id, 5678);
        assert_eq!(config.api_url.as_str(), "https://ghe.example/api/v3");
        let printed = format!("{config:?}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    }

    #[test]
    fn escaped_newlines_are_accepted() {
        let flat = KEY.replace('\n', "\\n");
        let config = AppConfig::from_source(&[
            (APP_ID, "1"),
            (INSTALLATION_ID, "2"),
            (PRIVATE_KEY, flat.as_str()),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.api_url.as_str(), "https://api.github.com/");
    }

    #[test]
    fn partial_or_bad_configurations_name_the_variable() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[(APP_ID, "1")], INSTALLATION_ID),
            (&[(APP_ID, "1"), (INSTALLATION_ID, "2")], PRIVATE_KEY),
            (&[(INSTALLATION_ID, "2"), (PRIVATE_KEY, KEY)], APP_ID),
            (
                &[
                    (APP_ID, "1"),
                    (INSTALLATION_ID, "2"),
                    (PRIVATE_KEY, "not a key"),
                ],
                PRIVATE_KEY,
            ),
            (
                &[(APP_ID, "1"), (INSTALLATION_ID, "zero"), (PRIVATE_KEY, KEY)],
                INSTALLATION_ID,
            ),
            (
                &[
                    (APP_ID, "1"),
                    (INSTALLATION_ID, "2"),
                    (PRIVATE_KEY, KEY),
                    (API_URL, "ftp://x"),
                ],
                API_URL,
            ),
        ];
        for (vars, variable) in cases {
            let err = AppConfig::from_source(&vars).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
            assert!(!err.to_string().contains("PRIVATE KEY"));
        }
    }

    #[test]
    fn link_headers_give_the_next_page() {
        let link = "<https://api.github.com/orgs/o/hooks/1/deliveries?per_page=100&cursor=v1_9>; \
                    rel=\"next\", <https://api.github.com/x?cursor=>; rel=\"prev\"";
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/orgs/o/hooks/1/deliveries?per_page=100&cursor=v1_9")
        );
        assert_eq!(next_link("<https://a/b>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn links_outside_the_api_are_refused() {
        let config = AppConfig::from_source(&[
            (APP_ID, "1"),
            (INSTALLATION_ID, "2"),
            (PRIVATE_KEY, KEY),
            (API_URL, "https://ghe.example/api/v3"),
        ])
        .unwrap()
        .unwrap();
        let client = Client::new(config, "test").unwrap();
        assert!(client
            .url("https://ghe.example/api/v3/orgs/o/hooks/1/deliveries?cursor=x")
            .is_ok());
        assert!(client.url("https://evil.example/api/v3/orgs").is_err());
        assert!(client.url("https://ghe.example/other").is_err());
        assert_eq!(
            client.url("/repos/o/r").unwrap().as_str(),
            "https://ghe.example/api/v3/repos/o/r"
        );
    }

    #[test]
    fn runner_scopes_are_an_org_or_a_repository() {
        assert_eq!(
            RunnerScope::parse("my-org").unwrap(),
            RunnerScope::Org("my-org".into())
        );
        let repo = RunnerScope::parse(" owner/repo.rs_2 ").unwrap();
        assert_eq!(
            repo,
            RunnerScope::Repo {
                owner: "owner".into(),
                repo: "repo.rs_2".into()
            }
        );
        assert_eq!(repo.api_prefix(), "repos/owner/repo.rs_2");
        assert_eq!(repo.to_string(), "owner/repo.rs_2");
        assert_eq!(RunnerScope::Org("o".into()).api_prefix(), "orgs/o");
        for bad in [
            "", "/", "a/b/c", "o/", "/r", "o/..", "o r", "o/r?x=1", "o.o",
        ] {
            let err = RunnerScope::parse(bad).unwrap_err();
            assert_eq!(err.variable, "APP_GITHUB_PATH", "{bad:?}");
        }
    }

    #[test]
    fn runners_are_read_as_github_lists_them() {
        let page: RunnerPage = serde_json::from_str(
            r#"{"total_count": 1, "runners": [{"id": 23, "name": "m-small-x", "os": "linux",
                "status": "online", "busy": true, "ephemeral": true,
                "labels": [{"id": 5, "name": "self-hosted", "type": "read-only"},
                           {"id": 7, "name": "small", "type": "custom"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            page.runners,
            vec![Runner {
                id: 23,
                name: "m-small-x".into(),
                status: "online".into(),
                busy: true,
                labels: vec!["self-hosted".into(), "small".into()],
            }]
        );
        assert!(page.runners[0].is_online());
    }

    #[test]
    fn jit_configs_never_print_their_secret() {
        let config = JitConfig {
            runner_id: 1,
            runner_name: "r".into(),
            encoded_jit_config: "eyJzZWNyZXQiOiJ4In0=".to_owned().into(),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("eyJzZWNyZXQi"), "{printed}");
        assert!(printed.contains("runner_name"), "{printed}");
    }
}
