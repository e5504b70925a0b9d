//! The startup script every gce runner VM gets (`manager/gce/startup.sh`), run with bash as the
//! VM would run it: it reads the JIT configuration from the (fake) metadata server, hands it to
//! the runner in its environment only, and powers the VM off once the runner has exited. `sudo`,
//! `systemctl`, `shutdown`, `poweroff` and the runner's `run.sh` are stubs that record their
//! arguments and environment; the stub `sudo` passes on only the variables `--preserve-env`
//! names, as sudo's `env_reset` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use manager::backend::gce::STARTUP_SCRIPT;
use manager::backend::Backend;
use tests::fake_gce::FakeGce;

use crate::gce_backend::{backend, spec, ZONES};

/// The configuration `spec` gives every runner.
const JIT_CONFIG: &str = "secret-jit-config";

/// Records of one stub: its name and arguments appended to `records/<name>.argv` (one per
/// line), its environment to `records/<name>.env`, and `<name>` to `records/events`.
const RECORD: &str = r#"#!/bin/bash
set -euo pipefail
name="$(basename "$0")"
records="$(cd "$(dirname "$0")/.." && pwd)/records"
printf '%s\n' "$name" "$@" >> "${records}/${name}.argv"
env >> "${records}/${name}.env"
echo "${name}" >> "${records}/events"
"#;

/// `sudo [--preserve-env=A,B] -u USER COMMAND...`: runs COMMAND with PATH, USER and the
/// preserved variables only.
const SUDO: &str = r#"keep=" PATH "
user=""
while [ $# -gt 0 ]; do
    case "$1" in
        --preserve-env=*) keep="${keep}${1#--preserve-env=} "; keep="${keep//,/ }"; shift ;;
        -u) user="$2"; shift 2 ;;
        -*) echo "sudo stub: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
for variable in $(compgen -e); do
    case "${keep}" in
        *" ${variable} "*) ;;
        *) unset "${variable}" 2>/dev/null || true ;;
    esac
done
export USER="${user}"
exec "$@"
"#;

/// The runner: says it ended, and exits 3.
const RUN_SH: &str = r#"echo "run.sh exited" >> "${records}/events"
exit 3
"#;

fn write_stub(path: &Path, body: &str) {
    std::fs::write(path, format!("{RECORD}{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A VM's file system in a temporary directory: `bin/` (the stubs), `runner/run.sh`,
/// `records/`.
struct Vm {
    dir: PathBuf,
}

impl Vm {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(tests::unique("gce-startup"));
        for sub in ["bin", "runner", "records"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        write_stub(&dir.join("bin/sudo"), SUDO);
        for command in ["systemctl", "shutdown", "poweroff"] {
            write_stub(&dir.join("bin").join(command), "exit 0\n");
        }
        write_stub(&dir.join("runner/run.sh"), RUN_SH);
        Self { dir }
    }

    /// Runs the startup script with the metadata server at `metadata_url`; its exit code.
    async fn boot(&self, metadata_url: &str) -> i32 {
        let script = self.dir.join("startup.sh");
        std::fs::write(&script, STARTUP_SCRIPT).unwrap();
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let run = tokio::process::Command::new("bash")
            .arg(&script)
            .env_clear()
            .env("PATH", path)
            .env("RUNNER_DIR", self.dir.join("runner"))
            .env("RUNNER_USER", "runner")
            .env("GCE_METADATA_URL", metadata_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = tests::within(Duration::from_secs(60), "the startup script", run)
            .await
            .expect("bash runs");
        status.code().expect("the script exits")
    }

    fn record(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("records").join(file)).unwrap_or_default()
    }

    fn events(&self) -> Vec<String> {
        self.record("events").lines().map(str::to_owned).collect()
    }

    /// Every argument every stub was called with.
    fn argvs(&self) -> String {
        ["sudo", "run.sh", "systemctl", "shutdown", "poweroff"]
            .map(|name| self.record(&format!("{name}.argv")))
            .concat()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_rt::test]
async fn the_runner_gets_its_configuration_in_its_environment_and_the_vm_powers_off_after_it() {
    let fake = FakeGce::start().await;
    // The VM as the manager inserts it: its metadata holds the configuration and the script.
    let vm = backend(&fake)
        .create(spec("m1-small-5c819700"))
        .await
        .unwrap();
    fake.metadata_of(ZONES[0], &vm.name);
    let machine = Vm::new();

    let code = machine.boot(&fake.url).await;

    assert_eq!(code, 3, "the script ends with the runner's status");
    assert_eq!(
        machine.events(),
        ["sudo", "run.sh", "run.sh exited", "systemctl"],
        "the runner ran once, as the runner user, and the VM powered off after it exited"
    );
    assert_eq!(machine.record("sudo.argv").lines().nth(3), Some("runner"));
    assert_eq!(machine.record("systemctl.argv"), "systemctl\npoweroff\n");
    let runner_env = machine.record("run.sh.env");
    assert!(
        runner_env
            .lines()
            .any(|line| line == format!("ACTIONS_RUNNER_INPUT_JITCONFIG={JIT_CONFIG}")),
        "the runner's environment holds the configuration: {runner_env}"
    );
    assert!(runner_env.lines().any(|line| line == "USER=runner"));
    let argvs = machine.argvs();
    assert!(!argvs.is_empty());
    assert!(
        !argvs.contains(JIT_CONFIG),
        "the configuration is on a command line: {argvs}"
    );
    // The power-off does not inherit it either.
    assert!(!machine.record("systemctl.env").contains(JIT_CONFIG));
}

#[actix_rt::test]
async fn a_vm_without_a_configuration_powers_off_without_a_runner() {
    let fake = FakeGce::start().await;
    fake.seed(ZONES[0], "m1-small-5c819701", serde_json::json!({}));
    fake.metadata_of(ZONES[0], "m1-small-5c819701");
    let machine = Vm::new();

    let code = machine.boot(&fake.url).await;

    assert_ne!(code, 0);
    assert_eq!(machine.events(), ["systemctl"]);
}
