//! A fake Google Compute Engine API for the `gce` backend's tests, started in-process on
//! `127.0.0.1:0`, with a fake OAuth token endpoint and a fake metadata server on the same port.
//!
//! - `POST /token`: the service-account JWT grant; the assertion's RS256 signature is checked
//!   against the test-only public key (`tests/fixtures/github-app/`), with its `aud` (this
//!   endpoint), `scope` (Compute) and `iss`.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token`: 403 without
//!   `Metadata-Flavor: Google`.
//! - `GET /computeMetadata/v1/instance/attributes/<key>`: the metadata item `key` of the VM
//!   chosen by [`FakeGce::metadata_of`] (what that VM's startup script reads), as text; 404 when
//!   it has none, 403 without `Metadata-Flavor: Google`.
//! - Compute: zone instances (`insert` with `sourceInstanceTemplate` and `requestId`, `get`,
//!   `delete`; 409 on a name taken in the zone, 404 on an unknown one; an insert repeating a
//!   `requestId` is answered the first one's operation and does nothing, as Compute Engine
//!   does), zone operations, `aggregated/instances` with a label filter (`labels.k = "v"` joined
//!   by `AND`), the project's zones ([`FakeGce::zone`]) with a filter (`status = "UP"`), both in
//!   pages (`maxResults`, capped by [`FakeGce::set_page_size`], `pageToken`). Every Compute call
//!   needs a token the fake issued, has not revoked and that has not expired (401 otherwise).
//! - Controls: capacity errors inside the operation for chosen zone/template pairs
//!   ([`FakeGce::no_capacity`]), any other operation error ([`FakeGce::fail_inserts`]), slow
//!   zones whose operations never finish ([`FakeGce::slow_zone`]), Spot preemption or a
//!   powered-off runner ([`FakeGce::terminate`]), answers of 5xx or 429 ([`FakeGce::fail_next`]),
//!   an insert that takes effect and whose answer is lost ([`FakeGce::lose_next_insert_answer`]),
//!   token revocation ([`FakeGce::revoke_tokens`]), short-lived tokens
//!   ([`FakeGce::token_lifetime`]), failing token endpoints ([`FakeGce::fail_next_tokens`]).
//! - Guests ([`FakeGce::run_runners`]): a VM created from then on does what the startup script
//!   does on a real one: it runs a runner ([`crate::fake_runner`], in this process) with the
//!   JIT configuration from its metadata, which registers with the fake GitHub the
//!   configuration names, and the VM powers off (`TERMINATED`) when the runner exits. A VM from
//!   a template marked [`FakeGce::never_boot`] runs nothing (a broken image). Deleting or
//!   terminating a VM stops its runner.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::fake_github::{PRIVATE_KEY, PUBLIC_KEY};
use crate::fake_runner::{self, RunnerEnv};

/// The metadata key the startup script reads the JIT configuration from.
const JIT_CONFIG_KEY: &str = "github-runner-jitconfig";

/// The service account of the test key file.
pub const SERVICE_ACCOUNT: &str = "runner-manager@test-project.iam.gserviceaccount.com";

/// The fake's state, readable by tests.
#[derive(Default)]
pub struct State {
    /// VMs by zone, then name.
    pub instances: BTreeMap<String, BTreeMap<String, Value>>,
    /// Operations by name: zone, the operation.
    operations: HashMap<String, Value>,
    no_capacity: HashSet<(String, String)>,
    failing: HashMap<(String, String), String>,
    slow_zones: HashSet<String>,
    fail_next: VecDeque<u16>,
    page_size: Option<usize>,
    /// Issued tokens and when each expires.
    tokens: HashMap<String, Instant>,
    /// Lifetime of the tokens issued from now on (default 3599 s, as Google's).
    token_lifetime: u64,
    token_fail_next: VecDeque<u16>,
    /// Requests to the token endpoint and the metadata server's token, answered or not.
    pub token_requests: u64,
    /// Tokens issued so far (by the token endpoint and the metadata server).
    pub tokens_issued: u64,
    /// Compute calls refused with 401.
    pub unauthorized: u64,
    /// `METHOD path?query` of every Compute call.
    pub requests: Vec<String>,
    /// The bodies of every insert.
    pub inserts: Vec<Value>,
    /// When each insert arrived, in order.
    pub insert_times: Vec<Instant>,
    /// Operation of each insert's `requestId`.
    request_ids: HashMap<String, String>,
    /// Inserts answered with the operation of an earlier one with the same `requestId`.
    pub replayed_requests: u64,
    lose_next_insert_answer: Option<u16>,
    /// Zones of the project and their status (`UP`, `DOWN`).
    zones: BTreeMap<String, String>,
    /// `(VM name, exit code)` of every guest runner that has exited.
    pub guest_exits: Vec<(String, i32)>,
    run_runners: bool,
    never_boot: HashSet<String>,
    /// `(zone, name)` of the VM whose attributes the metadata server answers.
    metadata_of: Option<(String, String)>,
    guests: HashMap<(String, String), tokio::task::JoinHandle<()>>,
    next_id: u64,
}

