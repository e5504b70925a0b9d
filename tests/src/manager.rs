//! The runner manager as a real process for the end-to-end tests: its flavor file and exec
//! state directory in a directory of the test's own, the fake runner (`fake-runner`) as its
//! runner command, the fake GitHub as its API, the port 0 for its status API and metrics; and
//! [`Scene`], the system those tests run a manager against.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_github::{FakeGitHub, FakeRunner};
use crate::fixtures::job_payload;
use crate::planner::ADMIN_TOKEN;
use crate::process::Service;
use crate::system::System;
use crate::unique;

/// How long the manager may take to start listening.
const START: Duration = Duration::from_secs(30);

/// One `[[flavor]]` of the file.
#[derive(Debug, Clone)]
pub struct Flavor {
    /// Its name (a planner flavor).
    pub name: String,
    /// `min_runners`.
    pub min: u32,
    /// `max_runners`.
    pub max: u32,
    /// `boot_timeout`.
    pub boot_timeout: String,
    /// `max_lifetime`.
    pub max_lifetime: String,
    /// `labels` (`None`: the planner flavor's).
    pub labels: Option<Vec<String>>,
    /// `runner_group` (`None`: the default group).
    pub runner_group: Option<String>,
    /// The command (`None`: the fake runner).
    pub command: Option<Vec<String>>,
    /// The lines of `[flavor.backend]` (`None`: `kind = "exec"` with `command`).
    pub backend: Option<String>,
}

impl Flavor {
    /// A flavor `name` with `min`/`max` and generous timeouts.
    pub fn new(name: &str, min: u32, max: u32) -> Self {
        Self {
            name: name.to_owned(),
            min,
            max,
            boot_timeout: "60s".to_owned(),
            max_lifetime: "1h".to_owned(),
            labels: None,
            runner_group: None,
            command: None,
            backend: None,
        }
    }

    fn toml(&self) -> String {
        let quoted = |items: &[String]| {
            items
                .iter()
                .map(|item| format!("{item:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let command = self.command.clone().unwrap_or_else(|| {
            vec![crate::process::binary("fake-runner")
                .to_string_lossy()
                .into_owned()]
        });
        let labels = self
            .labels
            .as_ref()
            .map(|labels| format!("labels = [{}]\n", quoted(labels)))
            .unwrap_or_default();
        let runner_group = self
            .runner_group
            .as_ref()
            .map(|group| format!("runner_group = {group:?}\n"))
            .unwrap_or_default();
        let backend = self.backend.clone().unwrap_or_else(|| {
            format!(
                "kind = \"exec\"\ncommand = [{}]\nstop_grace = \"2s\"\n",
                quoted(&command)
            )
        });
        format!(
            "[[flavor]]\nname = {:?}\nmin_runners = {}\nmax_runners = {}\n{labels}{runner_group}\
             boot_timeout = {:?}\nmax_lifetime = {:?}\n[flavor.backend]\n{backend}\n",
            self.name, self.min, self.max, self.boot_timeout, self.max_lifetime,
        )
    }
}

/// A directory of the test's own for a manager's flavor file and exec state. On drop it kills
/// every runner process group recorded there (a test must not leave runners behind) and
/// removes the directory.
pub struct ManagerDir {
    path: PathBuf,
}

impl ManagerDir {
    /// A new, empty directory.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(crate::unique("manager"));
        std::fs::create_dir_all(path.join("state")).expect("create the manager directory");
        Self { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The exec state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }

