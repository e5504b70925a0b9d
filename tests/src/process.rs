//! Running the services' real binaries (built by `cargo build --workspace --bins`, which
//! `make test` does before the tests).

use std::path::PathBuf;

/// Path of a workspace binary next to the running test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("target directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A service binary running as a child process; killed if dropped while running. Its log
/// (stderr) is read continuously in the background, so a chatty service never blocks on a full
/// pipe, and every line is kept for [`Service::wait_for_log`].
pub struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Number of lines read so far; closed when the log ends.
    count: watch::Receiver<usize>,
}

impl Service {
    /// Starts `binary` with `args` and exactly the environment `vars` (plus `PATH`, and
    /// `RUST_LOG=info` unless given).
    pub fn spawn(binary: &str, args: &[&str], vars: &[(&str, &str)]) -> Self {
        Self::spawn_path(self::binary(binary), args, vars)
    }

    /// Like [`Service::spawn`], with the release build of `binary` (benchmarks).
    pub fn spawn_release(binary: &str, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let path = self::binary(binary);
        let release = path
            .parent()
            .and_then(|dir| dir.parent())
            .map(|target| target.join("release").join(binary))
            .filter(|p| p.exists())
            .unwrap_or(path);
        Self::spawn_path(release, args, vars)
    }

    fn spawn_path(path: PathBuf, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let mut command = Command::new(path);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn service binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut all = sink.lock().unwrap();
                all.push(line);
                count_tx.send_replace(all.len());
            }
            // Dropping count_tx closes the channel: the log has ended.
        });
        Self {
            child,
            lines,
            count,
        }
    }

    /// The first log line containing `needle` (already logged or still to come); fails the
    /// test after `limit` or if the process ends first, showing what it logged.
    pub async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let find = |lines: &Arc<Mutex<Vec<String>>>| {
            lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(needle))
                .cloned()
        };
        let lines = self.lines.clone();
        let mut count = self.count.clone();
        let search = async {
            loop {
                if let Some(line) = find(&lines) {
                    return Some(line);
                }
                if count.changed().await.is_err() {
                    return find(&lines);
                }
            }
        };
        match tokio::time::timeout(limit, search).await {
            Ok(Some(line)) => line,
            outcome => panic!(
                "{} waiting for a log line with {needle:?}; the process logged:\n{}",
                if outcome.is_err() {
                    "timed out"
                } else {
                    "process ended"
                },
                self.log()
            ),
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The value of `key=` in a log line containing `needle` (e.g. the port it listens on).
    pub async fn logged_value(&mut self, needle: &str, key: &str, limit: Duration) -> String {
        let line = self.wait_for_log(needle, limit).await;
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            .to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Sends SIGKILL: the process dies at once, without any clean-up (a crash).
    pub fn kill(&self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} failed");
    }

    /// Waits for the process to exit and its log to end (a one-off command such as `planner
    /// migrate`), failing the test after `limit`; its exit status and everything it logged.
    pub async fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let mut count = self.count.clone();
        let status = crate::within(limit, "the process to exit", async {
            let status = self.child.wait().await.expect("wait for child");
            while count.changed().await.is_ok() {}
            status
        })
        .await;
        (status, self.log())
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub async fn wait(mut self, limit: Duration) -> ExitStatus {
        crate::within(limit, "the process to exit", self.child.wait())
            .await
            .expect("wait for child")
    }
}

/// Which build of a service binary to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `target/debug` (tests; `make test` builds it).
    Debug,
    /// `target/release` when built (benchmarks; `make bench` builds it), else the debug one.
    Release,
}

/// A service binary listening on port 0: the process and the URLs of its API and metrics.
pub struct Running {
    /// The process.
    pub service: Service,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// `http://127.0.0.1:<metrics port>/metrics`.
    pub metrics_url: String,
}

/// How long a service may take to start listening and connect.
const START: Duration = Duration::from_secs(30);

fn spawn_build(build: Build, binary: &str, args: &[&str], vars: &[(&str, &str)]) -> Service {
    match build {
        Build::Debug => Service::spawn(binary, args, vars),
        Build::Release => Service::spawn_release(binary, args, vars),
    }
}

/// Starts the planner (`serve` and `args`, e.g. `--no-migrate`) on `database_url`, consuming
/// the AMQP names `amqp_name` on the test broker, with the admin token
/// [`crate::planner::ADMIN_TOKEN`], the API and metrics on free ports of 127.0.0.1, and then
/// `extra` (which overrides any of those, e.g. a broker URL through a proxy or another token).
/// Returns once it listens and its consumer has started.
pub async fn start_planner(
    build: Build,
    database_url: &str,
    amqp_name: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> Running {
    let broker = crate::amqp::rabbitmq_url();
    let mut vars = vec![
        ("POSTGRESQL_DB_CONNECT_STRING", database_url),
        ("RABBITMQ_CONNECT_STRING", broker.as_str()),
        ("APP_ADMIN_TOKEN_VALUE", crate::planner::ADMIN_TOKEN),
        ("APP_AMQP_NAME", amqp_name),
        ("APP_PORT", "0"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ];
    vars.extend_from_slice(extra);
    let mut service = spawn_build(build, "planner", &[&["serve"], args].concat(), &vars);
    let (url, metrics_url) = listening(&mut service, "event=planner_listening").await;
    service.wait_for_log("event=consumer_started", START).await;
    Running {
        service,
        url,
        metrics_url,
    }
}

/// Starts the gateway publishing to the AMQP names `amqp_name` on the test broker, checking
/// signatures with [`crate::gateway::SECRET`], the API and metrics on free ports of 127.0.0.1,
/// and then `extra` (which overrides any of those). Returns once it is connected to the broker.
pub async fn start_gateway(build: Build, amqp_name: &str, extra: &[(&str, &str)]) -> Running {
    let broker = crate::amqp::rabbitmq_url();
    let mut vars = vec![
        ("RABBITMQ_CONNECT_STRING", broker.as_str()),
        ("APP_WEBHOOK_SECRET_VALUE", crate::gateway::SECRET),
        ("APP_AMQP_NAME", amqp_name),
        ("APP_PORT", "0"),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
    ];
    vars.extend_from_slice(extra);
    let mut service = spawn_build(build, "gateway", &[], &vars);
    let (url, metrics_url) = listening(&mut service, "event=gateway_listening").await;
    service.wait_for_log("event=amqp_connected", START).await;
    Running {
        service,
        url,
        metrics_url,
    }
}

/// The API and metrics URLs from the service's `..._listening` log line.
async fn listening(service: &mut Service, needle: &str) -> (String, String) {
    let port = service.logged_value(needle, "port", START).await;
    let metrics_port = service.logged_value(needle, "metrics_port", START).await;
    (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{metrics_port}/metrics"),
    )
}