impl State {
    fn stop_guest(&mut self, zone: &str, name: &str) {
        if let Some(guest) = self.guests.remove(&(zone.to_owned(), name.to_owned())) {
            guest.abort();
        }
    }
}

/// A running fake.
pub struct FakeGce {
    /// `http://127.0.0.1:<port>`: the API, token endpoint and metadata server.
    pub url: String,
    /// Its state.
    pub state: Arc<Mutex<State>>,
    handle: ServerHandle,
}

impl FakeGce {
    /// Starts a fake on a free loopback port, on the current actix system.
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake GCE");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(Mutex::new(State {
            token_lifetime: 3599,
            ..State::default()
        }));
        let shared = web::Data::new(Shared {
            state: state.clone(),
            url: url.clone(),
            decoding: DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("public key"),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/token", web::post().to(token))
                .route(
                    "/computeMetadata/v1/instance/service-accounts/default/token",
                    web::get().to(metadata_token),
                )
                .route(
                    "/computeMetadata/v1/instance/attributes/{key}",
                    web::get().to(metadata_attribute),
                )
                .default_service(web::to(compute))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self { url, state, handle }
    }

    /// A service-account key file naming this fake's token endpoint, written under `dir`.
    pub fn key_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("service-account.json");
        let key = json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "test-key-1",
            "private_key": PRIVATE_KEY,
            "client_email": SERVICE_ACCOUNT,
            "token_uri": format!("{}/token", self.url),
        });
        std::fs::write(&path, key.to_string()).expect("write key file");
        path
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("fake GCE state"))
    }

    /// Inserts in `zone` from `template` end in a stockout inside the operation.
    pub fn no_capacity(&self, zone: &str, template: &str) {
        self.with(|s| s.no_capacity.insert((zone.into(), template.into())));
    }

    /// Inserts in `zone` from `template` end in the operation error `code`.
    pub fn fail_inserts(&self, zone: &str, template: &str, code: &str) {
        self.with(|s| {
            s.failing
                .insert((zone.into(), template.into()), code.into())
        });
    }

    /// Operations in `zone` never finish (their VMs are created all the same).
    pub fn slow_zone(&self, zone: &str) {
        self.with(|s| s.slow_zones.insert(zone.into()));
    }

    /// The next Compute calls answer these statuses (5xx, 429).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.with(|s| s.fail_next.extend(statuses));
    }

    /// Pages of aggregated lists hold at most `size` VMs.
    pub fn set_page_size(&self, size: usize) {
        self.with(|s| s.page_size = Some(size));
    }

    /// Every token issued so far is refused from now on.
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// Tokens issued from now on expire after `seconds` (and say so in `expires_in`).
    pub fn token_lifetime(&self, seconds: u64) {
        self.with(|s| s.token_lifetime = seconds);
    }

    /// The next token requests answer these statuses.
    pub fn fail_next_tokens(&self, statuses: &[u16]) {
        self.with(|s| s.token_fail_next.extend(statuses));
    }

    /// The next insert takes effect, and its answer is `status` (a 5xx), as when Compute
    /// Engine's answer is lost on the way.
    pub fn lose_next_insert_answer(&self, status: u16) {
        self.with(|s| s.lose_next_insert_answer = Some(status));
    }

    /// The project has the zone `name` (its region is the name without its last `-x`), with
    /// `status` (`UP` or `DOWN`).
    pub fn zone(&self, name: &str, status: &str) {
        self.with(|s| s.zones.insert(name.into(), status.into()));
    }

    /// VMs created from now on run a runner with their JIT configuration and power off when
    /// it exits.
    pub fn run_runners(&self) {
        self.with(|s| s.run_runners = true);
    }

    /// VMs from `template` boot into nothing: their runner never registers.
    pub fn never_boot(&self, template: &str) {
        self.with(|s| s.never_boot.insert(template.into()));
    }

    /// The metadata server answers as the VM `name` in `zone` would see it.
    pub fn metadata_of(&self, zone: &str, name: &str) {
        self.with(|s| s.metadata_of = Some((zone.into(), name.into())));
    }

    /// Inserts in `zone` from `template` find capacity again.
    pub fn restore_capacity(&self, zone: &str, template: &str) {
        self.with(|s| s.no_capacity.remove(&(zone.into(), template.into())));
    }

    /// The zone of the VM `name`, if there is one.
    pub fn zone_of(&self, name: &str) -> Option<String> {
        self.with(|s| {
            s.instances
                .iter()
                .find(|(_, vms)| vms.contains_key(name))
                .map(|(zone, _)| zone.clone())
        })
    }

    /// The VM stops (Spot preemption, or its runner powered it off); its runner, if any, is
    /// stopped with it.
    pub fn terminate(&self, zone: &str, name: &str) {
        self.with(|s| {
            s.stop_guest(zone, name);
            let vm = s
                .instances
                .get_mut(zone)
                .and_then(|z| z.get_mut(name))
                .expect("a VM to terminate");
            vm["status"] = json!("TERMINATED");
        });
    }

    /// Adds a running VM with `labels` directly.
    pub fn seed(&self, zone: &str, name: &str, labels: Value) {
        self.with(|s| {
            let vm = new_vm(s, zone, name, labels);
            s.instances
                .entry(zone.into())
                .or_default()
                .insert(name.into(), vm);
        });
    }

    /// `(zone, name)` of every VM.
    pub fn vms(&self) -> Vec<(String, String)> {
        self.with(|s| {
            s.instances
                .iter()
                .flat_map(|(z, vms)| vms.keys().map(move |n| (z.clone(), n.clone())))
                .collect()
        })
    }

    /// The VM `name` in `zone`.
    pub fn vm(&self, zone: &str, name: &str) -> Option<Value> {
        self.with(|s| s.instances.get(zone).and_then(|z| z.get(name)).cloned())
    }

    /// Compute calls whose `METHOD path` starts with `prefix`.
    pub fn requests_starting(&self, prefix: &str) -> Vec<String> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.starts_with(prefix))
                .cloned()
                .collect()
        })
    }
}

