//! Fault tests: while webhooks flow through the real gateway, RabbitMQ, the real planner binary
//! and PostgreSQL, connections are cut through TCP proxies the test controls (never by stopping
//! the shared servers) and planner processes are killed. After each fault: every delivery that
//! got a 2xx is in the database exactly once, and the services recovered by themselves.
//! `cluster`: the same under the loss of servers' nodes (RabbitMQ cluster, PostgreSQL
//! failover).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use diesel::{sql_query, sql_types::Text, QueryableByName, RunQueryDsl};
use futures::{stream, StreamExt};
use tests::amqp::TopologyGuard;
use tests::db::TestDb;
use tests::env::{database_address, rabbitmq_address};
use tests::fixtures::job_payload;
use tests::gateway::{webhook, Options, TestGateway, SECRET};
use tests::process::{PlannerProcess, Service};
use tests::proxy::{Mode, TcpProxy};
use tests::{eventually, unique};

mod cluster;

const ADMIN: &str = "planner_v0_fault_tests_token_01";
const WAIT: Duration = Duration::from_secs(30);
/// Webhooks per phase (before, during and after the fault).
const PER_PHASE: usize = 40;

/// A planner process and the URL of its API.
struct Planner {
    service: Service,
    url: String,
}

impl Planner {
    /// The pressure the planner serves for the test's flavor.
    async fn pressure(&self) -> Option<u64> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/flavors/{FLAVOR}/pressure", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body[FLAVOR].as_u64()
    }
}

/// The flavor every test job is assigned to (labels `faults`).
const FLAVOR: &str = "faults";

/// What the load generator saw: delivery ids answered 2xx, and how many were refused.
#[derive(Default)]
struct Sent {
    accepted: BTreeSet<String>,
    refused: usize,
}

/// Sends `count` webhooks (each a new queued job), four at a time.
async fn send(gateway: &TestGateway, phase: &str, count: usize, sent: &mut Sent) {
    send_to(&gateway.url, phase, count, sent).await;
}

/// Sends `count` webhooks to the gateway at `url`, as [`send`] does.
async fn send_to(url: &str, phase: &str, count: usize, sent: &mut Sent) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let results: Vec<(String, bool)> = stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let url = url.to_owned();
            let delivery = format!("{phase}-{i}-{}", unique("d"));
            async move {
                let id = 1_000_000 + (rand_id(&delivery) % 1_000_000_000);
                let mut body = job_payload("queued.1", id, "queued", &["self-hosted", FLAVOR]);
                // Recent, so the job counts towards pressure (APP_JOB_MAX_AGE).
                body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
                let response = webhook(
                    &client,
                    &url,
                    "workflow_job",
                    &delivery,
                    serde_json::to_vec(&body).unwrap(),
                    SECRET,
                )
                .send()
                .await;
                let ok = matches!(&response, Ok(r) if r.status().is_success());
                (delivery, ok)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for (delivery, ok) in results {
        if ok {
            sent.accepted.insert(delivery);
        } else {
            sent.refused += 1;
        }
    }
}

/// A job id derived from the delivery id, so each webhook is a job of its own.
fn rand_id(delivery: &str) -> i64 {
    delivery.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    }) as i64
        & i64::MAX
}

#[derive(QueryableByName)]
struct DeliveryRow {
    #[diesel(sql_type = Text)]
    id: String,
}

fn stored_deliveries(db: &TestDb) -> BTreeSet<String> {
    let mut conn = db.connect();
    sql_query("SELECT id FROM delivery")
        .load::<DeliveryRow>(&mut conn)
        .expect("read deliveries")
        .into_iter()
        .map(|row| row.id)
        .collect()
}

