//! A fake GitHub API server for the redelivery and reconciliation tests (the real one cannot be
//! reached from here), started in-process on `127.0.0.1:0`.
//!
//! It checks what GitHub checks: the App JWT's RS256 signature against the test-only public key
//! (`tests/fixtures/github-app/`), its issuer and lifetime; installation tokens on every API call
//! (unknown or expired: 401); GitHub's `Accept`, `X-GitHub-Api-Version` and `User-Agent`
//! headers (missing: 400). It serves a hook's deliveries newest first in pages with `Link`
//! headers, job lookups (200, 404, 5xx as scripted), rate-limit headers on every answer and,
//! when asked, one 429 with `Retry-After`. A redelivery re-sends the stored payload, signed, to
//! the gateway's `/webhook`, and records the outcome as a new delivery of the same GUID.
//!
//! For the console's set-up page it plays GitHub's App manifest flow ([`manifests`]): the
//! confirmation page (a redirect back with a code) and the code's conversion (once).
//!
//! Its API routes answer at its root, as `api.github.com`'s do, and under `/api/v3`, as a
//! GitHub Enterprise Server's do ([`ENTERPRISE_API_PREFIX`]); its web pages only at the root.
//!
//! For the runner manager it keeps self-hosted runners per organization and repository:
//! `generate-jitconfig` (201; 409 for a name taken, 404 for an unknown runner group, 422 for
//! no labels), runner listings in pages with `Link`, `DELETE` (204; 422 while busy; 404) and
//! an organization's runner groups. A JIT configuration is `base64(JSON {url, runner_id,
//! token})`; a stand-in runner (`fake-runner`) speaks the fake's runner side with it (see
//! [`runner_side`] and `docs/testing.md`); one that falls silent turns offline, as a dead
//! runner does on GitHub. Tests script it through [`FakeGitHub`]'s controls:
//! [`FakeGitHub::add_runner`], [`FakeGitHub::assign_job`], [`FakeGitHub::finish_job`],
//! [`FakeGitHub::set_online`], [`FakeGitHub::set_down`], [`FakeGitHub::rate_limit`],
//! [`FakeGitHub::fail`], [`FakeGitHub::auto_jobs`], read [`State::requests`], and await a
//! condition with [`FakeGitHub::wait_until`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The test-only App private key (PKCS#1 PEM). Never a real key.
pub const PRIVATE_KEY: &str = include_str!("../fixtures/github-app/test-only-private-key.pem");
/// Its public key, which the fake checks JWTs with.
pub const PUBLIC_KEY: &str = include_str!("../fixtures/github-app/test-only-public-key.pem");
/// The App id of the tests.
pub const APP_ID: &str = "4242";
/// The installation id of the tests.
pub const INSTALLATION_ID: u64 = 777;
/// Where GitHub Enterprise Server serves its REST API: the fake answers every API route both
/// at its root (as `api.github.com` does) and under this prefix; its web pages (the manifest
/// flow's) only at the root.
pub const ENTERPRISE_API_PREFIX: &str = "/api/v3";

/// How the fake answers a job lookup.
#[derive(Debug, Clone)]
pub enum JobAnswer {
    /// 200 with this job.
    Job(Value),
    /// 404.
    NotFound,
    /// 500 this many more times, then the next answer.
    ServerErrors(usize, Box<JobAnswer>),
}

