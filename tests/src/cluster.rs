//! Clusters of the real servers on this machine, beside the shared ones: the 3-node RabbitMQ
//! cluster of `scripts/rabbitmq-cluster.sh` ([`RabbitCluster`]) and the PostgreSQL primary and
//! synchronous standby of `scripts/postgres-pair.sh` ([`PostgresPair`]). The scripts are
//! idempotent: the first test (or benchmark) that needs a cluster starts it, later ones find
//! it running. Their nodes are stopped and started through the same scripts.

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

/// Runs `scripts/NAME ARGS...` to its end; its standard output, trimmed. Fails the test with
/// what it printed when it fails.
async fn run_script(name: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new("bash")
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

/// The 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`), nodes 1 to 3.
pub struct RabbitCluster {
    urls: String,
}

impl RabbitCluster {
    /// Starts the nodes that are down and joins them; returns once all three run together.
    pub async fn up() -> Self {
        run_script("rabbitmq-cluster.sh", &["up"]).await;
        let urls = run_script("rabbitmq-cluster.sh", &["urls"]).await;
        Self { urls }
    }

    /// The AMQP URLs of the three nodes, comma-separated (a `RABBITMQ_CONNECT_STRING`).
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// Kills node `node` (1-3), as a crash of its machine would end it.
    pub async fn stop(&self, node: u8) {
        run_script("rabbitmq-cluster.sh", &["stop", &node.to_string()]).await;
    }

    /// Starts node `node` again and waits until it has rejoined.
    pub async fn start(&self, node: u8) {
        run_script("rabbitmq-cluster.sh", &["start", &node.to_string()]).await;
    }

    /// The node that leads quorum queue `queue`.
    pub async fn leader(&self, queue: &str) -> u8 {
        let node = run_script("rabbitmq-cluster.sh", &["leader", queue]).await;
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

/// The PostgreSQL primary and its synchronous standby (`scripts/postgres-pair.sh`).
pub struct PostgresPair {
    url: String,
}

impl PostgresPair {
    /// A primary with a synchronous standby, rebuilt from scratch unless it is running as that
    /// (a failover test leaves the standby promoted and alone).
    pub async fn up() -> Self {
        run_script("postgres-pair.sh", &["up"]).await;
        let url = run_script("postgres-pair.sh", &["url"]).await;
        Self { url }
    }

    /// The URL of the `postgres` database naming both servers, read-write sessions only.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the primary as a crash would (immediate shutdown).
    pub async fn crash_primary(&self) {
        run_script("postgres-pair.sh", &["crash"]).await;
    }

    /// Promotes the standby to primary.
    pub async fn promote_standby(&self) {
        run_script("postgres-pair.sh", &["promote"]).await;
    }
}
