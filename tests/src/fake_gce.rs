//! A fake Google Compute Engine API for the `gce` backend's tests, started in-process on
//! `127.0.0.1:0`, with a fake OAuth token endpoint and a fake metadata server on the same port.
//!
//! - `POST /token`: the service-account JWT grant; the assertion's RS256 signature is checked
//!   against the test-only public key (`tests/fixtures/github-app/`), with its `aud` (this
//!   endpoint), `scope` (Compute) and `iss`.
//! - `GET /computeMetadata/v1/instance/service-accounts/default/token`: 403 without
//!   `Metadata-Flavor: Google`.
//! - Compute: zone instances (`insert` with `sourceInstanceTemplate` and `requestId`, `get`,
//!   `delete`; 409 on a name taken in the zone, 404 on an unknown one), zone operations,
//!   `aggregated/instances` with a label filter (`labels.k = "v"` joined by `AND`) and pages
//!   (`maxResults`, capped by [`FakeGce::set_page_size`], `pageToken`). Every Compute call needs a
//!   token the fake issued and has not revoked (401 otherwise).
//! - Controls: capacity errors inside the operation for chosen zone/template pairs
//!   ([`FakeGce::no_capacity`]), any other operation error ([`FakeGce::fail_inserts`]), slow
//!   zones whose operations never finish ([`FakeGce::slow_zone`]), Spot preemption or a
//!   powered-off runner ([`FakeGce::terminate`]), answers of 5xx or 429 ([`FakeGce::fail_next`]),
//!   token revocation ([`FakeGce::revoke_tokens`]).
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
    tokens: HashSet<String>,
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
    /// `(VM name, exit code)` of every guest runner that has exited.
    pub guest_exits: Vec<(String, i32)>,
    run_runners: bool,
    never_boot: HashSet<String>,
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
        let state = Arc::new(Mutex::new(State::default()));
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

    /// VMs created from now on run a runner with their JIT configuration and power off when
    /// it exits.
    pub fn run_runners(&self) {
        self.with(|s| s.run_runners = true);
    }

    /// VMs from `template` boot into nothing: their runner never registers.
    pub fn never_boot(&self, template: &str) {
        self.with(|s| s.never_boot.insert(template.into()));
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
    state.tokens.insert(token.clone());
    HttpResponse::Ok().json(json!({
        "access_token": token, "expires_in": 3599, "token_type": "Bearer"
    }))
}

async fn token(
    shared: web::Data<Shared>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
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

async fn metadata_token(shared: web::Data<Shared>, request: HttpRequest) -> HttpResponse {
    if request
        .headers()
        .get("Metadata-Flavor")
        .is_none_or(|v| v != "Google")
    {
        return HttpResponse::Forbidden().body("Missing Metadata-Flavor:Google header.");
    }
    issue(&mut shared.state.lock().expect("state"))
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

/// `(labels.k = "v") AND (labels.k2 = "v2")`.
fn label_filter(filter: &str) -> Vec<(String, String)> {
    filter
        .split(" AND ")
        .filter_map(|part| {
            let part = part.trim().trim_start_matches('(').trim_end_matches(')');
            let (key, value) = part.split_once(" = ")?;
            Some((
                key.trim().strip_prefix("labels.")?.to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
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
    if !bearer.is_some_and(|t| state.tokens.contains(t)) {
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
        ("POST", ["compute", "v1", "projects", _, "zones", zone, "instances"]) => {
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "invalid", "body is not JSON");
            };
            let q = query(&request);
            let (Some(template), Some(_)) = (q.get("sourceInstanceTemplate"), q.get("requestId"))
            else {
                return error(400, "required", "sourceInstanceTemplate and requestId");
            };
            let template = template.rsplit('/').next().unwrap_or_default().to_owned();
            let (answer, created) = insert(state, zone, &template, body);
            if let Some(name) = created {
                boot(&shared.state, state, zone, &name);
            }
            answer
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

/// The answer, and the name of the VM created.
fn insert(
    state: &mut State,
    zone: &str,
    template: &str,
    body: Value,
) -> (HttpResponse, Option<String>) {
    let Some(name) = body["name"].as_str().map(str::to_owned) else {
        return (error(400, "required", "name"), None);
    };
    state.inserts.push(body.clone());
    state.insert_times.push(Instant::now());
    if state
        .instances
        .get(zone)
        .is_some_and(|z| z.contains_key(&name))
    {
        return (
            error(409, "alreadyExists", "The resource already exists"),
            None,
        );
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
        vm["sourceInstanceTemplate"] = json!(template);
        state
            .instances
            .entry(zone.to_owned())
            .or_default()
            .insert(name, vm);
    }
    (
        HttpResponse::Ok().json(operation(state, zone, "insert", failure)),
        created,
    )
}

fn aggregated(state: &State, query: &HashMap<String, String>) -> HttpResponse {
    let wanted = label_filter(query.get("filter").map(String::as_str).unwrap_or_default());
    let matching: Vec<(&String, &Value)> = state
        .instances
        .iter()
        .flat_map(|(zone, vms)| vms.values().map(move |vm| (zone, vm)))
        .filter(|(_, vm)| wanted.iter().all(|(k, v)| vm["labels"][k] == v.as_str()))
        .collect();
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
    if start + size < matching.len() {
        answer["nextPageToken"] = json!(format!("page-{}", start + size));
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
    let item = |key: &str| {
        vm["metadata"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|item| item["key"] == key)
            .and_then(|item| item["value"].as_str())
            .map(str::to_owned)
    };
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