/// A delivery the fake lists.
#[derive(Debug, Clone)]
pub struct FakeDelivery {
    /// Its id.
    pub id: u64,
    /// `X-GitHub-Delivery`.
    pub guid: String,
    /// When it was sent.
    pub delivered_at: DateTime<Utc>,
    /// What the receiver answered.
    pub status_code: u16,
    /// `X-GitHub-Event`.
    pub event: String,
    /// Whether it is a redelivery.
    pub redelivery: bool,
    /// The body, re-sent on redelivery.
    pub payload: Vec<u8>,
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Logged {
    /// When.
    pub at: Instant,
    /// `GET`, `POST`.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The answer's status.
    pub status: u16,
}

/// What the fake knows and has seen. Tests read and script it through [`FakeGitHub::state`].
pub struct State {
    decoding: DecodingKey,
    /// Lifetime of the installation tokens it issues.
    pub token_lifetime: Duration,
    tokens: HashMap<String, DateTime<Utc>>,
    /// Installation tokens issued.
    pub tokens_issued: usize,
    /// Requests refused for a bad JWT or token (401).
    pub unauthorized: usize,
    /// Requests refused for missing GitHub headers (400).
    pub bad_headers: usize,
    /// Every request answered.
    pub log: Vec<Logged>,
    /// The hook's deliveries (any order; listed newest first).
    pub deliveries: Vec<FakeDelivery>,
    /// Deliveries per page, at most (GitHub: `per_page`, here also capped by this).
    pub page_size: usize,
    /// The next deliveries listing is answered 429 with `Retry-After: 1`.
    pub rate_limit_next_listing: bool,
    /// The next deliveries listing is answered 403 "secondary rate limit" with no time given.
    pub forbid_next_listing: bool,
    /// Job lookups, by job id.
    pub jobs: HashMap<i64, JobAnswer>,
    /// Lookups per job id.
    pub job_lookups: HashMap<i64, usize>,
    /// Delivery ids whose redelivery was asked for.
    pub redelivery_requests: Vec<u64>,
    /// Where redeliveries go: the gateway's base URL and webhook secret.
    pub webhook_target: Option<(String, String)>,
    next_id: u64,
    /// Self-hosted runners of every organization and repository.
    pub runners: Vec<FakeRunner>,
    /// Runner groups `(id, name)` of every organization; `Default` (1) is always there.
    pub runner_groups: Vec<(u64, String)>,
    /// Runners (and runner groups) per page at most (GitHub: `per_page`, at most 100).
    pub runner_page_size: usize,
    /// Every GitHub route answers 503 (the runner side keeps working).
    pub down: bool,
    /// Scripted answers, tried before any route.
    pub faults: Vec<Fault>,
    /// The fake's own base URL, written into every JIT configuration.
    url: String,
    /// Encoded JIT configuration -> runner id.
    jit_configs: HashMap<String, u64>,
    /// Runners whose job finished (and whose registration GitHub then removed).
    finished: HashSet<u64>,
    /// A connected runner whose runner side has been silent this long (no poll in flight)
    /// turns offline and loses its job, as GitHub marks a runner whose process died.
    pub offline_after: Duration,
    /// Runner-side polls received, counted as they arrive (a long poll is counted while it
    /// still waits).
    pub runner_polls: usize,
    /// Runners that connected with their JIT configuration (good once).
    connected: HashSet<u64>,
    next_runner_id: u64,
    changed: Arc<Notify>,
    /// Apps created from a manifest ([`manifests`]).
    pub manifest_apps: Vec<manifests::ManifestApp>,
}

/// A self-hosted runner the fake keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRunner {
    /// Its id.
    pub id: u64,
    /// Where it is registered: `orgs/{org}` or `repos/{owner}/{repo}`.
    pub scope: String,
    /// Its name (unique in its scope).
    pub name: String,
    /// Its label names.
    pub labels: Vec<String>,
    /// Its runner group.
    pub group_id: u64,
    /// Connected (`status: online`).
    pub online: bool,
    /// Running a job.
    pub busy: bool,
    /// When its job was assigned.
    pub job_started: Option<Instant>,
    /// When its runner side last called (connect, or a poll's start or end); `None` for a
    /// runner a test registered or set online directly, which never goes silent.
    pub last_seen: Option<Instant>,
    /// Its polls in flight (a long-polling runner is connected).
    pub polling: usize,
}

/// An answer the fake gives instead of the route's, to the next `times` requests whose path
/// starts with `prefix`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Path prefix, such as `/orgs/o/actions/runners`.
    pub prefix: String,
    /// How many more requests get it.
    pub times: usize,
    /// What they get.
    pub answer: FaultAnswer,
}

/// What a [`Fault`] answers.
#[derive(Debug, Clone)]
pub enum FaultAnswer {
    /// 429 with `Retry-After` (whole seconds, at least 1) and `X-RateLimit-Remaining: 0`.
    RateLimited(Duration),
    /// This status with a GitHub error body.
    Status(u16),
}

