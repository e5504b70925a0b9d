//! The `exec` backend: one process (and process group) per runner, running the flavor's
//! command. The command is anything that runs a runner: the runner itself, or a wrapper that
//! starts it in docker, podman or LXD (see `docs/runner-manager.md`).
//!
//! - The command gets `RUNNER_NAME`, `RUNNER_JITCONFIG`, `RUNNER_FLAVOR`, `RUNNER_LABELS`
//!   (comma-separated) and `RUNNER_MANAGER_ID` in its environment, and of the manager's own
//!   environment only `PATH`, `HOME`, `LANG`, `TZ` and `TMPDIR`: never the manager's secrets.
//!   The JIT configuration is never on the command line, where any user can read it.
//! - It runs in a process group of its own, so deleting it reaches everything it started:
//!   SIGTERM to the group, then SIGKILL after the flavor's `stop_grace`.
//! - Each runner has a record in its flavor's directory under the state directory
//!   (`<state dir>/<flavor>/<name>.json`: name, flavor, manager id,
//!   pid, the process's start time from `/proc/<pid>/stat`, created at) and its output in
//!   `<name>.log`. A restarted manager reads the records and adopts the runners still alive; the
//!   start time tells a runner from an unrelated process that got its pid after it ended.
//!   A pending record (`<name>.pending`) is written before the process is started and removed
//!   once the record is: a manager that dies in between finds the runner again from it (by
//!   its name and the manager's id in the environment of a process group leader in `/proc`).
//! - A runner whose process has ended is listed as ended until it is deleted.
//! - A listing reads the directory, but only the records it has not read before (a record is
//!   renamed into place once and never rewritten), and tells a child this manager started and
//!   has not reaped is alive without reading `/proc`: at a thousand runners the listings of
//!   every flavor are the manager's main cost.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, Instance, RunnerSpec};

/// Variables of the manager's environment a runner command inherits; nothing else.
const INHERITED: [&str; 5] = ["PATH", "HOME", "LANG", "TZ", "TMPDIR"];
/// The extension of a runner's pending record, written before its process is started.
const PENDING: &str = "pending";
/// How often a stopping process is checked.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a SIGKILLed group may take to go.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the state directory records of one runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The runner's name.
    pub name: String,
    /// Its flavor.
    pub flavor: String,
    /// The manager that created it.
    pub manager_id: String,
    /// The process id, also the process group id.
    pub pid: i32,
    /// The process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// The exec backend of one flavor.