impl Drop for FakeGce {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

struct Shared {
    state: Arc<Mutex<State>>,
    url: String,
    decoding: DecodingKey,
}

fn new_vm(state: &mut State, zone: &str, name: &str, labels: Value) -> Value {
    state.next_id += 1;
    json!({
        "kind": "compute#instance",
        "id": (5_000_000_000u64 + state.next_id).to_string(),
        "name": name,
        "zone": format!("projects/test-project/zones/{zone}"),
        "status": "RUNNING",
        "creationTimestamp": chrono::Utc::now().to_rfc3339(),
        "labels": labels,
    })
}

fn issue(state: &mut State) -> HttpResponse {
    state.tokens_issued += 1;
    let token = format!("ya29.fake-{}-{}", state.tokens_issued, uuid::Uuid::new_v4());
    let lifetime = state.token_lifetime;
    state.tokens.insert(
        token.clone(),
        Instant::now() + std::time::Duration::from_secs(lifetime),
    );
    HttpResponse::Ok().json(json!({
        "access_token": token, "expires_in": lifetime, "token_type": "Bearer"
    }))
}

/// Counts a token request; the scripted failure it gets, if any.
fn token_failure(state: &mut State) -> Option<HttpResponse> {
    state.token_requests += 1;
    let status = state.token_fail_next.pop_front()?;
    Some(
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"))
            .json(json!({"error": "scripted failure"})),
    )
}

async fn token(
    shared: web::Data<Shared>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    if let Some(failure) = token_failure(&mut shared.state.lock().expect("state")) {
        return failure;
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"}));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", shared.url)]);
    validation.set_issuer(&[SERVICE_ACCOUNT]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let assertion = form
        .get("assertion")
        .map(String::as_str)
        .unwrap_or_default();
    match jsonwebtoken::decode::<Value>(assertion, &shared.decoding, &validation) {
        Ok(data) if data.claims["scope"] == "https://www.googleapis.com/auth/compute" => {
            issue(&mut shared.state.lock().expect("state"))
        }
        _ => HttpResponse::BadRequest().json(json!({"error": "invalid_grant"})),
    }
}

