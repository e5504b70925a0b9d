//! `BENCH_ONLY=cluster`: the system on the 3-node RabbitMQ cluster of
//! `scripts/rabbitmq-cluster.sh` with a quorum queue. Two release gateways take the lives of
//! [`JOBS`] jobs (GitHub's payloads, distinct deliveries) from [`CONNECTIONS`] connections,
//! alternating between them, each answered only after the quorum queue's confirm (a majority of
//! the nodes wrote it); then two release planners consume that queue together, and the run
//! reports their combined rate and how the deliveries divided between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::amqp::{QueueType, Topology};
use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::consumer::{applied, lives, Payload};
use crate::gateway::{client, post, Signed};
use crate::measure::{Row, Usage};
use tests::cluster::RabbitCluster;
use tests::db::TestDb;
use tests::process::{GatewayProcess, PlannerProcess, Running};

/// Jobs whose three deliveries go through the gateways (9,000 webhooks).
const JOBS: usize = 3_000;
/// Requests in flight across both gateways.
const CONNECTIONS: usize = 64;

async fn gateway(cluster: &RabbitCluster, name: &str) -> Running {
    GatewayProcess::new(name)
        .release()
        .brokers(cluster.urls())
        .env("APP_AMQP_QUEUE_TYPE", "quorum")
        .env("RUST_LOG", "info,gateway::routes=warn")
        .start()
        .await
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

/// The gateways' rate into the quorum queue, then two planners draining it.
pub async fn scenarios(rows: &mut Vec<Row>) {
    eprintln!("bench: cluster: starting the 3 RabbitMQ nodes ...");
    let cluster = RabbitCluster::up().await;
    let topology =
        Topology::with_prefix(&tests::unique("bench-cluster")).with_queue_type(QueueType::Quorum);
    let _queues = cluster.guard(topology.clone());
    let gateways = [
        gateway(&cluster, &topology.queue).await,
        gateway(&cluster, &topology.queue).await,
    ];
    let webhooks: Arc<Vec<(Signed, String)>> = Arc::new(
        lives(Payload::GitHub, 1, JOBS)
            .into_iter()
            .map(|(body, delivery)| (Signed::new(body), delivery))
            .collect(),
    );
    let count = webhooks.len();
    let urls: Arc<Vec<String>> = Arc::new(
        gateways
            .iter()
            .map(|g| format!("{}/webhook", g.url))
            .collect(),
    );
    let cpu = |gateways: &[Running]| -> f64 {
        gateways
            .iter()
            .map(|g| Usage::of(g.service.pid()).cpu_seconds)
            .sum()
    };

    eprintln!("bench: cluster: {count} webhooks through 2 gateways ...");
    tokio::task::block_in_place(crate::measure::settle);
    let http = client(CONNECTIONS);
    let cpu_before = cpu(&gateways);
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
    let gateway_rate = count as f64 / started.elapsed().as_secs_f64();
    let gateway_cpu = (cpu(&gateways) - cpu_before) / (count as f64 / 1000.0);
    for gateway in gateways {
        gateway.service.terminate();
        let _ = gateway.service.wait(Duration::from_secs(20)).await;
    }

    eprintln!("bench: cluster: 2 planners draining {count} deliveries ...");
    let db = TestDb::new();
    {
        let mut conn = PgConnection::establish(db.url()).expect("bench database");
        diesel::sql_query(
            "INSERT INTO flavor (name, platform, labels, priority) \
             VALUES ('bench', 'github', ARRAY['bench'], 0)",
        )
        .execute(&mut conn)
        .expect("bench flavor");
    }
    tokio::task::block_in_place(crate::measure::settle);
    let planners = [
        planner(&cluster, &db, &topology.queue).await,
        planner(&cluster, &db, &topology.queue).await,
    ];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let http = reqwest::Client::new();
    let each = |http: reqwest::Client, planners: &[Running]| {
        let urls: Vec<String> = planners.iter().map(|p| p.metrics_url.clone()).collect();
        async move {
            let mut out = Vec::new();
            for url in &urls {
                out.push(applied(&http, url).await);
            }
            out
        }
    };
    let shares = loop {
        let shares = each(http.clone(), &planners).await;
        if shares.iter().sum::<f64>() >= count as f64 {
            break shares;
        }
        assert!(
            Instant::now() < deadline,
            "two planners did not apply {count} deliveries within 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let planner_rate = count as f64 / started.elapsed().as_secs_f64();
    for planner in planners {
        planner.service.terminate();
        let _ = planner.service.wait(Duration::from_secs(20)).await;
    }

    rows.push(Row::new(
        format!(
            "cluster: 2 gateways, {count} signed webhooks (GitHub's payloads, {JOBS} job lives) from {CONNECTIONS} connections into a quorum queue on 3 nodes, 200 after the confirm"
        ),
        format!("{gateway_rate:.0} webhooks/s; gateways {gateway_cpu:.3} CPU s per 1,000"),
        "(scales out; reference)",
    ));
    rows.push(Row::new(
        format!("cluster: 2 planners draining those {count} deliveries from the quorum queue"),
        format!(
            "{planner_rate:.0} events/s combined; divided {:.0} % / {:.0} %",
            100.0 * shares[0] / count as f64,
            100.0 * shares[1] / count as f64
        ),
        "combined and split reported",
    ));
}
