//! The fake's self-hosted runner routes (GitHub side) and the test controls over them.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use actors::github::RunnerScope;
use serde_json::{json, Value};

use super::runner_side::JitPayload;
use super::{
    answer, header, per_page, query, rate_headers, FakeGitHub, FakeRunner, Fault, FaultAnswer,
    State,
};

#[derive(serde::Deserialize)]
struct JitRequest {
    name: String,
    runner_group_id: u64,
    labels: Vec<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted as GitHub does; the fake runs no jobs")]
    work_folder: Option<String>,
}

fn not_found() -> HttpResponse {
    answer(404, json!({"message": "Not Found"}))
}

fn runner_json(runner: &FakeRunner) -> Value {
    json!({
        "id": runner.id,
        "name": runner.name,
        "os": "linux",
        "status": if runner.online { "online" } else { "offline" },
        "busy": runner.busy,
        "ephemeral": true,
        "runner_group_id": runner.group_id,
        "labels": runner.labels.iter().enumerate().map(|(i, name)| json!({
            "id": i + 1, "name": name, "type": "custom"
        })).collect::<Vec<_>>(),
    })
}

/// `?per_page=&page=` as GitHub reads them, capped by the fake's page size.
fn paging(request: &HttpRequest, cap: usize) -> (usize, usize) {
    let query = query(request);
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    (per_page(&query, cap), page)
}

/// A page of `items` with GitHub's `Link` header (`next`, `last`).
fn page_answer(request: &HttpRequest, key: &str, items: Vec<Value>, cap: usize) -> HttpResponse {
    let (per_page, page) = paging(request, cap);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let body: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut response = HttpResponse::Ok();
    rate_headers(&mut response);
    if page < last {
        let host = header(request, "Host").unwrap_or("127.0.0.1");
        let link = |n: usize| {
            format!(
                "http://{host}{}?per_page={per_page}&page={n}",
                request.path()
            )
        };
        response.insert_header((
            "Link",
            format!(
                "<{}>; rel=\"next\", <{}>; rel=\"last\"",
                link(page + 1),
                link(last)
            ),
        ));
    }
    response.json(json!({"total_count": total, key: body}))
}

/// The runner routes, or `None` for a path that is not one.
pub(super) fn route(
    state: &mut State,
    request: &HttpRequest,
    body: &[u8],
    segments: &[&str],
    method: &str,
) -> Option<HttpResponse> {
    let (scope, rest) = match segments {
        ["orgs", org, "actions", rest @ ..] => (format!("orgs/{org}"), rest),
        ["repos", owner, repo, "actions", rest @ ..] => (format!("repos/{owner}/{repo}"), rest),
        _ => return None,
    };
    let is_org = scope.starts_with("orgs/");
    Some(match (rest, method) {
        (["runners", "generate-jitconfig"], "POST") => state.generate_jit_config(scope, body),
        (["runners"], "GET") => {
            let items = state
                .runners
                .iter()
                .filter(|r| r.scope == scope)
                .map(runner_json)
                .collect();
            page_answer(request, "runners", items, state.runner_page_size)
        }
        (["runners", id], "DELETE") => {
            let Ok(id) = id.parse::<u64>() else {
                return Some(not_found());
            };
            match state
                .runners
                .iter()
                .position(|r| r.id == id && r.scope == scope)
            {
                None => not_found(),
                Some(i) if state.runners[i].busy => answer(
                    422,
                    json!({"message": format!(
                        "Bad request - Runner \"{}\" is still running a job\"",
                        state.runners[i].name
                    )}),
                ),
                Some(i) => {
                    state.runners.remove(i);
                    let mut response = HttpResponse::NoContent();
                    rate_headers(&mut response);
                    response.finish()
                }
            }
        }
        (["runner-groups"], "GET") if is_org => {
            let items = state
                .runner_groups
                .iter()
                .map(|(id, name)| {
                    json!({
                        "id": id, "name": name, "visibility": "all",
                        "default": *id == actors::github::DEFAULT_RUNNER_GROUP_ID,
                        "inherited": false, "allows_public_repositories": false,
                        "restricted_to_workflows": false,
                    })
                })
                .collect();
            page_answer(request, "runner_groups", items, state.runner_page_size)
        }
        _ => return None,
    })
}