pub struct Exec {
    dir: PathBuf,
    manager_id: String,
    flavor: String,
    command: Vec<String>,
    stop_grace: Duration,
    inherited: Vec<(&'static str, String)>,
    /// Processes this manager started (it reaps them); adopted ones are not its children.
    children: Mutex<HashMap<String, Child>>,
    /// The records as the last listing read them.
    records: Mutex<RecordCache>,
}

/// The record files of a flavor's directory as last read, by file name, with the inode each
/// was read from (a file renamed over it is read again) and its record if it is this manager's
/// and flavor's (`None`: another's, skipped). Unreadable files are not kept: each listing tries
/// them again and says so.
#[derive(Debug, Default)]
struct RecordCache(HashMap<OsString, (u64, Option<Record>)>);

/// Why a record file was not read.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// Gone since the directory was read (a runner being deleted), or not readable.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// Not a record.
    #[error("not a record: {0}")]
    Parse(#[from] serde_json::Error),
}

impl Exec {
    /// The backend of `flavor`, recording its runners in `state_dir/<flavor>` (created if
    /// missing), so listing one flavor reads only its own records.
    pub fn new(
        state_dir: &Path,
        manager_id: &str,
        flavor: &str,
        command: Vec<String>,
        stop_grace: Duration,
    ) -> Result<Self, BackendError> {
        let dir = state_dir.join(flavor);
        let dir = dir.as_path();
        fs::create_dir_all(dir).map_err(|err| {
            BackendError::State(format!("cannot create {}: {err}", dir.display()))
        })?;
        let inherited = INHERITED
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (*name, value)))
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            manager_id: manager_id.to_owned(),
            flavor: flavor.to_owned(),
            command,
            stop_grace,
            inherited,
            children: Mutex::new(HashMap::new()),
            records: Mutex::new(RecordCache::default()),
        })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn start(&self, spec: &RunnerSpec) -> Result<Instance, BackendError> {
        let start = |err: std::io::Error| BackendError::Start(err.to_string());
        // Recorded before it exists: a manager that dies between the spawn and the record
        // finds the runner again by its pending record ([`Exec::adopt_pending`]).
        let mut record = Record {
            name: spec.name.clone(),
            flavor: spec.flavor.clone(),
            manager_id: spec.manager_id.clone(),
            pid: 0,
            start_time: 0,
            created_at: Utc::now(),
        };
        let pending = self.pending_path(&spec.name);
        self.write_file(&record, &pending, false)?;
        let unpend = || {
            let _ = fs::remove_file(&pending);
        };
        let log = fs::File::create(self.log_path(&spec.name))
            .map_err(start)
            .inspect_err(|_| unpend())?;
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env_clear()
            .envs(self.inherited.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUNNER_NAME", &spec.name)
            .env("RUNNER_JITCONFIG", spec.jit_config.expose_secret())
            .env("RUNNER_FLAVOR", &spec.flavor)
            .env("RUNNER_LABELS", spec.labels.join(","))
            .env("RUNNER_MANAGER_ID", &spec.manager_id)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(start).inspect_err(|_| unpend())?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(start).inspect_err(|_| unpend())?;
        let pid = i32::try_from(child.id()).map_err(|_| BackendError::Start("pid".into()))?;
        record.pid = pid;
        record.start_time = process_start_time(pid).unwrap_or(0);
        self.children
            .lock()
            .expect("children")
            .insert(spec.name.clone(), child);
        if let Err(err) = self.write_record(&record) {
            // Unrecorded, it could not be found again: stop it now.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            self.reap(&spec.name);
            unpend();
            return Err(err);
        }
        unpend();
        Ok(instance(&record, false))
    }

    fn pending_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{PENDING}"))
    }

    fn write_record(&self, record: &Record) -> Result<(), BackendError> {
        self.write_file(record, &self.record_path(&record.name), true)
    }

    /// Writes `record` to `path` through a partial file renamed into place; `sync`: flushed to
    /// disk first (a pending record only has to outlive the manager's process, not the host).
    fn write_file(&self, record: &Record, path: &Path, sync: bool) -> Result<(), BackendError> {
        let state = |err: std::io::Error| BackendError::State(err.to_string());
        let partial = path.with_extension("partial");
        let mut file = fs::File::create(&partial).map_err(state)?;
        file.write_all(&serde_json::to_vec(record).expect("a record serialises"))
            .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
            .map_err(state)?;
        fs::rename(&partial, path).map_err(state)
    }

    /// Finishes the pending records a manager left when it died between starting a runner and
    /// recording it: the runner is looked for in `/proc` (the leader of its own process group,
    /// with this manager's id and the runner's name in its environment) and recorded if found;
    /// the pending record is removed either way (a runner not found has ended; its GitHub
    /// registration is an orphan the reconciler deregisters).
    fn adopt_pending(&self, pending: Vec<Record>) {
        let mut found: HashMap<String, i32> = HashMap::new();
        let manager = format!("RUNNER_MANAGER_ID={}", self.manager_id);
        let flavor = format!("RUNNER_FLAVOR={}", self.flavor);
        let names: Vec<(String, &str)> = pending
            .iter()
            .map(|record| (format!("RUNNER_NAME={}", record.name), record.name.as_str()))
            .collect();
        if let Ok(processes) = fs::read_dir("/proc") {
            for entry in processes.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<i32>().ok())
                else {
                    continue;
                };
                let Ok(environ) = fs::read(entry.path().join("environ")) else {
                    continue;
                };
                let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
                let has = |var: &str| vars.contains(&var.as_bytes());
                if !has(&manager) || !has(&flavor) || process_group_of(pid) != Some(pid) {
                    continue;
                }
                for (var, name) in &names {
                    if has(var) {
                        found.insert((*name).to_owned(), pid);
                    }
                }
            }
        }
        for mut record in pending {
            if let Some(&pid) = found.get(&record.name) {
                record.pid = pid;
                record.start_time = process_start_time(pid).unwrap_or(0);
                if let Err(err) = self.write_record(&record) {
                    log::warn!(
                        event = "exec_pending_unrecorded",
                        "runner.name" = record.name,
                        error:% = err;
                        "cannot record a runner found from its pending record"
                    );
                    continue;
                }
                log::info!(
                    event = "exec_runner_adopted_pending",
                    "runner.name" = record.name,
                    pid;
                    "runner found from its pending record"
                );
            }
            let _ = fs::remove_file(self.pending_path(&record.name));
        }
    }

    /// Brings `cache` up to the directory: drops the files gone, reads the new ones, and
    /// finishes the pending records a manager that died mid-start left. A start writes and
    /// removes its pending record within one call on the listing's thread, so a listing never
    /// sees the pending record of a start under way.
    fn refresh(&self, cache: &mut RecordCache) -> Result<(), BackendError> {
        let pending = self.read_dir(cache)?;
        if !pending.is_empty() {
            self.adopt_pending(pending);
            self.read_dir(cache)?;
        }
        Ok(())
    }

    /// Brings `cache` up to the directory's records; returns this manager's pending records.
    fn read_dir(&self, cache: &mut RecordCache) -> Result<Vec<Record>, BackendError> {
        let entries = fs::read_dir(&self.dir).map_err(|err| {
            BackendError::State(format!("cannot read {}: {err}", self.dir.display()))
        })?;
        let mut known = std::mem::take(&mut cache.0);
        let mut pending: Vec<Record> = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let path = Path::new(&file_name);
            if path.extension().is_some_and(|ext| ext == PENDING) {
                // This manager's and flavor's only.
                if let Ok(Some(record)) = self.read_record(&entry.path()) {
                    pending.push(record);
                }
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let inode = entry.ino();
            let record = match known.remove(&file_name) {
                Some((read_from, record)) if read_from == inode => record,
                _ => match self.read_record(&entry.path()) {
                    Ok(record) => record,
                    Err(RecordError::Read(_)) => continue,
                    Err(err @ RecordError::Parse(_)) => {
                        log::warn!(
                            event = "exec_record_unreadable",
                            path:% = entry.path().display(),
                            error:% = err;
                            "cannot read a runner's record"
                        );
                        continue;
                    }
                },
            };
            cache.0.insert(file_name, (inode, record));
        }
        Ok(pending)
    }

    /// The record at `path` if it is this manager's and flavor's (`None`: another's).
    fn read_record(&self, path: &Path) -> Result<Option<Record>, RecordError> {
        let record: Record = serde_json::from_slice(&fs::read(path)?)?;
        Ok(
            (record.manager_id == self.manager_id && record.flavor == self.flavor)
                .then_some(record),
        )
    }

    /// Collects the exit status of a child this manager started, if it has ended.
    fn reap(&self, name: &str) {
        let mut children = self.children.lock().expect("children");
        if let Some(child) = children.get_mut(name) {
            if !matches!(child.try_wait(), Ok(None)) {
                children.remove(name);
            }
        }
    }

    /// Every runner of this manager and flavor in the directory. Reaps the children that have
    /// ended; one still running is alive as recorded (its pid cannot be reused before it is
    /// reaped), any other runner is looked up in `/proc`.
    fn instances(&self) -> Result<Vec<Instance>, BackendError> {
        let mut children = self.children.lock().expect("children");
        children.retain(|_, child| matches!(child.try_wait(), Ok(None)));
        let mut cache = self.records.lock().expect("records");
        self.refresh(&mut cache)?;
        let running_child = |record: &Record| {
            children
                .get(&record.name)
                .is_some_and(|child| i32::try_from(child.id()) == Ok(record.pid))
        };
        Ok(cache
            .0
            .values()
            .filter_map(|(_, record)| record.as_ref())
            .map(|record| instance(record, !(running_child(record) || alive(record))))
            .collect())
    }

    async fn stop(&self, name: &str) -> Result<(), BackendError> {
        let path = self.record_path(name);
        let record = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                .map_err(|err| BackendError::State(err.to_string()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(BackendError::State(err.to_string())),
        };
        if record.manager_id != self.manager_id {
            return Err(BackendError::Stop(format!(
                "{name} belongs to manager {}",
                record.manager_id
            )));
        }
        if !is_runner_pid(record.pid) {
            return Err(BackendError::State(format!(
                "{} records pid {}, which is never a runner",
                path.display(),
                record.pid
            )));
        }
        let group = Pid::from_raw(record.pid);
        // A pid now used by an unrelated process is never signalled.
        let reused = matches!(process_start_time(record.pid), Some(t) if t != record.start_time);
        if !reused {
            if alive(&record) {
                let _ = killpg(group, Signal::SIGTERM);
                if !self.wait_gone(name, &record, self.stop_grace).await {
                    log::warn!(
                        event = "exec_runner_killed",
                        "runner.name" = name,
                        grace_ms = self.stop_grace.as_millis();
                        "runner killed: still running after its grace"
                    );
                    let _ = killpg(group, Signal::SIGKILL);
                    if !self.wait_gone(name, &record, KILL_WAIT).await {
                        return Err(BackendError::Stop(format!(
                            "process {} survived SIGKILL",
                            record.pid
                        )));
                    }
                }
            }
            // Whatever else of its group remains (the leader may have ended first).
            let _ = killpg(group, Signal::SIGKILL);
        }
        self.reap(name);
        self.children.lock().expect("children").remove(name);
        for file in [path, self.log_path(name)] {
            if let Err(err) = fs::remove_file(&file) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    return Err(BackendError::State(err.to_string()));
                }
            }
        }
        Ok(())
    }

    async fn wait_gone(&self, name: &str, record: &Record, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.reap(name);
            if !alive(record) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }
}

