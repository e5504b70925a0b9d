//! A stand-in for GitHub's runner application, for the runner manager's tests and demo: what
//! the `fake-runner` binary runs. It reads what the manager's `exec` backend hands a runner
//! (`RUNNER_JITCONFIG`, `RUNNER_NAME`, `RUNNER_FLAVOR`, `RUNNER_LABELS`, `RUNNER_MANAGER_ID`),
//! decodes the fake GitHub's JIT configuration, connects (the runner turns online), waits
//! while idle, turns busy when the fake assigns it a job and ends when the job is done, as an
//! ephemeral runner does. The protocol is in [`crate::fake_github::runner_side`].
//!
//! Exit codes: [`EXIT_DONE`] job done; [`EXIT_TERMINATED`] SIGTERM or SIGINT;
//! [`EXIT_REMOVED`] its registration was deleted; [`EXIT_BAD_CONFIG`] the environment or the
//! configuration is wrong; [`EXIT_UNREACHABLE`] the fake cannot be reached. Each state change
//! is one log line on stderr, as the services write theirs (`docs/logging.md`:
//! `runner state event=fake_runner_state runner.name=... state=busy`); the JIT configuration is
//! never logged.

use std::time::Duration;

use actors::config::{self, ConfigError, Environment, Source};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::fake_github::runner_side::{JitPayload, CONNECT_PATH, POLL_PATH};

/// The job ran to its end.
pub const EXIT_DONE: i32 = 0;
/// The environment or the JIT configuration is wrong.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// The registration was deleted before a job came (scale-down).
pub const EXIT_REMOVED: i32 = 3;
/// The fake did not answer for [`GIVE_UP_AFTER`] attempts in a row.
pub const EXIT_UNREACHABLE: i32 = 4;
/// SIGTERM or SIGINT (128 + 15).
pub const EXIT_TERMINATED: i32 = 143;

/// Consecutive failed calls before the runner gives up.
pub const GIVE_UP_AFTER: u32 = 20;
/// How long one poll waits on the fake for a change.
pub const POLL_WAIT: Duration = Duration::from_secs(5);
/// Timeout of every call beyond the poll's own wait.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the runner is started with.
pub struct RunnerEnv {
    /// `RUNNER_JITCONFIG` (required).
    pub jit_config: SecretString,
    /// `RUNNER_NAME`: when set, must be the name the JIT configuration registered.
    pub name: Option<String>,
    /// `RUNNER_FLAVOR`, `RUNNER_LABELS`, `RUNNER_MANAGER_ID`: printed, not used.
    pub flavor: String,
    /// See `flavor`.
    pub labels: String,
    /// See `flavor`.
    pub manager_id: String,
}

