//! Clusters of the real servers on this machine, beside the shared ones: the 3-node RabbitMQ
//! cluster of `scripts/rabbitmq-cluster.sh` ([`RabbitCluster`]) and the PostgreSQL primary and
//! synchronous standby of `scripts/postgres-pair.sh` ([`PostgresPair`]). The scripts are
//! idempotent: the first test (or benchmark) that needs a cluster starts it, later ones find
//! it running. Their nodes are stopped and started through the same scripts.
//!
//! Each cluster has one user at a time on the machine: [`RabbitCluster::up`] and
//! [`PostgresPair::up`] take the cluster's lock file ([`ClusterLock`]) and hold it until the
//! value is dropped, so the test runs of several checkouts (and `make clusters`, and the
//! benchmarks) wait for each other instead of stopping nodes under each other's feet.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::Duration;

use actors::amqp::Topology;

/// How long one script call may take (a cold start of three RabbitMQ nodes takes about a
/// minute on a busy 2-core machine).
const SCRIPT: Duration = Duration::from_secs(240);

/// `scripts/NAME` of the workspace.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name)
}

/// How long a test waits for another user of a cluster to finish with it (another checkout's
/// node-loss test, or a benchmark).
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// The exclusive use of one of the clusters on this machine: a lock (`flock`) on the file its
/// script names (`SCRIPT lock-path`), which the script's own node-changing commands take too.
/// Released when dropped, or when the process ends however it ends.
pub struct ClusterLock {
    /// The script of the cluster.
    script: &'static str,
    /// The lock file, given to the script as `RP_CLUSTER_LOCK_HELD` so it does not wait for
    /// the lock its caller holds.
    path: String,
    _file: File,
}

impl ClusterLock {
    /// Takes the lock of `scripts/SCRIPT`'s cluster, waiting (up to [`LOCK_WAIT`]) while
    /// another process holds it.
    pub async fn acquire(script: &'static str) -> Self {
        let path = run_script_as(script, &["lock-path"], None).await;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("open {path}: {err}"));
        let file = match file.try_lock() {
            Ok(()) => file,
            Err(TryLockError::WouldBlock) => {
                eprintln!("cluster: waiting for another user of {script} (the holder of {path})");
                let wait = tokio::task::spawn_blocking(move || file.lock().map(|()| file));
                let what = format!("the lock of {script} ({path})");
                crate::within(LOCK_WAIT, &what, wait)
                    .await
                    .expect("lock task")
                    .unwrap_or_else(|err| panic!("lock {path}: {err}"))
            }
            Err(TryLockError::Error(err)) => panic!("lock {path}: {err}"),
        };
        Self {
            script,
            path,
            _file: file,
        }
    }

    /// Takes the lock of `scripts/SCRIPT`'s cluster as [`ClusterLock::acquire`] does, then
    /// brings the cluster up (`SCRIPT up`); the lock and the cluster's address (`SCRIPT
    /// ADDRESS`).
    async fn up(script: &'static str, address: &str) -> (Self, String) {
        let lock = Self::acquire(script).await;
        lock.run(&["up"]).await;
        let address = lock.run(&[address]).await;
        (lock, address)
    }

    /// Runs the cluster's script with `args`, as the holder of the lock.
    async fn run(&self, args: &[&str]) -> String {
        run_script_as(self.script, args, Some(&self.path)).await
    }

    /// The lock file.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Runs `scripts/NAME ARGS...` to its end; its standard output, trimmed. `held` is the lock
/// file the caller holds, if any. Fails the test with what it printed when it fails.
async fn run_script_as(name: &str, args: &[&str], held: Option<&str>) -> String {
    let mut command = tokio::process::Command::new("bash");
    if let Some(path) = held {
        command.env("RP_CLUSTER_LOCK_HELD", path);
    }
    let output = command
        .arg(script(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let what = format!("{name} {}", args.join(" "));
    let output = crate::within(SCRIPT, &what, output)
        .await
        .unwrap_or_else(|err| panic!("run {what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`), nodes 1 to 3, for this
/// process alone while the value lives.
pub struct RabbitCluster {
    urls: String,
    lock: ClusterLock,
}

impl RabbitCluster {
    /// Takes the cluster (waiting for another user to finish), starts the nodes that are down
    /// and joins them; returns once all three run together.
    pub async fn up() -> Self {
        let (lock, urls) = ClusterLock::up("rabbitmq-cluster.sh", "urls").await;
        Self { urls, lock }
    }

    /// The AMQP URLs of the three nodes, comma-separated (a `RABBITMQ_CONNECT_STRING`).
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// Kills node `node` (1-3), as a crash of its machine would end it.
    pub async fn stop(&self, node: u8) {
        self.lock.run(&["stop", &node.to_string()]).await;
    }

    /// Starts node `node` again and waits until it has rejoined.
    pub async fn start(&self, node: u8) {
        self.lock.run(&["start", &node.to_string()]).await;
    }

    /// The node that leads quorum queue `queue`.
    pub async fn leader(&self, queue: &str) -> u8 {
        let node = self.lock.run(&["leader", queue]).await;
        node.parse()
            .unwrap_or_else(|_| panic!("not a node number: {node:?}"))
    }

    /// A guard that deletes `topology` from the cluster when dropped.
    pub fn guard(&self, topology: Topology) -> ClusterTopologyGuard {
        ClusterTopologyGuard {
            urls: self.urls.clone(),
            topology,
        }
    }
}

/// Deletes a topology's queues and exchanges from the cluster on `Drop`.
pub struct ClusterTopologyGuard {
    urls: String,
    /// The guarded topology.
    pub topology: Topology,
}

impl Drop for ClusterTopologyGuard {
    fn drop(&mut self) {
        crate::amqp::delete_topology_on(&self.urls, &self.topology);
    }
}

/// The PostgreSQL primary and its synchronous standby (`scripts/postgres-pair.sh`), for this
/// process alone while the value lives.
pub struct PostgresPair {
    url: String,
    lock: ClusterLock,
}

impl PostgresPair {
    /// Takes the pair (waiting for another user to finish): a primary with a synchronous
    /// standby, rebuilt from scratch unless it is running as that (a failover test leaves the
    /// standby promoted and alone).
    pub async fn up() -> Self {
        let (lock, url) = ClusterLock::up("postgres-pair.sh", "url").await;
        Self { url, lock }
    }

    /// The URL of the `postgres` database naming both servers, read-write sessions only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the primary as a crash would (immediate shutdown).
    pub async fn crash_primary(&self) {
        self.lock.run(&["crash"]).await;
    }

    /// Promotes the standby to primary.
    pub async fn promote_standby(&self) {
        self.lock.run(&["promote"]).await;
    }
}