impl State {
    /// Adds a delivery; returns its id.
    pub fn add_delivery(
        &mut self,
        guid: &str,
        age: chrono::Duration,
        status_code: u16,
        event: &str,
        payload: &Value,
    ) -> u64 {
        self.next_id += 1;
        self.deliveries.push(FakeDelivery {
            id: self.next_id,
            guid: guid.to_owned(),
            delivered_at: Utc::now() - age,
            status_code,
            event: event.to_owned(),
            redelivery: false,
            payload: serde_json::to_vec(payload).expect("payload"),
        });
        self.next_id
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<Logged> {
        self.log
            .iter()
            .filter(|logged| logged.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// A running fake.
pub struct FakeGitHub {
    /// `http://127.0.0.1:<port>`, the `APP_GITHUB_API_URL` to use (and the runner side's base).
    pub url: String,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    handle: ServerHandle,
}

impl FakeGitHub {
    /// Starts a fake on `127.0.0.1:0` on the current actix system.
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake GitHub");
        Self::start_on(listener)
    }

    /// Starts a fake on `listener` on the current actix system.
    pub fn start_on(listener: std::net::TcpListener) -> Self {
        let address = listener.local_addr().expect("address");
        let url = format!("http://{address}");
        let state = Arc::new(Mutex::new(State {
            decoding: DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("public key"),
            token_lifetime: Duration::from_secs(3600),
            tokens: HashMap::new(),
            tokens_issued: 0,
            unauthorized: 0,
            bad_headers: 0,
            log: Vec::new(),
            deliveries: Vec::new(),
            page_size: 100,
            rate_limit_next_listing: false,
            forbid_next_listing: false,
            jobs: HashMap::new(),
            job_lookups: HashMap::new(),
            redelivery_requests: Vec::new(),
            webhook_target: None,
            next_id: 1000,
            runners: Vec::new(),
            runner_groups: vec![(
                actors::github::DEFAULT_RUNNER_GROUP_ID,
                actors::github::DEFAULT_RUNNER_GROUP.to_owned(),
            )],
            runner_page_size: 100,
            down: false,
            faults: Vec::new(),
            url: url.clone(),
            jit_configs: HashMap::new(),
            finished: HashSet::new(),
            connected: HashSet::new(),
            runner_polls: 0,
            offline_after: Duration::from_secs(10),
            next_runner_id: 100,
            changed: Arc::new(Notify::new()),
            manifest_apps: Vec::new(),
        }));
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .default_service(web::to(handle))
        })
        .listen(listener)
        .expect("listen")
        .workers(1)
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self { url, state, handle }
    }

    /// Checks App JWTs with `pem` (a PEM RSA public key) instead of the test-only key.
    pub fn set_public_key(&self, pem: &str) -> Result<(), jsonwebtoken::errors::Error> {
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())?;
        self.state().decoding = key;
        Ok(())
    }

    /// Locks the state.
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().expect("fake state");
        state.expire_silent();
        state
    }

    /// A GitHub App configuration pointing at this fake.
    pub fn app_config(&self) -> actors::github::AppConfig {
        let vars: &[(&str, &str)] = &[
            ("APP_GITHUB_APP_ID", APP_ID),
            ("APP_GITHUB_APP_INSTALLATION_ID", "777"),
            ("APP_GITHUB_APP_PRIVATE_KEY_VALUE", PRIVATE_KEY),
            ("APP_GITHUB_API_URL", &self.url),
        ];
        let mut config = actors::github::AppConfig::from_source(&vars)
            .expect("valid App configuration")
            .expect("App configured");
        config.request_timeout = Duration::from_secs(5);
        config
    }

    /// Stops the server.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn rate_headers(response: &mut actix_web::HttpResponseBuilder) {
    let reset = Utc::now().timestamp() + 3600;
    response
        .insert_header(("X-RateLimit-Limit", "5000"))
        .insert_header(("X-RateLimit-Remaining", "4000"))
        .insert_header(("X-RateLimit-Reset", reset.to_string()));
}

fn answer(status: u16, body: Value) -> HttpResponse {
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"));
    rate_headers(&mut response);
    response.json(body)
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
    exp: i64,
}

