//! Running the services' real binaries (built by `cargo build --workspace --bins`, which
//! `make test` does before the tests): [`PlannerProcess`] and [`GatewayProcess`] start them as
//! the tests do, [`Service`] is the running child (killed when dropped), [`run`] runs a
//! one-shot command to its end.

use std::net::SocketAddr;
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

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::env::{rabbitmq_url, rabbitmq_url_via, with_address};

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
        let mut child = command(path, args, vars)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn service binary");
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
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL: the process dies at once, without any clean-up (a crash).
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Signals this one process (a system call: no `kill` command, whose argument parsing
    /// can turn a process into every process).
    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).expect("a pid fits i32");
        assert!(pid > 1, "refusing to signal pid {pid}");
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .unwrap_or_else(|err| panic!("{signal} to {pid} failed: {err}"));
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

/// What both service binaries are started with: the build, the arguments, the environment
/// (later entries win), and the log lines to wait for before the test goes on.
struct Launch {
    build: Build,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    ready: Vec<String>,
}

impl Launch {
    /// What both services are started with: the test broker and the AMQP names `amqp_name`,
    /// the API and metrics on free ports of 127.0.0.1; ready once `ready` is logged.
    fn new(amqp_name: &str, ready: &str) -> Self {
        let mut launch = Self {
            build: Build::Debug,
            args: Vec::new(),
            vars: Vec::new(),
            ready: vec![ready.to_owned()],
        };
        launch.set("RABBITMQ_CONNECT_STRING", &rabbitmq_url());
        launch.set("APP_AMQP_NAME", amqp_name);
        launch.set("APP_PORT", "0");
        launch.set("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1");
        launch.set("OTEL_EXPORTER_PROMETHEUS_PORT", "0");
        launch
    }

    fn set(&mut self, key: &str, value: &str) {
        self.vars.retain(|(name, _)| name != key);
        self.vars.push((key.to_owned(), value.to_owned()));
    }

    /// Spawns `binary` and waits for its `listening` line (which names its ports), then for
    /// every readiness line.
    async fn start(self, binary: &str, listening: &str) -> Running {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let mut service = match self.build {
            Build::Debug => Service::spawn(binary, &args, &vars),
            Build::Release => Service::spawn_release(binary, &args, &vars),
        };
        let port = service.logged_value(listening, "port", START).await;
        let metrics_port = service.logged_value(listening, "metrics_port", START).await;
        for line in &self.ready {
            service.wait_for_log(line, START).await;
        }
        Running {
            service,
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
        }
    }
}

/// Generates the builder methods both service binaries share.
macro_rules! launch_options {
    () => {
        /// Runs the release build (benchmarks) when there is one.
        pub fn release(mut self) -> Self {
            self.launch.build = Build::Release;
            self
        }

        /// Sets the environment variable `key` (overriding the test default, e.g. `RUST_LOG`
        /// or the admin token).
        pub fn env(mut self, key: &str, value: &str) -> Self {
            self.launch.set(key, value);
            self
        }

        /// Reaches the broker through `proxy` (a [`crate::proxy::TcpProxy`]'s address).
        pub fn broker_via(mut self, proxy: SocketAddr) -> Self {
            self.launch
                .set("RABBITMQ_CONNECT_STRING", &rabbitmq_url_via(Some(proxy)));
            self
        }

        /// Also waits for a log line containing `needle` before [`Self::start`] returns.
        pub fn wait_for(mut self, needle: &str) -> Self {
            self.launch.ready.push(needle.to_owned());
            self
        }
    };
}

/// The planner binary (`planner serve`) as the tests start it: on a database and the AMQP
/// names given, the test broker, the admin token [`crate::planner::ADMIN_TOKEN`], the API and
/// metrics on free ports of 127.0.0.1. [`PlannerProcess::start`] returns once it listens and
/// its consumer has started. The in-process planner is [`crate::planner::TestPlanner`].
#[must_use]
pub struct PlannerProcess {
    database_url: String,
    launch: Launch,
}

impl PlannerProcess {
    /// The planner on `database_url`, consuming the AMQP names `amqp_name`.
    pub fn new(database_url: &str, amqp_name: &str) -> Self {
        let mut launch = Launch::new(amqp_name, "event=consumer_started");
        launch.set("POSTGRESQL_DB_CONNECT_STRING", database_url);
        launch.set("APP_ADMIN_TOKEN_VALUE", crate::planner::ADMIN_TOKEN);
        Self {
            database_url: database_url.to_owned(),
            launch,
        }
    }

    launch_options!();

    /// Adds an argument after `serve` (e.g. `--no-migrate`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.launch.args.push(arg.to_owned());
        self
    }

    /// Reaches the database through `proxy`.
    pub fn database_via(mut self, proxy: SocketAddr) -> Self {
        let url = with_address(&self.database_url, proxy);
        self.launch.set("POSTGRESQL_DB_CONNECT_STRING", &url);
        self
    }

    /// Starts it and waits until it is ready.
    pub async fn start(mut self) -> Running {
        self.launch.args.insert(0, "serve".to_owned());
        self.launch
            .start("planner", "event=planner_listening")
            .await
    }
}

/// The gateway binary as the tests start it: publishing to the AMQP names given on the test
/// broker, checking signatures with [`crate::gateway::SECRET`], the API and metrics on free
/// ports of 127.0.0.1. [`GatewayProcess::start`] returns once it is connected to the broker.
/// The in-process gateway is [`crate::gateway::TestGateway`].
#[must_use]
pub struct GatewayProcess {
    launch: Launch,
}

impl GatewayProcess {
    /// The gateway publishing to the AMQP names `amqp_name`.
    pub fn new(amqp_name: &str) -> Self {
        let mut launch = Launch::new(amqp_name, "event=amqp_connected");
        launch.set("APP_WEBHOOK_SECRET_VALUE", crate::gateway::SECRET);
        Self { launch }
    }

    launch_options!();

    /// Starts it and waits until it is ready.
    pub async fn start(self) -> Running {
        self.launch
            .start("gateway", "event=gateway_listening")
            .await
    }
}

/// Runs `binary` with `args` and exactly the environment `vars` (plus `PATH`, and
/// `RUST_LOG=info` unless given) to its end, e.g. `planner recount`; fails the test after
/// `limit`. Returns its exit status and its log (stderr).
pub async fn run(
    binary: &str,
    args: &[&str],
    vars: &[(&str, &str)],
    limit: Duration,
) -> (ExitStatus, String) {
    let output = command(self::binary(binary), args, vars)
        .stderr(Stdio::piped())
        .output();
    let output = crate::within(limit, binary, output)
        .await
        .unwrap_or_else(|err| panic!("run {binary}: {err}"));
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The command for `path` with `args` and exactly the environment `vars` (plus `PATH`, and
/// `RUST_LOG=info` unless given); no input, output discarded.
fn command(path: PathBuf, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(path);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}