/// Every accepted delivery is stored, once, with its job.
async fn assert_all_stored_once(db: &TestDb, sent: &Sent) {
    let started = std::time::Instant::now();
    eventually(
        "every accepted delivery to be in the database",
        WAIT,
        || async { stored_deliveries(db).is_superset(&sent.accepted) },
    )
    .await;
    // The figures docs/reliability.md quotes (shown with --nocapture).
    println!(
        "faults: accepted={} refused={} all stored {:?} after the last answer",
        sent.accepted.len(),
        sent.refused,
        started.elapsed()
    );
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.connect();
    let jobs: Count = sql_query(
        "SELECT count(*) AS n FROM job j JOIN delivery d ON d.job_id = j.id AND d.job_platform = j.platform",
    )
    .get_result(&mut conn)
    .unwrap();
    let deliveries: Count = sql_query("SELECT count(*) AS n FROM delivery")
        .get_result(&mut conn)
        .unwrap();
    // One job row per delivery (each webhook is a job of its own): nothing applied twice.
    assert_eq!(jobs.n, deliveries.n);
}

/// The planner's pressure converges to a recount from scratch of the open jobs in the database
/// (the one formula, with the default age limit, the planners here run with).
async fn assert_pressure_recomputes(db: &TestDb, planner: &Planner) {
    let recount = || {
        let map = planner::pressure::formula::from_scratch(
            &mut db.connect(),
            planner::pressure::formula::DEFAULT_MAX_AGE,
        )
        .expect("recount");
        map.get(FLAVOR).copied().unwrap_or(0)
    };
    let expected = recount();
    assert!(expected > 0, "the test jobs should count towards pressure");
    eventually("pressure to equal a recount from scratch", WAIT, || async {
        planner.pressure().await == Some(expected)
    })
    .await;
}

/// Creates the flavor every test job is assigned to.
fn create_flavor(db: &TestDb) {
    sql_query(format!(
        "INSERT INTO flavor (name, platform, labels, priority) \
         VALUES ('{FLAVOR}', 'github', ARRAY['{FLAVOR}'], 1)"
    ))
    .execute(&mut db.connect())
    .expect("create the test flavor");
}

/// The proxies and addresses one scenario needs.
struct Rig {
    db: TestDb,
    queues: TopologyGuard,
    gateway_broker: TcpProxy,
    planner_broker: TcpProxy,
    planner_database: TcpProxy,
}

impl Rig {
    async fn new() -> Self {
        let db = TestDb::new();
        create_flavor(&db);
        let rabbit: SocketAddr = rabbitmq_address().await;
        let postgres: SocketAddr = database_address().await;
        Self {
            queues: TopologyGuard(actors::amqp::Topology::named(&unique("faults"))),
            gateway_broker: TcpProxy::start(rabbit).await,
            planner_broker: TcpProxy::start(rabbit).await,
            planner_database: TcpProxy::start(postgres).await,
            db,
        }
    }

    async fn gateway(&self) -> TestGateway {
        TestGateway::spawn(Options {
            amqp_name: Some(self.queues.topology().queue.clone()),
            broker: Some(self.gateway_broker.addr()),
            publish_timeout: Duration::from_secs(2),
            ..Options::default()
        })
        .await
    }

    /// A planner binary on the test's database and queue, through the proxies.
    async fn planner(&self) -> Planner {
        let running = PlannerProcess::new(self.db.url(), &self.queues.topology().queue)
            .database_via(self.planner_database.addr())
            .broker_via(self.planner_broker.addr())
            .env("APP_ADMIN_TOKEN_VALUE", ADMIN)
            .start()
            .await;
        Planner {
            service: running.service,
            url: running.url,
        }
    }
}