/// The metadata server's answer to a request without `Metadata-Flavor: Google`, if it lacks it.
fn without_metadata_flavor(request: &HttpRequest) -> Option<HttpResponse> {
    request
        .headers()
        .get("Metadata-Flavor")
        .is_none_or(|v| v != "Google")
        .then(|| HttpResponse::Forbidden().body("Missing Metadata-Flavor:Google header."))
}

async fn metadata_token(shared: web::Data<Shared>, request: HttpRequest) -> HttpResponse {
    if let Some(refused) = without_metadata_flavor(&request) {
        return refused;
    }
    let mut state = shared.state.lock().expect("state");
    if let Some(failure) = token_failure(&mut state) {
        return failure;
    }
    issue(&mut state)
}

async fn metadata_attribute(
    shared: web::Data<Shared>,
    request: HttpRequest,
    key: web::Path<String>,
) -> HttpResponse {
    if let Some(refused) = without_metadata_flavor(&request) {
        return refused;
    }
    let state = shared.state.lock().expect("state");
    let value = state
        .metadata_of
        .as_ref()
        .and_then(|(zone, name)| state.instances.get(zone)?.get(name))
        .and_then(|vm| metadata_item(vm, &key));
    match value {
        Some(value) => HttpResponse::Ok()
            .content_type("application/text")
            .body(value),
        None => HttpResponse::NotFound().body("The requested URL was not found on this server."),
    }
}

/// The value of the metadata item `key` of `vm`.
fn metadata_item(vm: &Value, key: &str) -> Option<String> {
    vm["metadata"]["items"]
        .as_array()?
        .iter()
        .find(|item| item["key"] == key)
        .and_then(|item| item["value"].as_str())
        .map(str::to_owned)
}

fn error(status: u16, reason: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"))
        .json(json!({"error": {"code": status, "message": message,
            "errors": [{"reason": reason, "message": message, "domain": "global"}]}}))
}