/// Whether runners can be recorded under `dir` (`APP_EXEC_STATE_DIR`), checked with the
/// configuration so that `manager check-config` reports it: `dir` is a directory the manager
/// may write in, or does not exist yet and its nearest existing parent is one (the backend
/// creates it).
pub fn check_state_dir(dir: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    let what = if existing == dir {
        format!("{}", dir.display())
    } else {
        format!("{} (to create {})", existing.display(), dir.display())
    };
    if !existing.is_dir() {
        return Err(format!("{what} is not a directory"));
    }
    access(existing, AccessFlags::W_OK | AccessFlags::X_OK)
        .map_err(|err| format!("{what} is not writable by the manager: {err}"))
}

/// Whether a recorded pid can be a runner's process group: `killpg(0)` would signal the
/// manager's own group and `killpg(1)` every process it may signal (`kill(-1)`).
fn is_runner_pid(pid: i32) -> bool {
    pid > 1
}

fn instance(record: &Record, ended: bool) -> Instance {
    Instance {
        name: record.name.clone(),
        backend_id: record.pid.to_string(),
        created_at: record.created_at,
        ended,
    }
}

/// Whether the recorded process still runs: its pid exists, started when recorded, and is not a
/// zombie.
fn alive(record: &Record) -> bool {
    match read_stat(record.pid) {
        Some((state, start_time)) => {
            start_time == record.start_time && !matches!(state, 'Z' | 'X' | 'x')
        }
        None => false,
    }
}

