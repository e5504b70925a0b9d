//! `BENCH_ONLY=cluster`: the system on the 3-node RabbitMQ cluster of
//! `scripts/rabbitmq-cluster.sh` with quorum queues, GitHub's payloads (8 to 13 KB) throughout.
//! [`ROUNDS`] rounds of each measurement, alternating, so that a slow minute of the shared
//! machine hits both sides of a ratio; the rows give the median and every round.
//!
//! - Gateway: two release gateways on the cluster (200 only after the quorum queue's confirm: a
//!   majority of the nodes wrote it) against two minimal handlers (`minimal-webhook`:
//!   actix-web, the gateway's HMAC check, 200, nothing else), the same [`GATEWAY_JOBS`] job
//!   lives of signed webhooks from the same [`CONNECTIONS`] connections, alternating between
//!   the two servers: CPU seconds of the two server processes per webhook.
//! - Consumer: the database's ceiling measured as scenario 2 measures it, then one release
//!   planner draining [`CONSUMER_JOBS`] job lives from a pre-filled quorum queue, then two
//!   planners draining as many from another: the rate, against the ceiling, and how the two
//!   planners divided the deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::amqp::{QueueType, Topology};
use diesel::{Connection, PgConnection};

use crate::consumer::{applied, database_ceiling, insert_bench_flavor, lives, Payload};
use crate::gateway::{client, post, Signed};
use crate::measure::{median, Row, Usage};
use tests::amqp::Broker;
use tests::cluster::RabbitCluster;
use tests::db::TestDb;
use tests::process::{GatewayProcess, PlannerProcess, Running, Service};
use tests::telemetry::Scrape;

/// Rounds of each measurement.
const ROUNDS: usize = 3;
/// Jobs whose three deliveries each gateway round sends (9,000 webhooks).
const GATEWAY_JOBS: usize = 3_000;
/// Requests in flight across both servers.
const CONNECTIONS: usize = 64;
/// Jobs whose three deliveries each consumer run drains (24,000, as scenario 2).
const CONSUMER_JOBS: usize = 8_000;
/// Publisher confirms awaited at once while filling a queue.
const FILL_IN_FLIGHT: usize = 256;
/// How often the planners' counters are read while they drain.
const POLL: Duration = Duration::from_millis(50);

fn quorum_topology(what: &str) -> Topology {
    Topology::with_prefix(&tests::unique(what)).with_queue_type(QueueType::Quorum)
}

async fn gateway(cluster: &RabbitCluster, name: &str) -> Running {
    GatewayProcess::new(name)
        .release()
        .brokers(cluster.urls())
        .env("APP_AMQP_QUEUE_TYPE", "quorum")
        .env("RUST_LOG", "info,gateway::routes=warn")
        .start()
        .await
}

/// A minimal handler process and its `/webhook` URL; with `publish` (AMQP URIs and the topology
/// to publish to), one that also publishes each body and waits for the confirm.
async fn minimal(publish: Option<(&str, &Topology)>) -> (Service, String) {
    let vars = match publish {
        None => Vec::new(),
        Some((url, topology)) => vec![
            ("MINIMAL_WEBHOOK_AMQP_URL", url),
            ("MINIMAL_WEBHOOK_EXCHANGE", topology.exchange.as_str()),
            ("MINIMAL_WEBHOOK_ROUTING_KEY", topology.routing_key.as_str()),
        ],
    };
    let mut service = Service::spawn_release("minimal-webhook", &[], &vars);
    let port = service
        .logged_value(
            "event=minimal_webhook_listening",
            "port",
            Duration::from_secs(30),
        )
        .await;
    (service, format!("http://127.0.0.1:{port}/webhook"))
}

async fn planner(cluster: &RabbitCluster, db: &TestDb, name: &str) -> Running {
    PlannerProcess::new(db.url(), name)
        .release()
        .arg("--no-migrate")
        .brokers(cluster.urls())
        .env("APP_AMQP_QUEUE_TYPE", "quorum")
        .env(
            "RUST_LOG",
            "warn,planner::startup=info,planner::consumer=info",
        )
        .start()
        .await
}

/// CPU seconds used so far by the processes `pids`.
fn cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| Usage::of(*pid).cpu_seconds).sum()
}