    /// The process ids recorded in the state directory (every flavor).
    pub fn recorded_pids(&self) -> Vec<(i64, u64)> {
        std::fs::read_dir(self.state_dir())
            .map(|flavors| {
                flavors
                    .flatten()
                    .filter_map(|flavor| std::fs::read_dir(flavor.path()).ok())
                    .flatten()
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                    .filter_map(|record| {
                        Some((record["pid"].as_i64()?, record["start_time"].as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for ManagerDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ManagerDir {
    fn drop(&mut self) {
        for (pid, start_time) in self.recorded_pids() {
            // Only a group whose leader is still the runner recorded: pids wrap around quickly
            // on a busy machine, and a reused one may now lead an unrelated process group.
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            if pid <= 1 || manager::backend::exec::process_start_time(pid) != Some(start_time) {
                continue;
            }
            // A signal call, not the `kill` command: procps' `kill -KILL -<pgid>` has been seen
            // signalling every process of the machine (`kill(-1)`).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a manager is started with.
pub struct ManagerSetup<'a> {
    /// `APP_MANAGER_ID`.
    pub id: &'a str,
    /// `APP_PLANNER_URL`.
    pub planner_url: &'a str,
    /// `APP_PLANNER_TOKEN_VALUE`.
    pub planner_token: &'a str,
    /// `APP_GITHUB_API_URL` (the fake's).
    pub github_url: &'a str,
    /// `APP_GITHUB_PATH`.
    pub github_path: &'a str,
    /// The flavors.
    pub flavors: &'a [Flavor],
    /// Its directory.
    pub dir: &'a ManagerDir,
    /// More variables (override the above).
    pub extra: &'a [(&'a str, &'a str)],
}

/// A running manager.
pub struct Manager {
    /// The process.
    pub service: Service,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its `/metrics` URL.
    pub metrics_url: String,
    /// The token its status API accepts.
    pub token: String,
    http: reqwest::Client,
}

/// Writes the flavor file and starts `manager serve`; returns once it listens.
pub async fn start_manager(setup: &ManagerSetup<'_>) -> Manager {
    start(setup, false).await
}

/// Like [`start_manager`], with the release build (benchmarks).
pub async fn start_release_manager(setup: &ManagerSetup<'_>) -> Manager {
    start(setup, true).await
}

async fn start(setup: &ManagerSetup<'_>, release: bool) -> Manager {
    let vars = manager_env(setup);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut service = if release {
        Service::spawn_release("manager", &["serve"], &vars)
    } else {
        Service::spawn("manager", &["serve"], &vars)
    };
    let port = service
        .logged_value("event=manager_listening", "port", START)
        .await;
    let metrics_port = service
        .logged_value("event=manager_listening", "metrics_port", START)
        .await;
    Manager {
        service,
        url: format!("http://127.0.0.1:{port}"),
        metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
        token: setup.planner_token.to_owned(),
        http: crate::http_client(),
    }
}

/// Writes the flavor file of `setup`; the environment `manager serve` is started with.
pub fn manager_env(setup: &ManagerSetup<'_>) -> Vec<(String, String)> {
    let file = setup.dir.path().join(format!("{}-flavors.toml", setup.id));
    let text: String = setup.flavors.iter().map(Flavor::toml).collect();
    std::fs::write(&file, text).expect("write the flavor file");
    let file = file.to_string_lossy().into_owned();
    let state = setup.dir.state_dir().to_string_lossy().into_owned();
    let mut vars = vec![
        ("APP_MANAGER_ID", setup.id),
        ("APP_PLANNER_URL", setup.planner_url),
        ("APP_PLANNER_TOKEN_VALUE", setup.planner_token),
        ("APP_MANAGER_CONFIG", file.as_str()),
        ("APP_EXEC_STATE_DIR", state.as_str()),
        ("APP_GITHUB_APP_ID", crate::fake_github::APP_ID),
        ("APP_GITHUB_APP_INSTALLATION_ID", "777"),
        (
            "APP_GITHUB_APP_PRIVATE_KEY_VALUE",
            crate::fake_github::PRIVATE_KEY,
        ),
        ("APP_GITHUB_API_URL", setup.github_url),
        ("APP_GITHUB_PATH", setup.github_path),
        ("APP_RECONCILE_INTERVAL", "1s"),
        ("APP_PORT", "0"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ];
    vars.extend_from_slice(setup.extra);
    let mut env: Vec<(String, String)> = Vec::new();
    for (key, value) in vars {
        // Later entries (`extra`) win.
        env.retain(|(name, _)| name != key);
        env.push((key.to_owned(), value.to_owned()));
    }
    env
}

impl Manager {
    /// `GET /api/v1/runners`: every runner the manager shows.
    pub async fn runners(&self) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/api/v1/runners", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET /api/v1/runners");
        assert_eq!(response.status(), 200, "GET /api/v1/runners");
        response.json().await.expect("runners JSON")
    }

    /// The runners in `state`.
    pub async fn runners_in(&self, state: &str) -> Vec<Value> {
        self.runners()
            .await
            .into_iter()
            .filter(|runner| runner["state"] == state)
            .collect()
    }

    /// The value of the metric series `series` (e.g. `name{flavor="a",reason="ended"}`); 0 when
    /// absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .http
            .get(&self.metrics_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the counter `series` has grown by `count` (at most [`WAIT`]).
    pub async fn wait_for_more(&self, series: &str, count: f64) {
        let start = self.metric(series).await;
        crate::eventually(&format!("{count} more of {series}"), WAIT, || async {
            self.metric(series).await >= start + count
        })
        .await;
    }

    /// Waits for `count` more reconcile passes of [`FLAVOR`].
    pub async fn wait_for_passes(&self, count: f64) {
        self.wait_for_more(PASSES, count).await;
    }
}

/// The series of [`FLAVOR`]'s reconcile passes.
pub const PASSES: &str = "github_runner_manager_reconcile_duration_seconds_count{flavor=\"small\"}";

/// How long a change may take to show (creation, boot, removal).
pub const WAIT: Duration = Duration::from_secs(60);
/// The organization runners register in.
pub const ORG: &str = "acme";
/// The planner flavor of the scenes.
pub const FLAVOR: &str = "small";
/// Its job label.
pub const LABEL: &str = "x64-manager";

/// A running system, a fake GitHub and a general planner token.
pub struct Scene {
    /// The gateway and planner.
    pub system: System,
    /// The fake GitHub.
    pub fake: FakeGitHub,
    /// A planner token for the managers.
    pub token: String,
    /// A client.
    pub http: reqwest::Client,
}

impl Scene {
    /// The system, the fake GitHub, the planner flavor [`FLAVOR`] and a token.
    pub async fn start() -> Self {
        let system = System::start(None).await;
        let fake = FakeGitHub::start().await;
        let http = crate::http_client();
        let created = http
            .post(format!("{}/api/v1/flavors/{FLAVOR}", system.planner_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"platform": "github", "labels": [LABEL], "priority": 1}))
            .send()
            .await
            .expect("create flavor");
        assert_eq!(created.status(), 201);
        let token: Value = http
            .post(format!(
                "{}/api/v1/auth/token/{}",
                system.planner_url,
                unique("manager")
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("create token")
            .json()
            .await
            .expect("token JSON");
        Self {
            system,
            fake,
            token: token["token"].as_str().expect("token").to_owned(),
            http,
        }
    }

    /// Starts manager `id` with `flavors`, `dir` and `extra` variables.
    pub async fn manager(
        &self,
        id: &str,
        flavors: &[Flavor],
        dir: &ManagerDir,
        extra: &[(&str, &str)],
    ) -> Manager {
        start_manager(&ManagerSetup {
            id,
            planner_url: &self.system.planner_url,
            planner_token: &self.token,
            github_url: &self.fake.url,
            github_path: ORG,
            flavors,
            dir,
            extra,
        })
        .await
    }

    /// Sends job `id` with `action` through the gateway.
    pub async fn job(&self, id: i64, action: &str) {
        let mut body = job_payload("queued.1", id, action, &["self-hosted", LABEL]);
        let now = chrono::Utc::now().to_rfc3339();
        body["workflow_job"]["created_at"] = now.clone().into();
        body["workflow_job"]["started_at"] = now.into();
        if action == "completed" {
            body["workflow_job"]["conclusion"] = "success".into();
        }
        crate::gateway::deliver(
            &self.http,
            &self.system.gateway_url,
            &body,
            &unique("delivery"),
        )
        .await;
    }

    /// Queues the jobs `ids` through the gateway, one after the other.
    pub async fn queue(&self, ids: std::ops::RangeInclusive<i64>) {
        for id in ids {
            self.job(id, "queued").await;
        }
    }

    /// The fake's runners whose names start with `prefix`.
    pub fn registered(&self, prefix: &str) -> Vec<FakeRunner> {
        self.fake
            .runners()
            .into_iter()
            .filter(|runner| runner.name.starts_with(prefix))
            .collect()
    }

    /// Waits until `count` runners named `prefix...` are online in the fake; returns them.
    pub async fn online(&self, prefix: &str, count: usize) -> Vec<FakeRunner> {
        self.fake
            .wait_until(
                &format!("{count} runners {prefix}* online"),
                WAIT,
                |state| {
                    state
                        .runners
                        .iter()
                        .filter(|r| r.name.starts_with(prefix) && r.online)
                        .count()
                        == count
                },
            )
            .await;
        self.registered(prefix)
            .into_iter()
            .filter(|runner| runner.online)
            .collect()
    }
}

/// The `name`s of the status API's runners.
pub fn names(runners: &[Value]) -> BTreeSet<String> {
    runners
        .iter()
        .map(|runner| runner["name"].as_str().expect("name").to_owned())
        .collect()
}