impl State {
    fn generate_jit_config(&mut self, scope: String, body: &[u8]) -> HttpResponse {
        let Ok(request) = serde_json::from_slice::<JitRequest>(body) else {
            return answer(422, json!({"message": "Invalid request."}));
        };
        if request.labels.is_empty() || request.labels.len() > 100 || request.name.is_empty() {
            return answer(422, json!({"message": "Validation Failed"}));
        }
        let group_known = if scope.starts_with("orgs/") {
            self.runner_groups
                .iter()
                .any(|(id, _)| *id == request.runner_group_id)
        } else {
            request.runner_group_id == actors::github::DEFAULT_RUNNER_GROUP_ID
        };
        if !group_known {
            return not_found();
        }
        if self
            .runners
            .iter()
            .any(|r| r.scope == scope && r.name == request.name)
        {
            return answer(
                409,
                json!({"message": "Already exists - A runner with the same name already exists."}),
            );
        }
        let runner = self.insert_runner(
            scope,
            &request.name,
            request.labels,
            request.runner_group_id,
            false,
        );
        let encoded = JitPayload {
            url: self.url.clone(),
            runner_id: runner.id,
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
        .encode();
        self.jit_configs.insert(encoded.clone(), runner.id);
        answer(
            201,
            json!({"runner": runner_json(&runner), "encoded_jit_config": encoded}),
        )
    }

    fn insert_runner(
        &mut self,
        scope: String,
        name: &str,
        labels: Vec<String>,
        group_id: u64,
        online: bool,
    ) -> FakeRunner {
        self.next_runner_id += 1;
        let runner = FakeRunner {
            id: self.next_runner_id,
            scope,
            name: name.to_owned(),
            labels,
            group_id,
            online,
            busy: false,
            job_started: None,
            last_seen: None,
            polling: 0,
        };
        self.runners.push(runner.clone());
        runner
    }

    /// The scripted answer for `path`, if one is due (and counts it).
    pub(super) fn fault(&mut self, path: &str) -> Option<HttpResponse> {
        let fault = self
            .faults
            .iter_mut()
            .find(|fault| fault.times > 0 && path.starts_with(&fault.prefix))?;
        fault.times -= 1;
        let answer_of = fault.answer.clone();
        self.faults.retain(|fault| fault.times > 0);
        Some(match answer_of {
            FaultAnswer::RateLimited(wait) => {
                let mut response = HttpResponse::TooManyRequests();
                response
                    .insert_header(("Retry-After", wait.as_secs().max(1).to_string()))
                    .insert_header(("X-RateLimit-Remaining", "0"));
                response.json(json!({"message": "API rate limit exceeded"}))
            }
            FaultAnswer::Status(status) => answer(status, json!({"message": "Scripted failure"})),
        })
    }

    /// The runner named `name` (in any scope).
    pub fn runner(&self, name: &str) -> Option<&FakeRunner> {
        self.runners.iter().find(|r| r.name == name)
    }

    fn runner_mut(&mut self, name: &str) -> Option<&mut FakeRunner> {
        self.runners.iter_mut().find(|r| r.name == name)
    }

    /// Turns offline (and out of its job) every connected runner silent for
    /// [`State::offline_after`].
    pub fn expire_silent(&mut self) {
        let offline_after = self.offline_after;
        for runner in &mut self.runners {
            let silent = runner.polling == 0
                && runner
                    .last_seen
                    .is_some_and(|seen| seen.elapsed() > offline_after);
            if runner.online && silent {
                runner.online = false;
                runner.busy = false;
                runner.job_started = None;
            }
        }
    }

    /// See [`FakeGitHub::assign_job`].
    pub fn assign(&mut self, name: &str) -> bool {
        match self.runner_mut(name) {
            Some(runner) if runner.online && !runner.busy => {
                runner.busy = true;
                runner.job_started = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// See [`FakeGitHub::finish_job`].
    pub fn finish(&mut self, name: &str) -> bool {
        let Some(i) = self.runners.iter().position(|r| r.name == name && r.busy) else {
            return false;
        };
        let runner = self.runners.remove(i);
        self.finished.insert(runner.id);
        true
    }

    /// Whether runner `id` ran its job to the end (GitHub then removed it).
    pub fn finished(&self, id: u64) -> bool {
        self.finished.contains(&id)
    }

    /// The runner a JIT configuration belongs to, if the fake issued it.
    pub(super) fn jit_runner(&self, encoded: &str) -> Option<u64> {
        self.jit_configs.get(encoded).copied()
    }
}

impl FakeGitHub {
    /// Adds runner group `name` (visible to every organization); returns its id.
    pub fn add_runner_group(&self, name: &str) -> u64 {
        let mut state = self.state();
        let id = state
            .runner_groups
            .iter()
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(1)
            + 1;
        state.runner_groups.push((id, name.to_owned()));
        id
    }

    /// Registers a runner directly (one another manager made, or an orphan); returns its id.
    pub fn add_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[&str],
        online: bool,
    ) -> u64 {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        let mut state = self.state();
        let id = state
            .insert_runner(
                scope.api_prefix(),
                name,
                labels,
                actors::github::DEFAULT_RUNNER_GROUP_ID,
                online,
            )
            .id;
        state.changed.notify_waiters();
        id
    }

    /// A copy of the runner named `name`.
    pub fn runner(&self, name: &str) -> Option<FakeRunner> {
        self.state().runner(name).cloned()
    }

    /// A copy of every runner.
    pub fn runners(&self) -> Vec<FakeRunner> {
        self.state().runners.clone()
    }

    fn change_runner(&self, name: &str, change: impl FnOnce(&mut FakeRunner) -> bool) -> bool {
        let mut state = self.state();
        let changed = state.runner_mut(name).is_some_and(change);
        state.changed.notify_waiters();
        changed
    }

    /// Gives the online, idle runner `name` a job: it turns busy (and its runner side answers
    /// `busy`). `false` if there is no such runner or it is offline or busy.
    pub fn assign_job(&self, name: &str) -> bool {
        let mut state = self.state();
        let done = state.assign(name);
        state.changed.notify_waiters();
        done
    }

    /// Ends the busy runner `name`'s job: as for an ephemeral runner, GitHub removes its
    /// registration, and its runner side answers `done`. `false` if it is not busy.
    pub fn finish_job(&self, name: &str) -> bool {
        let mut state = self.state();
        let done = state.finish(name);
        state.changed.notify_waiters();
        done
    }

    /// Sets runner `name` online or offline (a runner that lost its connection); online, it
    /// stays so without a runner side.
    pub fn set_online(&self, name: &str, online: bool) -> bool {
        self.change_runner(name, |runner| {
            runner.online = online;
            runner.last_seen = None;
            if !online {
                runner.busy = false;
                runner.job_started = None;
            }
            true
        })
    }

    /// GitHub down: every API route answers 503 while `down` (the runner side still works).
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// The next `times` requests under `prefix` get 429 with `Retry-After: retry_after`.
    pub fn rate_limit(&self, prefix: &str, times: usize, retry_after: Duration) {
        self.state().faults.push(Fault {
            prefix: prefix.to_owned(),
            times,
            answer: FaultAnswer::RateLimited(retry_after),
        });
    }

    /// The next `times` requests under `prefix` get `status` (a 5xx, say).
    pub fn fail(&self, prefix: &str, times: usize, status: u16) {
        self.state().faults.push(Fault {
            prefix: prefix.to_owned(),
            times,
            answer: FaultAnswer::Status(status),
        });
    }

    /// Requests answered so far whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<super::Logged> {
        self.state().requests(prefix)
    }

    /// Runs jobs without a test driving them (the demo): with `assign`, every runner that comes
    /// online idle gets a job at once; with `length`, every job (however assigned) finishes by
    /// itself that long after it started. Runs on the current actix system until the fake
    /// stops.
    pub fn auto_jobs(&self, assign: bool, length: Option<Duration>) {
        let state = self.state.clone();
        actix_web::rt::spawn(async move {
            let changed = state.lock().expect("fake state").changed.clone();
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = {
                    let mut state = state.lock().expect("fake state");
                    let now = Instant::now();
                    let idle: Vec<String> = state
                        .runners
                        .iter()
                        .filter(|r| assign && r.online && !r.busy)
                        .map(|r| r.name.clone())
                        .collect();
                    let due: Vec<String> = state
                        .runners
                        .iter()
                        .filter(|r| length.zip(r.job_started).is_some_and(|(l, t)| t + l <= now))
                        .map(|r| r.name.clone())
                        .collect();
                    for name in &idle {
                        state.assign(name);
                    }
                    for name in &due {
                        state.finish(name);
                    }
                    if !(idle.is_empty() && due.is_empty()) {
                        state.changed.notify_waiters();
                    }
                    state
                        .runners
                        .iter()
                        .filter_map(|r| Some(r.job_started? + length?))
                        .min()
                };
                match next {
                    Some(at) => {
                        let _ = tokio::time::timeout_at(at.into(), notified).await;
                    }
                    None => notified.await,
                }
            }
        });
    }

    /// Waits until `done` holds for the state, woken by every request and control change (no
    /// polling); panics naming `what` after `limit`.
    pub async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&State) -> bool) {
        let changed = self.state().changed.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.state()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out after {limit:?} waiting for {what}");
            }
        }
    }
}
