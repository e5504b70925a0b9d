//! Node loss: under a steady webhook load, nodes of the servers' clusters (`tests::cluster`)
//! are killed: RabbitMQ nodes (two gateway and two planner processes on a quorum queue), and
//! the PostgreSQL primary (its synchronous standby promoted). Every delivery that got a 2xx is
//! in the database exactly once, pressure equals a recount, and no process was restarted: each
//! found the surviving nodes by itself.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use std::time::Duration;

use tokio::sync::watch;

use actors::amqp::{QueueType, Topology};
use tests::amqp::TopologyGuard;
use tests::cluster::{ClusterLock, PostgresPair, RabbitCluster};
use tests::db::TestDb;
use tests::gateway::{Options, TestGateway};
use tests::process::{GatewayProcess, PlannerProcess, Service};
use tests::unique;

use super::{
    assert_all_stored_once, assert_pressure_recomputes, create_flavor, send_to, Planner, Sent,
    ADMIN,
};

/// Accepted webhooks to wait for in each phase, to show the system is making progress.
const PROGRESS: usize = 24;
/// Longest a phase may take to make that progress (a node's loss is noticed within seconds).
const PHASE: Duration = Duration::from_secs(60);

/// A load of webhooks through several gateways, one batch after the other, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// How many webhooks were accepted so far.
    accepted: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<Sent>,
}

impl Load {
    fn start(gateways: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (count, accepted) = watch::channel(0);
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = Sent::default();
            let mut batch = 0;
            while !until.load(Ordering::SeqCst) {
                let url = &gateways[batch % gateways.len()];
                send_to(url, &format!("batch{batch}"), 8, &mut sent).await;
                count.send_replace(sent.accepted.len());
                batch += 1;
            }
            sent
        });
        Self {
            stop,
            accepted,
            task,
        }
    }

    /// Waits until `PROGRESS` more webhooks than now were accepted; prints how long it took
    /// (the figures docs/scaling.md quotes, shown with --nocapture). Panics after `PHASE`
    /// with the tails of the services' logs.
    async fn progress(&self, what: &str, services: &[&Service]) {
        let started = std::time::Instant::now();
        let mut accepted = self.accepted.clone();
        let target = *accepted.borrow_and_update() + PROGRESS;
        match tokio::time::timeout(PHASE, accepted.wait_for(|count| *count >= target)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the load of webhooks ended while waiting for: {what}"),
            Err(_) => {
                let logs: Vec<String> = services.iter().map(|s| tail(&s.log())).collect();
                panic!(
                    "timed out after {PHASE:?} waiting for: {what} ({} of {PROGRESS}); the \
                     services' logs end with:\n{}",
                    *self.accepted.borrow() + PROGRESS - target,
                    logs.join("\n---\n")
                );
            }
        }
        println!("cluster: {what}: {PROGRESS} in {:?}", started.elapsed());
    }

    async fn finish(self) -> Sent {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

/// The last lines of a log, enough to see what a stuck service was doing.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[actix_rt::test]
async fn rabbitmq_node_loss_loses_no_accepted_webhook() {
    let cluster = RabbitCluster::up().await;
    let db = TestDb::new();
    create_flavor(&db);
    let topology = Topology::named(&unique("cluster")).with_queue_type(QueueType::Quorum);
    let _queues = cluster.guard(topology.clone());

    let mut planners = Vec::new();
    for _ in 0..2 {
        let running = PlannerProcess::new(db.url(), &topology.queue)
            .brokers(cluster.urls())
            .env("APP_AMQP_QUEUE_TYPE", "quorum")
            .env("APP_ADMIN_TOKEN_VALUE", ADMIN)
            .start()
            .await;
        planners.push(Planner {
            service: running.service,
            url: running.url,
        });
    }
    let mut gateways: Vec<Service> = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let running = GatewayProcess::new(&topology.queue)
            .brokers(cluster.urls())
            .env("APP_AMQP_QUEUE_TYPE", "quorum")
            .env("APP_PUBLISH_TIMEOUT", "2s")
            .start()
            .await;
        gateways.push(running.service);
        urls.push(running.url);
    }

    let watched: Vec<&Service> = gateways
        .iter()
        .chain(planners.iter().map(|p| &p.service))
        .collect();
    let load = Load::start(urls);
    load.progress("webhooks accepted before any fault", &watched)
        .await;
    // Every process connected to node 1, the first of the list; the queue was declared there,
    // so node 1 leads it too: its loss cuts every connection and forces an election.
    let first = cluster.leader(&topology.queue).await;
    cluster.stop(first).await;
    load.progress(
        "webhooks accepted without the queue's first leader",
        &watched,
    )
    .await;
    cluster.start(first).await;
    load.progress("webhooks accepted with the node back", &watched)
        .await;
    let mut second = cluster.leader(&topology.queue).await;
    if second == first {
        second = first % 3 + 1;
    }
    cluster.stop(second).await;
    load.progress("webhooks accepted without a second node", &watched)
        .await;
    cluster.start(second).await;
    load.progress("webhooks accepted with all nodes back", &watched)
        .await;
    let sent = load.finish().await;
    drop(watched);

    assert_all_stored_once(&db, &sent).await;
    for planner in &planners {
        assert_pressure_recomputes(&db, planner).await;
    }
    for service in gateways
        .iter_mut()
        .chain(planners.iter_mut().map(|p| &mut p.service))
    {
        assert!(
            service.is_running(),
            "a service exited during the node losses:\n{}",
            service.log()
        );
    }
}