impl RunnerEnv {
    /// Reads the process environment; the error names the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &str| Environment.get(name);
        Ok(Self {
            jit_config: config::required(&Environment, "RUNNER_JITCONFIG")?.into(),
            name: var("RUNNER_NAME"),
            flavor: var("RUNNER_FLAVOR").unwrap_or_default(),
            labels: var("RUNNER_LABELS").unwrap_or_default(),
            manager_id: var("RUNNER_MANAGER_ID").unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
struct Connected {
    name: String,
}

#[derive(Deserialize)]
struct Polled {
    state: String,
}

enum Call<T> {
    Answer(u16, Option<T>),
    Failed(String),
}

/// Runs the runner to its end; returns the exit code.
pub async fn run(env: RunnerEnv) -> i32 {
    // Before anything else: a SIGTERM that comes early still ends the runner cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    };
    let stop = async move {
        match signals {
            Some((mut term, mut int)) => tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        code = run_until_done(&env) => code,
        () = stop => {
            state(env.name.as_deref().unwrap_or("unknown"), "terminated");
            EXIT_TERMINATED
        }
    }
}

/// Runs the runner to its end without handling signals (a runner inside a fake VM, which is
/// stopped by dropping the future); returns the exit code.
pub async fn run_until_done(env: &RunnerEnv) -> i32 {
    let Some(payload) = JitPayload::decode(env.jit_config.expose_secret()) else {
        log::error!(
            event = "fake_runner_bad_config";
            "RUNNER_JITCONFIG is not a JIT configuration of the fake GitHub"
        );
        return EXIT_BAD_CONFIG;
    };
    let label = env
        .name
        .clone()
        .unwrap_or_else(|| payload.runner_id.to_string());
    log::info!(
        event = "fake_runner_state",
        "runner.name" = label,
        runner_id = payload.runner_id,
        flavor = env.flavor,
        labels = env.labels,
        manager_id = env.manager_id,
        state = "starting";
        "runner state"
    );
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(CALL_TIMEOUT)
        .timeout(POLL_WAIT + CALL_TIMEOUT)
        .build()
    else {
        log::error!(event = "fake_runner_bad_config"; "cannot build an HTTP client");
        return EXIT_BAD_CONFIG;
    };
    let base = payload.url.trim_end_matches('/').to_owned();
    lifecycle(&http, &base, env, &label).await
}

async fn call<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    jit: &SecretString,
) -> Call<T> {
    let sent = request
        .header("Authorization", format!("Bearer {}", jit.expose_secret()))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            Call::Answer(status, response.json::<T>().await.ok())
        }
        // Without the URL: nothing secret is in it, but lines stay short.
        Err(err) => Call::Failed(if err.is_timeout() {
            "timeout".to_owned()
        } else {
            "connection failed".to_owned()
        }),
    }
}

async fn lifecycle(http: &reqwest::Client, base: &str, env: &RunnerEnv, label: &str) -> i32 {
    let mut failures = 0;
    let mut backoff = Duration::from_millis(100);
    let mut failed = |why: String| {
        failures += 1;
        log::warn!(
            event = "fake_runner_call_failed",
            "runner.name" = label,
            error = why,
            attempt = failures;
            "call to the fake GitHub failed"
        );
        failures >= GIVE_UP_AFTER
    };
    // Connect.
    loop {
        match call::<Connected>(http.post(format!("{base}{CONNECT_PATH}")), &env.jit_config).await {
            Call::Answer(200, Some(connected)) => {
                if env
                    .name
                    .as_ref()
                    .is_some_and(|name| *name != connected.name)
                {
                    log::error!(
                        event = "fake_runner_bad_config",
                        "runner.name" = label,
                        registered = connected.name;
                        "RUNNER_NAME is not the registered name"
                    );
                    return EXIT_BAD_CONFIG;
                }
                state(label, "idle");
                break;
            }
            Call::Answer(404, _) => {
                state(label, "removed");
                return EXIT_REMOVED;
            }
            Call::Answer(status @ (401 | 409), _) => {
                log::error!(
                    event = "fake_runner_connect_refused",
                    "runner.name" = label,
                    status;
                    "the fake GitHub refused the connection"
                );
                return EXIT_BAD_CONFIG;
            }
            Call::Answer(status, _) => {
                if failed(format!("status {status}")) {
                    return EXIT_UNREACHABLE;
                }
            }
            Call::Failed(why) => {
                if failed(why) {
                    return EXIT_UNREACHABLE;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    // Wait for a job, run it, end.
    let mut last = "idle".to_owned();
    loop {
        // The fake answers when the state differs from `last`, or after the wait.
        let poll = format!(
            "{base}{POLL_PATH}?wait_ms={}&state={last}",
            POLL_WAIT.as_millis()
        );
        let retry = match call::<Polled>(http.get(&poll), &env.jit_config).await {
            Call::Answer(200, Some(Polled { state })) => {
                failures = 0;
                if state != last {
                    self::state(label, &state);
                }
                if state == "done" {
                    return EXIT_DONE;
                }
                last = state;
                false
            }
            Call::Answer(404, _) => {
                state(label, "removed");
                return EXIT_REMOVED;
            }
            Call::Answer(status, _) => {
                failures += 1;
                log::warn!(
                    event = "fake_runner_poll_failed",
                    "runner.name" = label,
                    status;
                    "poll refused"
                );
                true
            }
            Call::Failed(why) => {
                failures += 1;
                log::warn!(
                    event = "fake_runner_poll_failed",
                    "runner.name" = label,
                    error = why;
                    "poll failed"
                );
                true
            }
        };
        if failures >= GIVE_UP_AFTER {
            return EXIT_UNREACHABLE;
        }
        if retry {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Logs that the runner `label` is now in `state`.
fn state(label: &str, state: &str) {
    log::info!(
        event = "fake_runner_state",
        "runner.name" = label,
        state;
        "runner state"
    );
}