/// What one round of webhooks through a pair of servers measured.
struct Served {
    /// Webhooks answered per second.
    rate: f64,
    /// CPU seconds of both servers per 1,000 webhooks.
    cpu_per_1000: f64,
}

/// Sends every webhook from [`CONNECTIONS`] connections, alternating between `urls`, each
/// answered 200; what the servers `pids` spent on them.
async fn serve(webhooks: &Arc<Vec<(Signed, String)>>, urls: Vec<String>, pids: &[u32]) -> Served {
    tokio::task::block_in_place(crate::measure::settle);
    let http = client(CONNECTIONS);
    let urls = Arc::new(urls);
    let cpu_before = cpu(pids);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (http, urls, next, webhooks) =
                (http.clone(), urls.clone(), next.clone(), webhooks.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((webhook, delivery)) = webhooks.get(i) else {
                        break;
                    };
                    post(&http, &urls[i % urls.len()], webhook, delivery).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("load worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = webhooks.len() as f64;
    Served {
        rate: count / elapsed,
        cpu_per_1000: (cpu(pids) - cpu_before) / (count / 1000.0),
    }
}

/// Two minimal handlers take the webhooks; with `cluster`, each publishes them to a quorum
/// queue of their own (deleted afterwards) on the first node that answers and answers after
/// the confirm, as the gateways do.
async fn minimal_round(
    webhooks: &Arc<Vec<(Signed, String)>>,
    cluster: Option<&RabbitCluster>,
) -> Served {
    let topology = quorum_topology("bench-cluster-minimal");
    let _queues = match cluster {
        Some(cluster) => {
            Broker::connect_to(cluster.urls(), &topology).await;
            Some(cluster.guard(topology.clone()))
        }
        None => None,
    };
    let publish = cluster.map(|cluster| (cluster.urls(), &topology));
    let servers = [minimal(publish).await, minimal(publish).await];
    let pids: Vec<u32> = servers.iter().map(|(s, _)| s.pid()).collect();
    let urls = servers.iter().map(|(_, url)| url.clone()).collect();
    let served = serve(webhooks, urls, &pids).await;
    for (service, _) in servers {
        service.terminate();
        let _ = service.wait(Duration::from_secs(20)).await;
    }
    served
}

/// Two gateways on the cluster take the webhooks into a quorum queue of their own (deleted
/// afterwards).
async fn gateway_round(cluster: &RabbitCluster, webhooks: &Arc<Vec<(Signed, String)>>) -> Served {
    let topology = quorum_topology("bench-cluster-gateway");
    let _queues = cluster.guard(topology.clone());
    let gateways = [
        gateway(cluster, &topology.queue).await,
        gateway(cluster, &topology.queue).await,
    ];
    let pids: Vec<u32> = gateways.iter().map(|g| g.service.pid()).collect();
    let urls = gateways
        .iter()
        .map(|g| format!("{}/webhook", g.url))
        .collect();
    let served = serve(webhooks, urls, &pids).await;
    for gateway in gateways {
        gateway.service.terminate();
        let _ = gateway.service.wait(Duration::from_secs(20)).await;
    }
    served
}

/// What planners draining a pre-filled queue measured, from the moment all of them were up.
struct Drained {
    /// Deliveries applied per second, all planners together.
    rate: f64,
    /// Each planner's part of the deliveries applied in that time (0 to 1).
    shares: Vec<f64>,
    /// CPU seconds of all planners per 1,000 deliveries.
    cpu_per_1000: f64,
    /// Mean deliveries per transaction.
    batch: f64,
}

/// Fills a quorum queue with [`CONSUMER_JOBS`] job lives, then `planners` release planners on
/// a database of their own drain it.
async fn drain(cluster: &RabbitCluster, planners: usize) -> Drained {
    let topology = quorum_topology("bench-cluster-consumer");
    let _queues = cluster.guard(topology.clone());
    let messages = lives(Payload::GitHub, 1, CONSUMER_JOBS);
    let count = messages.len() as f64;
    Broker::connect_to(cluster.urls(), &topology)
        .await
        .publish_all(messages, FILL_IN_FLIGHT)
        .await;
    let db = TestDb::new();
    insert_bench_flavor(&mut PgConnection::establish(db.url()).expect("bench database"));
    tokio::task::block_in_place(crate::measure::settle);
    let mut running = Vec::new();
    for _ in 0..planners {
        running.push(planner(cluster, &db, &topology.queue).await);
    }
    let http = reqwest::Client::new();
    let each = |running: &[Running]| {
        let urls: Vec<String> = running.iter().map(|p| p.metrics_url.clone()).collect();
        let http = http.clone();
        async move {
            let mut out = Vec::new();
            for url in &urls {
                out.push(applied(&http, url).await);
            }
            out
        }
    };
    let pids: Vec<u32> = running.iter().map(|p| p.service.pid()).collect();
    // The first planner may have started on the queue while the second was starting: the
    // figures count from here, when all of them are up.
    let before = each(&running).await;
    let cpu_before = cpu(&pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let after = loop {
        let now = each(&running).await;
        if now.iter().sum::<f64>() >= count {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "{planners} planner(s) did not apply {count} deliveries within 3 minutes"
        );
        tokio::time::sleep(POLL).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_used = cpu(&pids) - cpu_before;
    let window: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: f64 = window.iter().sum();
    let (mut sum, mut batches) = (0.0, 0.0);
    for planner in &running {
        let scrape = Scrape::get(&planner.metrics_url).await;
        sum += scrape.sum("github_runner_planner_consumer_batch_deliveries_sum");
        batches += scrape.sum("github_runner_planner_consumer_batch_deliveries_count");
    }
    for planner in running {
        planner.service.terminate();
        let _ = planner.service.wait(Duration::from_secs(20)).await;
    }
    Drained {
        rate: total / elapsed,
        shares: window.iter().map(|part| part / total).collect(),
        cpu_per_1000: cpu_used / (total / 1000.0),
        batch: sum / batches,
    }
}

/// `a, b, c` with `decimals` decimals.
fn each(values: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    values
        .into_iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `gateways`: the gateways against the minimal handlers (`BENCH_ONLY=cluster-gateway`);
/// `planners`: the database ceiling and the planners (`cluster-consumer`).
pub async fn scenarios(rows: &mut Vec<Row>, gateways: bool, planners: bool) {
    eprintln!("bench: cluster: starting the 3 RabbitMQ nodes ...");
    let cluster = RabbitCluster::up().await;
    if gateways {
        gateway_scenario(&cluster, rows).await;
    }
    if planners {
        planner_scenarios(&cluster, rows).await;
    }
}

async fn gateway_scenario(cluster: &RabbitCluster, rows: &mut Vec<Row>) {
    let webhooks: Arc<Vec<(Signed, String)>> = Arc::new(
        lives(Payload::GitHub, 1, GATEWAY_JOBS)
            .into_iter()
            .map(|(body, delivery)| (Signed::new(body), delivery))
            .collect(),
    );
    let count = webhooks.len();

    let (mut minimal, mut publishing, mut gateways) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprintln!("bench: cluster: round {round}: {count} webhooks through 2 minimal handlers, 2 publishing minimal handlers, then 2 gateways ...");
        minimal.push(minimal_round(&webhooks, None).await);
        publishing.push(minimal_round(&webhooks, Some(cluster)).await);
        gateways.push(gateway_round(cluster, &webhooks).await);
    }
    let ratios: Vec<f64> = gateways
        .iter()
        .zip(&minimal)
        .map(|(g, m)| g.cpu_per_1000 / m.cpu_per_1000)
        .collect();
    let cpu_of = |served: &[Served]| median(served.iter().map(|s| s.cpu_per_1000));
    let rate_of = |served: &[Served]| median(served.iter().map(|s| s.rate));
    rows.push(Row::new(
        format!(
            "cluster: gateway CPU per webhook: 2 gateways on the 3 nodes (quorum queue, 200 after the confirm) against 2 minimal actix-web handlers (HMAC check, 200); the same {count} signed webhooks (GitHub's payloads, {GATEWAY_JOBS} job lives) from {CONNECTIONS} connections, {ROUNDS} alternating rounds (median; rounds)"
        ),
        format!(
            "gateways {:.3} CPU s per 1,000 at {:.0} webhooks/s; minimal {:.3} CPU s per 1,000 at {:.0}/s; ratio {:.2} x (rounds {})",
            cpu_of(&gateways),
            rate_of(&gateways),
            cpu_of(&minimal),
            rate_of(&minimal),
            median(ratios.iter().copied()),
            each(ratios.iter().copied(), 2)
        ),
        "<= 2 x the minimal handler",
    ));
    let floor: Vec<f64> = publishing
        .iter()
        .zip(&minimal)
        .map(|(p, m)| p.cpu_per_1000 / m.cpu_per_1000)
        .collect();
    let over_floor: Vec<f64> = gateways
        .iter()
        .zip(&publishing)
        .map(|(g, p)| g.cpu_per_1000 / p.cpu_per_1000)
        .collect();
    rows.push(Row::new(
        "cluster: the floor under a gateway that loses nothing: 2 minimal handlers that also publish each body with lapin (persistent, mandatory, one confirmed channel, the first node that answers, a quorum queue) and answer 200 after the confirm; the same webhooks, the same rounds (median; rounds)",
        format!(
            "publishing minimal {:.3} CPU s per 1,000 at {:.0} webhooks/s = {:.2} x the minimal handler (rounds {}); the gateways {:.2} x this floor (rounds {})",
            cpu_of(&publishing),
            rate_of(&publishing),
            median(floor.iter().copied()),
            each(floor.iter().copied(), 2),
            median(over_floor.iter().copied()),
            each(over_floor.iter().copied(), 2)
        ),
        "(reference)",
    ));
}

async fn planner_scenarios(cluster: &RabbitCluster, rows: &mut Vec<Row>) {
    let (mut ceilings, mut single, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprintln!("bench: cluster: round {round}: database ceiling, 1 planner, 2 planners ...");
        tokio::task::block_in_place(crate::measure::settle);
        ceilings.push(tokio::task::block_in_place(|| {
            database_ceiling(Payload::GitHub)
        }));
        single.push(drain(cluster, 1).await);
        pairs.push(drain(cluster, 2).await);
    }
    let deliveries = CONSUMER_JOBS * 3;
    let one_ratios: Vec<f64> = single
        .iter()
        .zip(&ceilings)
        .map(|(d, c)| d.rate / c)
        .collect();
    rows.push(Row::new(
        "cluster: database ceiling, GitHub's 8-13 KB payloads, as scenario 2 measures it (median; rounds)",
        format!("{:.0} jobs/s ({})", median(ceilings.iter().copied()), each(ceilings.iter().copied(), 0)),
        "(reference)",
    ));
    rows.push(Row::new(
        format!(
            "cluster: 1 planner draining {deliveries} deliveries ({CONSUMER_JOBS} job lives, GitHub's payloads) from a pre-filled quorum queue on the 3 nodes, ack after commit (median; rounds)"
        ),
        format!(
            "{:.0} events/s = {:.2} x ceiling (rounds {} events/s = {} x); {:.1} deliveries per transaction; planner {:.3} CPU s per 1,000",
            median(single.iter().map(|d| d.rate)),
            median(one_ratios.iter().copied()),
            each(single.iter().map(|d| d.rate), 0),
            each(one_ratios.iter().copied(), 2),
            median(single.iter().map(|d| d.batch)),
            median(single.iter().map(|d| d.cpu_per_1000)),
        ),
        ">= 5,000 events/s and >= 0.8 x ceiling",
    ));
    let split = |d: &Drained| {
        d.shares
            .iter()
            .map(|s| format!("{:.0} %", 100.0 * s))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    rows.push(Row::new(
        format!(
            "cluster: 2 planners on one quorum queue, {deliveries} deliveries as above (median; rounds)"
        ),
        format!(
            "{:.0} events/s combined = {:.2} x 1 planner (rounds {} events/s); divided {}; planners {:.3} CPU s per 1,000",
            median(pairs.iter().map(|d| d.rate)),
            median(pairs.iter().zip(&single).map(|(p, s)| p.rate / s.rate)),
            each(pairs.iter().map(|d| d.rate), 0),
            pairs.iter().map(split).collect::<Vec<_>>().join(", "),
            median(pairs.iter().map(|d| d.cpu_per_1000)),
        ),
        "combined and split reported",
    ));
}
