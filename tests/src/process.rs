//! Running the services' real binaries (built by `cargo build --workspace --bins`, which
//! `make test` does before the tests).

use std::path::PathBuf;

/// Path of a workspace binary next to the running test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// A service binary running as a child process; killed if dropped while running.
pub struct Service {
    child: Child,
    log: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
}

impl Service {
    /// Starts `binary` with `args` and exactly the environment `vars` (plus `PATH`, and
    /// `RUST_LOG=info` unless given).
    pub fn spawn(binary: &str, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let mut command = Command::new(self::binary(binary));
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
        Self {
            child,
            log: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        }
    }

    /// The first log line (from now on) containing `needle`; fails the test after `limit` or
    /// if the process ends first, showing what it logged.
    pub async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let search = async {
            while let Ok(Some(line)) = self.log.next_line().await {
                let found = line.contains(needle);
                self.seen.push(line.clone());
                if found {
                    return Some(line);
                }
            }
            None
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
                self.seen.join("\n")
            ),
        }
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

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit (draining its log), failing the test after `limit`.
    pub async fn wait(mut self, limit: Duration) -> ExitStatus {
        let drain = async {
            while let Ok(Some(line)) = self.log.next_line().await {
                self.seen.push(line);
            }
            self.child.wait().await.expect("wait for child")
        };
        crate::within(limit, "the process to exit", drain).await
    }
}