fn query(request: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

/// `(labels.k = "v") AND (status = "UP")`: the fields (dotted paths) and the values.
fn filter_terms(filter: &str) -> Vec<(String, String)> {
    filter
        .split(" AND ")
        .filter_map(|part| {
            let part = part.trim().trim_start_matches('(').trim_end_matches(')');
            let (key, value) = part.split_once(" = ")?;
            Some((
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

/// Whether `resource` matches every term of `filter`.
fn matches(resource: &Value, filter: &[(String, String)]) -> bool {
    filter.iter().all(|(path, value)| {
        path.split('.')
            .try_fold(resource, |v, key| v.get(key))
            .is_some_and(|found| found == value.as_str())
    })
}

/// The window of a listing of `total` items this page shows: first item, count, and the next
/// page's token.
fn page_window(
    state: &State,
    query: &HashMap<String, String>,
    total: usize,
) -> (usize, usize, Option<String>) {
    let size = query
        .get("maxResults")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(500)
        .min(state.page_size.unwrap_or(usize::MAX))
        .max(1);
    let start = query
        .get("pageToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let next = (start + size < total).then(|| format!("page-{}", start + size));
    (start, size, next)
}

async fn compute(
    shared: web::Data<Shared>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let mut state = shared.state.lock().expect("state");
    let state = &mut *state;
    let path = request.path().to_owned();
    state.requests.push(format!(
        "{} {path}?{}",
        request.method(),
        request.query_string()
    ));
    let bearer = request
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let now = Instant::now();
    let live = bearer
        .and_then(|t| state.tokens.get(t))
        .is_some_and(|expiry| now < *expiry);
    if !live {
        state.unauthorized += 1;
        return error(
            401,
            "authError",
            "Request had invalid authentication credentials.",
        );
    }
    if let Some(status) = state.fail_next.pop_front() {
        return error(status, "backendError", "scripted failure");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().as_str().to_owned();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["compute", "v1", "projects", _, "aggregated", "instances"]) => {
            aggregated(state, &query(&request))
        }
        ("GET", ["compute", "v1", "projects", project, "zones"]) => {
            zones(state, project, &query(&request))
        }
        ("POST", ["compute", "v1", "projects", _, "zones", zone, "instances"]) => {
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "invalid", "body is not JSON");
            };
            let q = query(&request);
            let (Some(template), Some(request_id)) =
                (q.get("sourceInstanceTemplate"), q.get("requestId"))
            else {
                return error(400, "required", "sourceInstanceTemplate and requestId");
            };
            if let Some(first) = state
                .request_ids
                .get(request_id)
                .and_then(|name| state.operations.get(name))
            {
                let first = first.clone();
                state.replayed_requests += 1;
                return HttpResponse::Ok().json(first);
            }
            let template = template.rsplit('/').next().unwrap_or_default().to_owned();
            let (operation, created) = match insert(state, zone, &template, body) {
                Ok(inserted) => inserted,
                Err(refused) => return *refused,
            };
            if let Some(name) = created {
                boot(&shared.state, state, zone, &name);
            }
            let name = operation["name"].as_str().unwrap_or_default().to_owned();
            state.request_ids.insert(request_id.clone(), name);
            match state.lose_next_insert_answer.take() {
                Some(lost) => error(lost, "backendError", "scripted lost answer"),
                None => HttpResponse::Ok().json(operation),
            }
        }
        ("GET", ["compute", "v1", "projects", _, "zones", zone, "instances", name]) => {
            match state.instances.get(*zone).and_then(|z| z.get(*name)) {
                Some(vm) => HttpResponse::Ok().json(vm),
                None => error(404, "notFound", "The resource was not found"),
            }
        }
        ("DELETE", ["compute", "v1", "projects", _, "zones", zone, "instances", name]) => {
            let zone = (*zone).to_owned();
            state.stop_guest(&zone, name);
            if state
                .instances
                .get_mut(&zone)
                .and_then(|z| z.remove(*name))
                .is_none()
            {
                return error(404, "notFound", "The resource was not found");
            }
            let operation = operation(state, &zone, "delete", None);
            HttpResponse::Ok().json(operation)
        }
        ("GET", ["compute", "v1", "projects", _, "zones", _, "operations", name]) => {
            match state.operations.get(*name) {
                Some(op) => HttpResponse::Ok().json(op),
                None => error(404, "notFound", "The resource was not found"),
            }
        }
        _ => error(404, "notFound", "no such API"),
    }
}

/// A new operation; it is `DONE` at its first poll unless its zone is slow.
fn operation(state: &mut State, zone: &str, kind: &str, error: Option<Value>) -> Value {
    state.next_id += 1;
    let name = format!("operation-{}-{kind}", state.next_id);
    let slow = state.slow_zones.contains(zone);
    let mut done = json!({
        "kind": "compute#operation", "name": name, "operationType": kind,
        "zone": format!("projects/test-project/zones/{zone}"),
        "status": if slow { "RUNNING" } else { "DONE" },
    });
    if let Some(error) = error {
        done["error"] = error;
    }
    state.operations.insert(name, done.clone());
    done["status"] = json!("PENDING");
    done.as_object_mut().expect("object").remove("error");
    done
}

/// The operation, and the name of the VM created; or the refusal.
fn insert(
    state: &mut State,
    zone: &str,
    template: &str,
    body: Value,
) -> Result<(Value, Option<String>), Box<HttpResponse>> {
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return Err(Box::new(error(400, "required", "name")));
    };
    state.inserts.push(body.clone());
    state.insert_times.push(Instant::now());
    if state
        .instances
        .get(zone)
        .is_some_and(|z| z.contains_key(&name))
    {
        return Err(Box::new(error(
            409,
            "alreadyExists",
            "The resource already exists",
        )));
    }
    let key = (zone.to_owned(), template.to_owned());
    let failure = if state.no_capacity.contains(&key) {
        let stockout: Value =
            serde_json::from_str(include_str!("../fixtures/gce/operation-stockout.json"))
                .expect("fixture");
        Some(stockout["error"].clone())
    } else {
        state
            .failing
            .get(&key)
            .map(|code| json!({"errors": [{"code": code, "message": "scripted operation error"}]}))
    };
    let created = failure.is_none().then(|| name.clone());
    if failure.is_none() {
        let mut vm = new_vm(state, zone, &name, body["labels"].clone());
        vm["metadata"] = body["metadata"].clone();
        vm["scheduling"] = body["scheduling"].clone();
        vm["tags"] = body["tags"].clone();
        vm["sourceInstanceTemplate"] = json!(template);
        state
            .instances
            .entry(zone.to_owned())
            .or_default()
            .insert(name, vm);
    }
    Ok((operation(state, zone, "insert", failure), created))
}

fn aggregated(state: &State, query: &HashMap<String, String>) -> HttpResponse {
    let wanted = filter_terms(query.get("filter").map(String::as_str).unwrap_or_default());
    let matching: Vec<(&String, &Value)> = state
        .instances
        .iter()
        .flat_map(|(zone, vms)| vms.values().map(move |vm| (zone, vm)))
        .filter(|(_, vm)| matches(vm, &wanted))
        .collect();
    let (start, size, next) = page_window(state, query, matching.len());
    let mut items: BTreeMap<String, Value> = BTreeMap::new();
    for zone in state.instances.keys() {
        items.insert(
            format!("zones/{zone}"),
            json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "none"}}),
        );
    }
    for (zone, vm) in matching.iter().skip(start).take(size) {
        let scope = items.entry(format!("zones/{zone}")).or_insert(json!({}));
        if scope.get("instances").is_none() {
            *scope = json!({"instances": []});
        }
        scope["instances"]
            .as_array_mut()
            .expect("array")
            .push((*vm).clone());
    }
    let mut answer = json!({"kind": "compute#instanceAggregatedList", "items": items});
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    HttpResponse::Ok().json(answer)
}