#[actix_rt::test]
async fn gateway_broker_cut_loses_no_accepted_webhook() {
    let rig = Rig::new().await;
    let gateway = rig.gateway().await;
    let planner = rig.planner().await;
    let mut sent = Sent::default();
    send(&gateway, "before", PER_PHASE, &mut sent).await;
    rig.gateway_broker.set(Mode::Cut);
    send(&gateway, "during", PER_PHASE, &mut sent).await;
    assert!(
        sent.refused > 0,
        "the cut should have refused some webhooks"
    );
    rig.gateway_broker.set(Mode::Forward);
    tests::within(
        WAIT,
        "the gateway to reconnect",
        gateway.status.wait_for(actors::amqp::Status::Connected),
    )
    .await;
    send(&gateway, "after", PER_PHASE, &mut sent).await;
    assert_eq!(sent.accepted.len() + sent.refused, 3 * PER_PHASE);
    assert_all_stored_once(&rig.db, &sent).await;
    assert_pressure_recomputes(&rig.db, &planner).await;
    drop(planner);
    gateway.stop().await;
}

#[actix_rt::test]
async fn planner_broker_cut_loses_nothing_and_recovers() {
    let rig = Rig::new().await;
    let gateway = rig.gateway().await;
    let planner = rig.planner().await;
    let mut sent = Sent::default();
    send(&gateway, "before", PER_PHASE, &mut sent).await;
    rig.planner_broker.set(Mode::Cut);
    send(&gateway, "during", PER_PHASE, &mut sent).await;
    rig.planner_broker.set(Mode::Forward);
    send(&gateway, "after", PER_PHASE, &mut sent).await;
    assert_eq!(
        sent.refused, 0,
        "the gateway's own broker link was never cut"
    );
    // Recovered by itself: the one planner process, never restarted, stored what came after.
    assert_all_stored_once(&rig.db, &sent).await;
    assert_pressure_recomputes(&rig.db, &planner).await;
    drop(planner);
    gateway.stop().await;
}

#[actix_rt::test]
async fn planner_database_cut_loses_nothing_and_recovers() {
    let rig = Rig::new().await;
    let gateway = rig.gateway().await;
    let planner = rig.planner().await;
    let mut sent = Sent::default();
    send(&gateway, "before", PER_PHASE, &mut sent).await;
    rig.planner_database.set(Mode::Cut);
    send(&gateway, "during", PER_PHASE, &mut sent).await;
    rig.planner_database.set(Mode::Forward);
    send(&gateway, "after", PER_PHASE, &mut sent).await;
    assert_eq!(sent.refused, 0);
    assert_all_stored_once(&rig.db, &sent).await;
    assert_pressure_recomputes(&rig.db, &planner).await;
    drop(planner);
    gateway.stop().await;
}

#[actix_rt::test]
async fn killed_planner_restarts_and_loses_nothing() {
    let rig = Rig::new().await;
    let gateway = rig.gateway().await;
    let planner = rig.planner().await;
    let mut sent = Sent::default();
    send(&gateway, "before", PER_PHASE, &mut sent).await;
    planner.service.kill();
    let _ = planner.service.wait(WAIT).await;
    send(&gateway, "during", PER_PHASE, &mut sent).await;
    let restarted = rig.planner().await;
    send(&gateway, "after", PER_PHASE, &mut sent).await;
    assert_eq!(sent.refused, 0);
    assert_all_stored_once(&rig.db, &sent).await;
    assert_pressure_recomputes(&rig.db, &restarted).await;
    drop(restarted);
    gateway.stop().await;
}

#[actix_rt::test]
async fn one_of_two_planners_killed_the_other_takes_over() {
    let rig = Rig::new().await;
    let gateway = rig.gateway().await;
    let first = rig.planner().await;
    let second = rig.planner().await;
    let mut sent = Sent::default();
    send(&gateway, "before", PER_PHASE, &mut sent).await;
    first.service.kill();
    send(&gateway, "during", PER_PHASE, &mut sent).await;
    send(&gateway, "after", PER_PHASE, &mut sent).await;
    assert_eq!(sent.refused, 0);
    assert_all_stored_once(&rig.db, &sent).await;
    assert_pressure_recomputes(&rig.db, &second).await;
    let _ = first.service.wait(WAIT).await;
    drop(second);
    gateway.stop().await;
}