/// The process group of `pid` (`/proc/<pid>/stat` field 5), if it exists.
fn process_group_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    fields_after_name(&stat)?.nth(2)?.parse().ok()
}

/// The start time of `pid` (`/proc/<pid>/stat` field 22), if it exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|(_, start)| start)
}

/// State (field 3) and start time (field 22) of `/proc/<pid>/stat`.
fn read_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The fields of a `/proc/<pid>/stat` line from field 3 (the state) on: the command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself, so fields are
/// counted after its last `)`.
fn fields_after_name(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parses a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = fields_after_name(stat)?;
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come between the state and the start time.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

impl Backend for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn create(&self, spec: RunnerSpec) -> BoxFuture<'_, Result<Instance, BackendError>> {
        async move { self.start(&spec) }.boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.stop(name).boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, BackendError>> {
        async move { self.instances() }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn state_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "manager-exec-{}-{name}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn spec(name: &str) -> RunnerSpec {
        RunnerSpec {
            name: name.to_owned(),
            flavor: "small".to_owned(),
            labels: vec!["self-hosted".into(), "x64".into()],
            jit_config: SecretString::from("jit-secret-value"),
            manager_id: "m1".to_owned(),
        }
    }

    fn shell(dir: &Path, script: &str) -> Exec {
        Exec::new(
            dir,
            "m1",
            "small",
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[test]
    fn stat_lines_are_parsed_after_the_command_name() {
        let line = "4242 (a (strange) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 \
                    1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        let own = process_start_time(std::process::id() as i32);
        assert!(own.is_some_and(|t| t > 0));
    }

    #[actix_rt::test]
    async fn runners_get_their_variables_in_the_environment_only() {
        let dir = state_dir("env");
        let backend = shell(
            &dir,
            "env | grep -E '^(RUNNER_|APP_|PATH=)' | sort > \"$RUNNER_NAME.env\"; \
             cat /proc/$$/cmdline > \"$RUNNER_NAME.cmdline\"; exec sleep 30",
        );
        let created = backend.create(spec("m1-small-aaaa0001")).await.unwrap();
        assert!(!created.ended);
        let env_file = dir.join("small/m1-small-aaaa0001.env");
        let env = wait_for_file(&env_file).await;
        assert!(env.contains("RUNNER_JITCONFIG=jit-secret-value"), "{env}");
        assert!(env.contains("RUNNER_NAME=m1-small-aaaa0001"), "{env}");
        assert!(env.contains("RUNNER_FLAVOR=small"), "{env}");
        assert!(env.contains("RUNNER_LABELS=self-hosted,x64"), "{env}");
        assert!(env.contains("RUNNER_MANAGER_ID=m1"), "{env}");
        assert!(!env.contains("APP_"), "{env}");
        let cmdline = wait_for_file(&dir.join("small/m1-small-aaaa0001.cmdline")).await;
        assert!(!cmdline.contains("jit-secret-value"));
        backend.delete("m1-small-aaaa0001").await.unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    async fn wait_for_file(path: &Path) -> String {
        for _ in 0..200 {
            if let Ok(text) = fs::read_to_string(path) {
                if text.ends_with('\n') || !text.is_empty() {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} was not written", path.display());
    }

    #[actix_rt::test]
    async fn ended_processes_are_listed_as_ended_until_deleted() {
        let dir = state_dir("ended");
        let backend = shell(&dir, "exit 0");
        backend.create(spec("m1-small-ended001")).await.unwrap();
        let mut listed = Vec::new();
        for _ in 0..200 {
            listed = backend.list().await.unwrap();
            if listed.iter().all(|i| i.ended) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(listed.len(), 1);
        assert!(listed[0].ended, "{listed:?}");
        backend.delete("m1-small-ended001").await.unwrap();
        assert!(backend.list().await.unwrap().is_empty());
        // Deleting again is not an error.
        backend.delete("m1-small-ended001").await.unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[actix_rt::test]
    async fn delete_stops_the_whole_group_and_kills_what_ignores_sigterm() {
        let dir = state_dir("group");
        // The shell ignores SIGTERM; its child sleeps in the same group.
        let backend = Exec::new(
            &dir,
            "m1",
            "small",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap '' TERM; sleep 60 & echo $! > child.pid; wait".into(),
            ],
            Duration::from_millis(300),
        )
        .unwrap();
        let created = backend.create(spec("m1-small-group001")).await.unwrap();
        let child_pid: i32 = wait_for_file(&dir.join("small/child.pid"))
            .await
            .trim()
            .parse()
            .unwrap();
        backend.delete("m1-small-group001").await.unwrap();
        let leader: i32 = created.backend_id.parse().unwrap();
        assert!(read_stat(leader).is_none_or(|(s, _)| s == 'Z'));
        // The grandchild is reparented and reaped by init; give it a moment to be gone.
        let mut gone = false;
        for _ in 0..100 {
            if read_stat(child_pid).is_none_or(|(s, _)| s == 'Z') {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the runner's child survived");
        let _ = fs::remove_dir_all(&dir);
    }

    #[actix_rt::test]
    async fn a_new_backend_adopts_live_runners_and_ignores_other_managers() {
        let dir = state_dir("adopt");
        let first = shell(&dir, "exec sleep 30");
        first.create(spec("m1-small-adopt001")).await.unwrap();
        let mut other = spec("m2-small-other001");
        other.manager_id = "m2".into();
        let second_manager = Exec::new(
            &dir,
            "m2",
            "small",
            vec!["/bin/sh".into(), "-c".into(), "exec sleep 30".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        second_manager.create(other).await.unwrap();
        drop(first);
        // A restarted manager: a new backend on the same directory.
        let restarted = shell(&dir, "exec sleep 30");
        let listed = restarted.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].name, "m1-small-adopt001");
        assert!(!listed[0].ended);
        // Deleting another manager's runner is refused.
        assert!(restarted.delete("m2-small-other001").await.is_err());
        restarted.delete("m1-small-adopt001").await.unwrap();
        second_manager.delete("m2-small-other001").await.unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[actix_rt::test]
    async fn a_reused_pid_counts_as_ended_and_is_never_signalled() {
        let dir = state_dir("reuse");
        let backend = shell(&dir, "exec sleep 30");
        // A record whose pid is this test process but with another start time.
        let record = Record {
            name: "m1-small-reused01".into(),
            flavor: "small".into(),
            manager_id: "m1".into(),
            pid: std::process::id() as i32,
            start_time: 1,
            created_at: Utc::now(),
        };
        backend.write_record(&record).unwrap();
        let listed = backend.list().await.unwrap();
        assert!(listed[0].ended, "{listed:?}");
        // Deleting it must not signal this (live) test process.
        backend.delete("m1-small-reused01").await.unwrap();
        assert!(backend.list().await.unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[actix_rt::test]
    async fn a_record_renamed_over_is_read_again_and_a_removed_one_forgotten() {
        let dir = state_dir("cache");
        let backend = shell(&dir, "exec sleep 30");
        let mut record = Record {
            name: "m1-small-cache001".into(),
            flavor: "small".into(),
            manager_id: "m2".into(),
            pid: std::process::id() as i32,
            start_time: process_start_time(std::process::id() as i32).unwrap(),
            created_at: Utc::now(),
        };
        backend.write_record(&record).unwrap();
        // Another manager's record: read, kept, not listed.
        assert!(backend.list().await.unwrap().is_empty());
        record.manager_id = "m1".into();
        backend.write_record(&record).unwrap();
        let listed = backend.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(!listed[0].ended, "{listed:?}");
        fs::remove_file(backend.record_path(&record.name)).unwrap();
        assert!(backend.list().await.unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[actix_rt::test]
    async fn a_runner_started_but_never_recorded_is_found_from_its_pending_record() {
        let dir = state_dir("pending");
        let backend = shell(&dir, "exec sleep 30");
        let pending = |name: &str| Record {
            name: name.into(),
            flavor: "small".into(),
            manager_id: "m1".into(),
            pid: 0,
            start_time: 0,
            created_at: Utc::now(),
        };
        // A manager that died between starting a runner and recording it left its pending
        // record and the runner's process (a group of its own, its variables).
        let started = pending("m1-small-pend0001");
        backend
            .write_file(&started, &backend.pending_path(&started.name), false)
            .unwrap();
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "exec sleep 30"])
            .env_clear()
            .env("RUNNER_NAME", &started.name)
            .env("RUNNER_FLAVOR", "small")
            .env("RUNNER_MANAGER_ID", "m1");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut orphan = command.spawn().unwrap();
        // And one whose process never started.
        let never = pending("m1-small-pend0002");
        backend
            .write_file(&never, &backend.pending_path(&never.name), false)
            .unwrap();
        // A start of this manager leaves no pending record.
        backend.create(spec("m1-small-normal01")).await.unwrap();
        assert!(!backend.pending_path("m1-small-normal01").exists());

        let restarted = shell(&dir, "exec sleep 30");
        let mut listed = restarted.list().await.unwrap();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["m1-small-normal01", "m1-small-pend0001"],
            "{listed:?}"
        );
        assert_eq!(listed[1].backend_id, orphan.id().to_string());
        assert!(!listed[1].ended, "{listed:?}");
        assert!(!restarted.pending_path(&started.name).exists());
        assert!(!restarted.pending_path(&never.name).exists());
        // Adopted, it is stopped as any runner is.
        restarted.delete("m1-small-pend0001").await.unwrap();
        assert!(!orphan.wait().unwrap().success());
        restarted.delete("m1-small-normal01").await.unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_dir_must_be_a_writable_directory_or_creatable_in_one() {
        let dir = state_dir("check");
        // Missing, in a writable parent: the backend creates it.
        check_state_dir(&dir.join("a/b")).unwrap();
        fs::create_dir_all(&dir).unwrap();
        check_state_dir(&dir).unwrap();
        let file = dir.join("file");
        fs::write(&file, "").unwrap();
        let err = check_state_dir(&file).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        let err = check_state_dir(&file.join("state")).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_pids_above_one_are_runner_groups() {
        for pid in [i32::MIN, -1, 0, 1] {
            assert!(!is_runner_pid(pid), "{pid}");
        }
        assert!(is_runner_pid(2));
    }

    #[actix_rt::test]
    async fn a_record_with_pid_zero_is_refused_and_nothing_is_signalled() {
        let dir = state_dir("pid-zero");
        let backend = shell(&dir, "exec sleep 30");
        let record = Record {
            name: "m1-small-pidzero1".into(),
            flavor: "small".into(),
            manager_id: "m1".into(),
            pid: 0,
            start_time: 0,
            created_at: Utc::now(),
        };
        backend.write_record(&record).unwrap();
        // killpg(0) would end this test's own process group.
        let err = backend.delete("m1-small-pidzero1").await.unwrap_err();
        assert!(err.to_string().contains("pid 0"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