/// `zones.list`: the project's zones that match the filter, a page of them.
fn zones(state: &State, project: &str, query: &HashMap<String, String>) -> HttpResponse {
    let wanted = filter_terms(query.get("filter").map(String::as_str).unwrap_or_default());
    let api = "https://www.googleapis.com/compute/v1";
    let matching: Vec<Value> = state
        .zones
        .iter()
        .map(|(name, status)| {
            let region = name.rsplit_once('-').map_or(name.as_str(), |(r, _)| r);
            json!({
                "kind": "compute#zone",
                "name": name,
                "status": status,
                "region": format!("{api}/projects/{project}/regions/{region}"),
                "selfLink": format!("{api}/projects/{project}/zones/{name}"),
            })
        })
        .filter(|zone| matches(zone, &wanted))
        .collect();
    let (start, size, next) = page_window(state, query, matching.len());
    let page: Vec<&Value> = matching.iter().skip(start).take(size).collect();
    let mut answer = json!({"kind": "compute#zoneList", "items": page});
    if let Some(next) = next {
        answer["nextPageToken"] = json!(next);
    }
    HttpResponse::Ok().json(answer)
}

/// Starts the guest of the new VM `name` in `zone`, if guests run.
fn boot(shared: &Arc<Mutex<State>>, state: &mut State, zone: &str, name: &str) {
    if !state.run_runners {
        return;
    }
    let key = (zone.to_owned(), name.to_owned());
    let Some(vm) = state.instances.get(zone).and_then(|z| z.get(name)) else {
        return;
    };
    let template = vm["sourceInstanceTemplate"].as_str().unwrap_or_default();
    if state.guests.contains_key(&key) || state.never_boot.contains(template) {
        return;
    }
    let item = |key: &str| metadata_item(vm, key);
    let (Some(jit), true) = (item(JIT_CONFIG_KEY), item("startup-script").is_some()) else {
        return;
    };
    let env = RunnerEnv {
        jit_config: jit.into(),
        name: Some(name.to_owned()),
        flavor: vm["labels"]["flavor"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        labels: String::new(),
        manager_id: vm["labels"]["manager-id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let shared = shared.clone();
    let (zone, name) = key.clone();
    let guest = actix_web::rt::spawn(async move {
        let code = fake_runner::run_until_done(&env).await;
        // The startup script powers the VM off once the runner has exited.
        let mut state = shared.lock().expect("state");
        if let Some(vm) = state
            .instances
            .get_mut(&zone)
            .and_then(|z| z.get_mut(&name))
        {
            vm["status"] = json!("TERMINATED");
        }
        state.guests.remove(&(zone, name.clone()));
        state.guest_exits.push((name, code));
    });
    state.guests.insert(key, guest);
}
