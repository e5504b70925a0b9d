//! The fake's runner side: what a stand-in runner (`fake-runner`) speaks with the JIT
//! configuration it was started with, and HTTP controls for tests and the demo that run the
//! fake in another process.
//!
//! Runner side (the credential is the whole encoded JIT configuration, sent as
//! `Authorization: Bearer <encoded_jit_config>`, never in a URL):
//! - `POST /_fake/runner/connect`: the runner comes online. 200 `{"runner_id", "name",
//!   "state": "idle"}`; 401 for a configuration the fake never issued; 404 `{"state":
//!   "removed"}` when its registration was deleted; 409 when it already connected (a JIT
//!   configuration is good for one runner, once).
//! - `GET /_fake/runner/poll?wait_ms=N&state=idle|busy`: the runner's state, waiting up to `N`
//!   ms (at most [`MAX_POLL_WAIT`]) while it is still the `state` the runner knows (default
//!   `idle`). 200 `{"state": "idle" | "busy" | "done"}`; 404
//!   `{"state": "removed"}` (deregistered: the runner exits); 409 `{"state": "offline"}` before
//!   `connect`; 401 unknown.
//!
//! Controls (no authentication; the fake only listens on loopback):
//! - `GET /_fake/control/runners`: every runner `{id, scope, name, labels, online, busy}`.
//! - `POST /_fake/control/runners/{name}/assign` and `.../finish`: [`FakeGitHub::assign_job`]
//!   and [`FakeGitHub::finish_job`]; 204, or 409 when the runner is not in a state for it.
//!
//! [`FakeGitHub::assign_job`]: super::FakeGitHub::assign_job
//! [`FakeGitHub::finish_job`]: super::FakeGitHub::finish_job

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::json;

use super::{header, State};

/// Where a runner connects.
pub const CONNECT_PATH: &str = "/_fake/runner/connect";
/// Where a runner asks for its state.
pub const POLL_PATH: &str = "/_fake/runner/poll";
/// Longest wait of one poll.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// What an encoded JIT configuration of the fake holds (base64 of this as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JitPayload {
    /// The fake's base URL: where the runner side is.
    pub url: String,
    /// The runner's id.
    pub runner_id: u64,
    /// A random value that makes the configuration unguessable.
    pub token: String,
}

impl JitPayload {
    /// Decodes an encoded JIT configuration of the fake.
    pub fn decode(encoded: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(self).expect("JIT payload"))
    }
}

/// What a poll finds.
enum Found {
    Unknown,
    Removed,
    Offline,
    Idle,
    Busy,
    Done,
}

fn find(state: &State, runner_id: u64) -> Found {
    if state.finished(runner_id) {
        return Found::Done;
    }
    match state.runners.iter().find(|r| r.id == runner_id) {
        None => Found::Removed,
        Some(runner) if !runner.online => Found::Offline,
        Some(runner) if runner.busy => Found::Busy,
        Some(_) => Found::Idle,
    }
}

fn state_answer(found: &Found) -> HttpResponse {
    match found {
        Found::Unknown => HttpResponse::Unauthorized().json(json!({"message": "unknown runner"})),
        Found::Removed => HttpResponse::NotFound().json(json!({"state": "removed"})),
        Found::Offline => HttpResponse::Conflict().json(json!({"state": "offline"})),
        Found::Idle => HttpResponse::Ok().json(json!({"state": "idle"})),
        Found::Busy => HttpResponse::Ok().json(json!({"state": "busy"})),
        Found::Done => HttpResponse::Ok().json(json!({"state": "done"})),
    }
}

/// The runner side and control routes (paths under `/_fake/`).
pub(super) async fn route(
    request: &HttpRequest,
    state: &Mutex<State>,
    method: &str,
    path: &str,
) -> HttpResponse {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (segments.as_slice(), method) {
        (["_fake", "runner", "connect"], "POST") => connect(request, state),
        (["_fake", "runner", "poll"], "GET") => poll(request, state).await,
        (["_fake", "control", "runners"], "GET") => {
            let state = state.lock().expect("fake state");
            let runners: Vec<_> = state
                .runners
                .iter()
                .map(|r| {
                    json!({"id": r.id, "scope": r.scope, "name": r.name, "labels": r.labels,
                           "online": r.online, "busy": r.busy})
                })
                .collect();
            HttpResponse::Ok().json(runners)
        }
        (["_fake", "control", "runners", name, action @ ("assign" | "finish")], "POST") => {
            let mut state = state.lock().expect("fake state");
            let done = if *action == "assign" {
                state.assign(name)
            } else {
                state.finish(name)
            };
            if done {
                HttpResponse::NoContent().finish()
            } else {
                HttpResponse::Conflict().json(json!({"message": format!("cannot {action}")}))
            }
        }
        _ => HttpResponse::NotFound().json(json!({"message": "Not Found"})),
    }
}

fn runner_id(request: &HttpRequest, state: &State) -> Option<u64> {
    let encoded = header(request, "Authorization")?.strip_prefix("Bearer ")?;
    state.jit_runner(encoded)
}

fn connect(request: &HttpRequest, state: &Mutex<State>) -> HttpResponse {
    let mut state = state.lock().expect("fake state");
    let Some(id) = runner_id(request, &state) else {
        return state_answer(&Found::Unknown);
    };
    if state.connected.contains(&id) {
        return HttpResponse::Conflict().json(json!({"message": "already connected"}));
    }
    let Some(runner) = state.runners.iter_mut().find(|r| r.id == id) else {
        return state_answer(&Found::Removed);
    };
    runner.online = true;
    runner.last_seen = Some(Instant::now());
    let answer = json!({"runner_id": runner.id, "name": runner.name, "state": "idle"});
    state.connected.insert(id);
    HttpResponse::Ok().json(answer)
}

/// A poll in flight: the runner counts as connected until it ends (or is dropped when the
/// runner hangs up).
struct InFlight<'a> {
    state: &'a Mutex<State>,
    runner_id: Option<u64>,
}

impl<'a> InFlight<'a> {
    fn start(request: &HttpRequest, state: &'a Mutex<State>) -> Self {
        let runner_id = runner_id(request, &state.lock().expect("fake state"));
        let in_flight = Self { state, runner_id };
        in_flight.touch(1);
        in_flight
    }

    fn touch(&self, delta: isize) {
        let mut state = self.state.lock().expect("fake state");
        if let Some(runner) = state
            .runners
            .iter_mut()
            .find(|r| Some(r.id) == self.runner_id)
        {
            runner.polling = runner.polling.saturating_add_signed(delta);
            runner.last_seen = Some(Instant::now());
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.touch(-1);
    }
}

async fn poll(request: &HttpRequest, state: &Mutex<State>) -> HttpResponse {
    let query = super::query(request);
    let wait = query
        .get("wait_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(MAX_POLL_WAIT);
    let known = match query.get("state").map(String::as_str) {
        Some("busy") => Found::Busy,
        _ => Found::Idle,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let changed = {
        let mut state = state.lock().expect("fake state");
        state.runner_polls += 1;
        state.changed.notify_waiters();
        state.changed.clone()
    };
    let _in_flight = InFlight::start(request, state);
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let found = {
            let state = state.lock().expect("fake state");
            match runner_id(request, &state) {
                None => Found::Unknown,
                Some(id) => find(&state, id),
            }
        };
        let unchanged = matches!(
            (&found, &known),
            (Found::Idle, Found::Idle) | (Found::Busy, Found::Busy)
        );
        if !unchanged {
            return state_answer(&found);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return state_answer(&found);
        }
    }
}