async fn handle(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or(path.clone(), |pq| pq.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    state.lock().expect("fake state").expire_silent();
    let (response, redeliver) = if path.starts_with("/_fake/") {
        (
            runner_side::route(&request, &state, &method, &path).await,
            None,
        )
    } else {
        route(&request, &body, &state, &method, &path)
    };
    let status = response.status().as_u16();
    {
        let mut state = state.lock().expect("fake state");
        state.log.push(Logged {
            at: Instant::now(),
            method,
            path: path_and_query,
            status,
        });
        state.changed.notify_waiters();
    }
    if let Some(delivery) = redeliver {
        actix_web::rt::spawn(redeliver_to_gateway(state.into_inner(), delivery));
    }
    response
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn route(
    request: &HttpRequest,
    body: &[u8],
    state: &Mutex<State>,
    method: &str,
    path: &str,
) -> (HttpResponse, Option<FakeDelivery>) {
    let mut state = state.lock().expect("fake state");
    // GitHub Enterprise Server serves the REST API under `/api/v3` of its web address.
    let (path, enterprise_api) = match path.strip_prefix(ENTERPRISE_API_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => (rest, true),
        _ => (path, false),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // A person's browser and the unauthenticated conversion: no API headers, no token.
    if let Some(response) =
        manifests::route(request, body, &mut state, method, &segments, enterprise_api)
    {
        return (response, None);
    }
    let has_headers = header(request, "Accept") == Some("application/vnd.github+json")
        && header(request, "X-GitHub-Api-Version").is_some()
        && header(request, "User-Agent").is_some_and(|agent| !agent.is_empty());
    if !has_headers {
        state.bad_headers += 1;
        return (answer(400, json!({"message": "missing headers"})), None);
    }
    let bearer = header(request, "Authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if state.down {
        return (answer(503, json!({"message": "Service Unavailable"})), None);
    }
    if let Some(response) = state.fault(path) {
        return (response, None);
    }

    // POST /app/installations/{id}/access_tokens: a valid App JWT gets a token.
    if let (["app", "installations", id, "access_tokens"], "POST") = (segments.as_slice(), method) {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[APP_ID]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let claims = jsonwebtoken::decode::<Claims>(&bearer, &state.decoding, &validation);
        let valid = claims.is_ok_and(|data| {
            data.claims.iss == APP_ID && data.claims.exp - data.claims.iat <= 600
        });
        if !valid || *id != INSTALLATION_ID.to_string() {
            state.unauthorized += 1;
            return (
                answer(
                    401,
                    json!({"message": "A JSON web token could not be decoded"}),
                ),
                None,
            );
        }
        let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
        let expires_at =
            Utc::now() + chrono::Duration::from_std(state.token_lifetime).expect("lifetime");
        state.tokens.insert(token.clone(), expires_at);
        state.tokens_issued += 1;
        return (
            answer(
                201,
                json!({"token": token, "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
            ),
            None,
        );
    }

    // Every other call needs an unexpired installation token.
    match state.tokens.get(&bearer) {
        Some(expires_at) if *expires_at > Utc::now() => {}
        _ => {
            state.unauthorized += 1;
            return (answer(401, json!({"message": "Bad credentials"})), None);
        }
    }

    let hook = match segments.as_slice() {
        ["orgs", _, "hooks", _, rest @ ..] | ["repos", _, _, "hooks", _, rest @ ..] => Some(rest),
        _ => None,
    };
    match (hook, segments.as_slice(), method) {
        (Some(["deliveries"]), _, "GET") => {
            if std::mem::take(&mut state.rate_limit_next_listing) {
                let mut response = HttpResponse::TooManyRequests();
                response
                    .insert_header(("Retry-After", "1"))
                    .insert_header(("X-RateLimit-Remaining", "0"));
                return (
                    response.json(json!({"message": "You have exceeded a secondary rate limit"})),
                    None,
                );
            }
            if std::mem::take(&mut state.forbid_next_listing) {
                return (
                    answer(
                        403,
                        json!({"message": "You have exceeded a secondary rate limit."}),
                    ),
                    None,
                );
            }
            (list_deliveries(&state, request), None)
        }
        (Some(["deliveries", id, "attempts"]), _, "POST") => {
            let Ok(id) = id.parse::<u64>() else {
                return (answer(404, json!({"message": "Not Found"})), None);
            };
            state.redelivery_requests.push(id);
            match state.deliveries.iter().find(|d| d.id == id).cloned() {
                Some(delivery) => (answer(202, json!({})), Some(delivery)),
                None => (answer(404, json!({"message": "Not Found"})), None),
            }
        }
        (None, ["repos", _, _, "actions", "jobs", id], "GET") => {
            let Ok(id) = id.parse::<i64>() else {
                return (answer(404, json!({"message": "Not Found"})), None);
            };
            *state.job_lookups.entry(id).or_default() += 1;
            let next = match state.jobs.get(&id).cloned() {
                None | Some(JobAnswer::NotFound) => {
                    return (answer(404, json!({"message": "Not Found"})), None)
                }
                Some(JobAnswer::Job(job)) => return (answer(200, job), None),
                Some(JobAnswer::ServerErrors(0, next)) => *next,
                Some(JobAnswer::ServerErrors(n, next)) => JobAnswer::ServerErrors(n - 1, next),
            };
            let response = match &next {
                JobAnswer::Job(job) => answer(200, job.clone()),
                JobAnswer::NotFound => answer(404, json!({"message": "Not Found"})),
                JobAnswer::ServerErrors(..) => answer(500, json!({"message": "Server Error"})),
            };
            state.jobs.insert(id, next);
            (response, None)
        }
        _ => (
            runners::route(&mut state, request, body, &segments, method)
                .unwrap_or_else(|| answer(404, json!({"message": "Not Found"}))),
            None,
        ),
    }
}

/// The query string's parameters (none when it does not parse).
fn query(request: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

/// `per_page` as GitHub reads it (default 30, 1 to 100), capped by the fake's page size.
fn per_page(query: &HashMap<String, String>, cap: usize) -> usize {
    query
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100)
        .min(cap.max(1))
}

fn list_deliveries(state: &State, request: &HttpRequest) -> HttpResponse {
    let query = query(request);
    let per_page = per_page(&query, state.page_size);
    let mut sorted: Vec<&FakeDelivery> = state.deliveries.iter().collect();
    sorted.sort_by(|a, b| b.delivered_at.cmp(&a.delivered_at).then(b.id.cmp(&a.id)));
    // The cursor is the id of the last delivery of the previous page.
    let start = match query.get("cursor").and_then(|c| c.parse::<u64>().ok()) {
        Some(after) => sorted
            .iter()
            .position(|d| d.id == after)
            .map_or(sorted.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<&FakeDelivery> = sorted.iter().skip(start).take(per_page).copied().collect();
    let body: Vec<Value> = page
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "guid": d.guid, "delivered_at": d.delivered_at.to_rfc3339(),
                "redelivery": d.redelivery, "duration": 0.1,
                "status": if (200..300).contains(&d.status_code) { "OK" } else { "failed" },
                "status_code": d.status_code, "event": d.event, "action": null,
                "installation_id": INSTALLATION_ID, "repository_id": 1
            })
        })
        .collect();
    let mut response = HttpResponse::Ok();
    rate_headers(&mut response);
    if start + page.len() < sorted.len() {
        if let Some(last) = page.last() {
            let host = header(request, "Host").unwrap_or("127.0.0.1");
            response.insert_header((
                "Link",
                format!(
                    "<http://{host}{}?per_page={per_page}&cursor={}>; rel=\"next\"",
                    request.path(),
                    last.id
                ),
            ));
        }
    }
    response.json(body)
}

async fn redeliver_to_gateway(state: Arc<Mutex<State>>, delivery: FakeDelivery) {
    let target = state.lock().expect("fake state").webhook_target.clone();
    let status = match target {
        Some((url, secret)) => {
            let response = reqwest::Client::new()
                .post(format!("{url}/webhook"))
                .timeout(Duration::from_secs(10))
                .header("Content-Type", "application/json")
                .header("User-Agent", "GitHub-Hookshot/fake")
                .header("X-GitHub-Event", &delivery.event)
                .header("X-GitHub-Delivery", &delivery.guid)
                .header("X-GitHub-Hook-ID", "55")
                .header(
                    "X-Hub-Signature-256",
                    gateway::webhook::sign(&secret, &delivery.payload),
                )
                .body(delivery.payload.clone())
                .send()
                .await;
            response.map_or(0, |r| r.status().as_u16())
        }
        None => 0,
    };
    let mut state = state.lock().expect("fake state");
    state.next_id += 1;
    let id = state.next_id;
    state.deliveries.push(FakeDelivery {
        id,
        delivered_at: Utc::now(),
        status_code: status,
        redelivery: true,
        ..delivery
    });
}

pub mod manifests;
pub mod runner_side;
mod runners;