#[actix_rt::test]
async fn postgres_failover_loses_nothing_acknowledged() {
    let pair = PostgresPair::up().await;
    let db = TestDb::empty_on(pair.url());
    let queues = TopologyGuard::unique();
    let name = &queues.topology().queue;
    let gateway = TestGateway::spawn(Options {
        amqp_name: Some(name.clone()),
        ..Options::default()
    })
    .await;
    // The planner migrates the empty database, then the test flavor can be created.
    let running = PlannerProcess::new(db.url(), name)
        .env("APP_ADMIN_TOKEN_VALUE", ADMIN)
        .start()
        .await;
    let mut planner = Planner {
        service: running.service,
        url: running.url,
    };
    create_flavor(&db);

    let load = Load::start(vec![gateway.url.clone()]);
    load.progress("webhooks accepted before the failover", &[&planner.service])
        .await;
    pair.crash_primary().await;
    load.progress("webhooks accepted without a primary", &[&planner.service])
        .await;
    pair.promote_standby().await;
    load.progress("webhooks accepted after the promotion", &[&planner.service])
        .await;
    let sent = load.finish().await;
    assert_eq!(sent.refused, 0, "the broker was never cut");

    // Acknowledged only after commit, committed only once the standby had it: all there.
    assert_all_stored_once(&db, &sent).await;
    assert_pressure_recomputes(&db, &planner).await;
    assert!(planner.service.is_running(), "{}", planner.service.log());
    // It lost its LISTEN connection with the primary and listens again, on the new one.
    // (Commits need not fail at all: a pool checkout waits up to 5 s for a connection, longer
    // than the promotion takes here.)
    // The re-LISTEN may still be in its backoff when the rows are all there.
    tests::eventually(
        "the planner listening again",
        Duration::from_secs(30),
        || async {
            planner
                .service
                .log()
                .matches("event=pressure_listening")
                .count()
                >= 2
        },
    )
    .await;
    gateway.stop().await;
}

/// One user of a cluster at a time: while a test holds the cluster's lock, the script's
/// commands that start or stop nodes, run by anyone else (another checkout's test run, `make
/// clusters`), wait for it, and go on once it is released.
#[actix_rt::test]
async fn a_cluster_has_one_user_at_a_time() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let lock = ClusterLock::acquire("rabbitmq-cluster.sh").await;
    let probe = std::process::Command::new("flock")
        .args(["-n", lock.path(), "true"])
        .status()
        .expect("run flock");
    assert!(!probe.success(), "the lock is not held: {probe}");

    // Node 9 does not exist: once it has the lock, `stop 9` finds nothing to stop and ends.
    let mut other = tokio::process::Command::new("bash")
        .arg(tests::cluster::script("rabbitmq-cluster.sh"))
        .args(["stop", "9"])
        .env_remove("RP_CLUSTER_LOCK_HELD")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the cluster script");
    let mut lines = BufReader::new(other.stderr.take().expect("stderr is piped")).lines();
    let line = tests::within(
        Duration::from_secs(30),
        "the script's first line",
        lines.next_line(),
    )
    .await
    .expect("read the script's stderr")
    .expect("the script said nothing");
    assert!(line.contains("waiting for another user"), "{line}");
    assert!(
        other.try_wait().expect("the script's status").is_none(),
        "the script ended while the lock was held"
    );

    drop(lock);
    let status = tests::within(Duration::from_secs(30), "the script's end", other.wait())
        .await
        .expect("the script's status");
    assert!(status.success(), "{status}");
}
