//! The planner's job consumer end to end, from a real RabbitMQ queue into a real PostgreSQL:
//! octokit fixtures, duplicates, reordered deliveries, poison messages, a database outage in
//! the middle of the stream, and two planners sharing one queue.

use std::time::Duration;

use diesel::prelude::*;
use proptest::{
    strategy::{Just, Strategy, ValueTree},
    test_runner::TestRunner,
};
use schema::{
    models::{Job, Status},
    schema::job,
};
use serde_json::{json, Value};
use tests::{
    amqp::{unique_topology, Broker, TopologyGuard},
    db::TestDb,
    env::{database_address, rabbitmq_address},
    eventually,
    fixtures::{fixture, job_payload, workflow_job},
    planner::{spawn_planner, TestPlanner, ADMIN_TOKEN},
    proxy::{Mode, TcpProxy},
};

const SELF_HOSTED: [&str; 3] = ["self-hosted", "linux", "x64"];

/// The four deliveries of one job's life, from the fixtures, as GitHub sends them.
fn lifecycle(id: i64) -> Vec<(&'static str, Value)> {
    vec![
        (
            "queued",
            job_payload("queued.1", id, "queued", &SELF_HOSTED),
        ),
        (
            "waiting",
            job_payload("waiting.0", id, "waiting", &SELF_HOSTED),
        ),
        (
            "in_progress",
            job_payload("in_progress.1", id, "in_progress", &SELF_HOSTED),
        ),
        (
            "completed",
            job_payload("completed.1", id, "completed", &SELF_HOSTED),
        ),
    ]
}

fn jobs(conn: &mut PgConnection) -> Vec<Job> {
    job::table
        .order(job::id)
        .select(Job::as_select())
        .load(conn)
        .expect("load jobs")
}

/// A job row without what legitimately differs between two runs.
fn comparable(mut row: Job) -> Job {
    row.updated_at = chrono::DateTime::UNIX_EPOCH;
    row
}

#[actix_web::test]
async fn fixtures_flow_from_the_queue_into_the_database() {
    let planner = spawn_planner().await;
    planner.create_flavor("x64", &["x64"], 1).await;
    let publisher = Broker::connect(&planner.topology).await;

    // The waiting/queued fixtures are a real self-hosted job (labels self-hosted, k8s).
    // Its in_progress and completed deliveries are derived from the other fixtures.
    let id = 12_877_621_891;
    let waiting = workflow_job("waiting.0");
    let same_job = |mut body: Value| {
        body["workflow_job"]["id"] = id.into();
        body["workflow_job"]["run_id"] = waiting["workflow_job"]["run_id"].clone();
        body["workflow_job"]["labels"] = json!(["self-hosted", "k8s"]);
        body["repository"] = waiting["repository"].clone();
        body
    };
    publisher.publish(&workflow_job("queued.1"), "q").await;
    publisher.publish(&waiting, "w").await;
    publisher
        .publish(&same_job(workflow_job("in_progress.1")), "s")
        .await;
    publisher
        .publish(&same_job(workflow_job("completed.0")), "c")
        .await;
    // GitHub-hosted job, another event, an unhandled action: acknowledged and discarded.
    publisher.publish(&workflow_job("queued.0"), "hosted").await;
    let ping = fixture("ping.json");
    publisher
        .publish_raw(&ping, Some("ping"), Some("ping"))
        .await;
    let mut requested = job_payload("queued.1", 5, "requested", &SELF_HOSTED);
    requested["action"] = "requested".into();
    publisher.publish(&requested, "requested").await;
    // A self-hosted x64 job matches the flavor.
    publisher
        .publish(&job_payload("queued.1", 7, "queued", &SELF_HOSTED), "x")
        .await;

    planner.settled(8).await;
    assert_eq!(planner.metrics.applied(), 5);
    assert_eq!(
        planner
            .metrics
            .discarded
            .with_label_values(&["github"])
            .get(),
        3
    );
    assert_eq!(planner.metrics.dead_letters(), 0);

    let job = planner.job(id).await.expect("job stored");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["conclusion"], "failure");
    assert_eq!(job["labels"], json!(["self-hosted", "k8s"]));
    assert_eq!(job["repository"], "lineville/elastic-machines-testing");
    assert_eq!(job["run_id"], 4_747_967_848i64);
    assert_eq!(
        job["assigned_flavor"],
        Value::Null,
        "k8s is offered by no flavor"
    );
    assert_eq!(job["started_at"], "2021-08-05T10:34:58Z");
    assert_eq!(job["completed_at"], "2021-08-05T10:38:16Z");
    let payloads = job["raw"].as_object().unwrap();
    assert_eq!(payloads.len(), 4, "every action's raw payload is kept");
    assert_eq!(payloads["waiting"], workflow_job("waiting.0"));
    assert_eq!(planner.job(7).await.unwrap()["assigned_flavor"], "x64");
    assert!(
        planner.job(289_782_451).await.is_none(),
        "GitHub-hosted jobs are not stored"
    );
    assert!(planner.job(5).await.is_none());
    assert!(publisher.drain_dead_letters().await.is_empty());
}

#[actix_web::test]
async fn duplicate_deliveries_are_counted_not_applied_twice() {
    let planner = spawn_planner().await;
    let publisher = Broker::connect(&planner.topology).await;
    let [queued, waiting, ..] = <[_; 4]>::try_from(lifecycle(1)).unwrap();
    publisher.publish(&queued.1, "d-queued").await;
    publisher.publish(&waiting.1, "d-waiting").await;
    // The same queued delivery again (a redelivery): applying it would move the job back.
    publisher.publish(&queued.1, "d-queued").await;
    publisher.publish(&queued.1, "d-queued").await;
    planner.settled(4).await;
    assert_eq!(planner.metrics.applied(), 2);
    assert_eq!(planner.metrics.duplicates.get(), 2);
    assert_eq!(planner.job(1).await.unwrap()["status"], "waiting");

    let mut conn = planner.db.as_ref().unwrap().connect();
    assert_eq!(
        schema::queries::job_duplicate_count(&mut conn, "github", 1).unwrap(),
        2
    );
}

#[actix_web::test]
async fn poison_messages_land_in_the_dead_letter_queue() {
    let planner = spawn_planner().await;
    let publisher = Broker::connect(&planner.topology).await;
    let good = job_payload("queued.1", 1, "queued", &SELF_HOSTED);
    let bytes = serde_json::to_vec(&good).unwrap();

    publisher.publish_raw(&bytes, None, Some("no-event")).await;
    publisher
        .publish_raw(
            b"{\"action\": \"queued\", ",
            Some("workflow_job"),
            Some("bad-json"),
        )
        .await;
    let mut no_id = good.clone();
    no_id["workflow_job"].as_object_mut().unwrap().remove("id");
    publisher.publish(&no_id, "no-id").await;
    // An id beyond bigint: the gateway refuses it with 400; one that arrives anyway is poison.
    let mut big_id = good.clone();
    big_id["workflow_job"]["id"] = json!(u64::MAX);
    publisher.publish(&big_id, "big-id").await;
    // The in_progress.0 fixture has no created_at.
    let mut no_created = workflow_job("in_progress.0");
    no_created["workflow_job"]["labels"] = json!(SELF_HOSTED);
    publisher.publish(&no_created, "no-created-at").await;
    let mut no_repository = good.clone();
    no_repository.as_object_mut().unwrap().remove("repository");
    publisher.publish(&no_repository, "no-repository").await;
    publisher
        .publish_raw(&bytes, Some("workflow_job"), None)
        .await;
    publisher.publish(&good, "good").await;

    planner.settled(8).await;
    assert_eq!(planner.metrics.dead_letters(), 7);
    assert_eq!(planner.metrics.applied(), 1);
    assert_eq!(planner.job(1).await.unwrap()["status"], "queued");

    let dead = publisher
        .wait_dead_letters(7, Duration::from_secs(10))
        .await;
    let mut ids: Vec<Option<String>> = dead.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    let mut expected = vec![
        None,
        Some("bad-json"),
        Some("big-id"),
        Some("no-created-at"),
        Some("no-event"),
        Some("no-id"),
        Some("no-repository"),
    ];
    expected.sort();
    assert_eq!(
        ids,
        expected
            .into_iter()
            .map(|id| id.map(str::to_owned))
            .collect::<Vec<_>>()
    );
    let bad_json = dead
        .iter()
        .find(|(id, _)| id.as_deref() == Some("bad-json"))
        .unwrap();
    assert_eq!(
        bad_json.1, b"{\"action\": \"queued\", ",
        "dead letters keep the body unchanged"
    );
}

/// Property: any permutation of a job's deliveries, with duplicates, read from a real queue,
/// ends in the same row as the order GitHub sends them in. Each case is a job of its own.
#[actix_web::test]
async fn reordered_and_duplicated_deliveries_converge() {
    const CASES: i64 = 24;
    let planner = spawn_planner().await;
    planner.create_flavor("x64", &["x64"], 1).await;
    let publisher = Broker::connect(&planner.topology).await;

    // Job 0: in order.
    for (action, body) in lifecycle(0) {
        publisher.publish(&body, &format!("0-{action}")).await;
    }
    let strategy = (
        Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
        proptest::collection::vec(0..4usize, 0..4),
    );
    let mut runner = TestRunner::deterministic();
    let mut published = 4;
    for id in 1..=CASES {
        let (order, duplicates) = strategy.new_tree(&mut runner).unwrap().current();
        let deliveries = lifecycle(id);
        let mut sequence: Vec<usize> = order;
        for (n, i) in duplicates.into_iter().enumerate() {
            sequence.insert(n % (sequence.len() + 1), i);
        }
        for i in sequence {
            let (action, body) = &deliveries[i];
            publisher.publish(body, &format!("{id}-{action}")).await;
            published += 1;
        }
    }
    planner.settled(published).await;
    assert_eq!(planner.metrics.applied(), 4 * (CASES as u64 + 1));

    let mut conn = planner.db.as_ref().unwrap().connect();
    let rows = jobs(&mut conn);
    assert_eq!(rows.len() as i64, CASES + 1);
    // The row and every action's payload, without the job's id.
    let mut normalise = |row: &Job| {
        let payloads: Vec<(String, Value)> =
            schema::queries::job_payloads(&mut conn, &row.state.platform, row.state.id)
                .unwrap()
                .into_iter()
                .map(|(action, payload)| {
                    let mut payload: Value = serde_json::from_str(&payload).unwrap();
                    payload["workflow_job"]["id"] = 0.into();
                    (action, payload)
                })
                .collect();
        let mut row = comparable(row.clone());
        row.state.id = 0;
        (row, payloads)
    };
    let expected = normalise(&rows[0]);
    assert_eq!(expected.0.state.status, Status::Completed);
    assert_eq!(expected.0.assigned_flavor.as_deref(), Some("x64"));
    assert_eq!(expected.1.len(), 4, "every action's raw payload is kept");
    for row in &rows[1..] {
        assert_eq!(normalise(row), expected, "job {}", row.state.id);
    }
}

#[actix_web::test]
async fn database_cut_mid_stream_loses_nothing() {
    let db = TestDb::new();
    let proxy = TcpProxy::start(database_address().await).await;
    let topology = unique_topology();
    let _queues = TopologyGuard(topology.clone());
    let planner = TestPlanner::builder()
        .database(db.url())
        .database_via(proxy.addr())
        .topology(&topology)
        .start()
        .await;
    let publisher = Broker::connect(&topology).await;

    for id in 1..=20 {
        publisher
            .publish(
                &job_payload("queued.1", id, "queued", &SELF_HOSTED),
                &format!("q{id}"),
            )
            .await;
    }
    planner.settled(20).await;

    proxy.set(Mode::Cut);
    for id in 1..=20 {
        publisher
            .publish(
                &job_payload("completed.0", id, "completed", &SELF_HOSTED),
                &format!("c{id}"),
            )
            .await;
    }
    let metrics = planner.metrics.clone();
    eventually(
        "the store notices the outage",
        Duration::from_secs(30),
        || {
            let metrics = metrics.clone();
            async move { metrics.store_failures.get() >= 2 }
        },
    )
    .await;
    assert_eq!(
        planner.metrics.settled(),
        20,
        "nothing is acknowledged while the database is down"
    );
    assert!(
        publisher.drain_dead_letters().await.is_empty(),
        "nothing is dead-lettered"
    );
    let response = planner
        .request(reqwest::Method::GET, "/api/v1/flavors", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the API says the database is unavailable"
    );

    proxy.set(Mode::Forward);
    planner.settled(40).await;
    assert_eq!(planner.metrics.dead_letters(), 0);
    let rows = jobs(&mut db.connect());
    assert_eq!(rows.len(), 20);
    assert!(
        rows.iter().all(|row| row.state.status == Status::Completed),
        "every delivery was applied"
    );
    assert!(publisher.drain_dead_letters().await.is_empty());
}

/// Payloads are kept and answered byte for byte as GitHub sent them: key order, spacing,
/// escapes, and numbers no float or `numeric` holds (`1e-20000`) included, in the job's answer
/// and in the job list's.
#[actix_web::test]
async fn payloads_are_answered_exactly_as_sent() {
    let planner = spawn_planner().await;
    let publisher = Broker::connect(&planner.topology).await;
    let mut odd = job_payload("queued.1", 1, "queued", &SELF_HOSTED).to_string();
    odd.insert_str(
        1,
        r#""zeta" : [1e-20000, 1.5e-16383, 12345678901234567890123],  "alpha":"\u00e9\/", "#,
    );
    // Whitespace after the value is JSON too; the answer holds the value without it.
    let odd = format!("{odd}\n  ");
    publisher
        .publish_raw(odd.as_bytes(), Some("workflow_job"), Some("odd"))
        .await;
    publisher
        .publish(&job_payload("queued.1", 2, "queued", &SELF_HOSTED), "plain")
        .await;
    planner.settled(2).await;
    assert_eq!(planner.metrics.applied(), 2);
    assert_eq!(planner.metrics.dead_letters(), 0);
    for path in ["/api/v1/jobs/github/1", "/api/v1/jobs/github"] {
        let answer = planner
            .admin(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        let exact = format!(r#""queued":{}"#, odd.trim_end());
        assert!(
            answer.contains(&exact),
            "{path} holds the payload exactly as sent: {answer}"
        );
    }
    assert!(publisher.drain_dead_letters().await.is_empty());

    // A row that is not JSON (written by hand) is answered as null; the rest of the job is
    // answered as usual.
    let mut conn = planner.db.as_ref().unwrap().connect();
    diesel::sql_query("UPDATE job_payload SET payload = 'not json' WHERE job_id = 2")
        .execute(&mut conn)
        .unwrap();
    let job = planner.job(2).await.expect("job 2");
    assert_eq!(job["raw"]["queued"], Value::Null);
    assert_eq!(job["status"], "queued");
}

/// A delivery the database keeps refusing while it answers (here: a trigger) is dead-lettered
/// after a few attempts; the deliveries around it (in its batch or not) are applied.
#[actix_web::test]
async fn a_delivery_the_database_refuses_is_dead_lettered_alone() {
    let planner = spawn_planner().await;
    let mut conn = planner.db.as_ref().unwrap().connect();
    diesel::sql_query(
        "CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'job 666 refused'; END; $$",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "CREATE TRIGGER refuse_666 BEFORE INSERT ON job FOR EACH ROW \
         WHEN (NEW.id = 666) EXECUTE FUNCTION refuse_666()",
    )
    .execute(&mut conn)
    .unwrap();
    let publisher = Broker::connect(&planner.topology).await;
    for id in [1, 666, 2] {
        publisher
            .publish(
                &job_payload("queued.1", id, "queued", &SELF_HOSTED),
                &format!("q{id}"),
            )
            .await;
    }
    planner.settled(3).await;
    assert_eq!(planner.metrics.applied(), 2);
    assert_eq!(planner.metrics.dead_letters(), 1);
    let dead = publisher
        .wait_dead_letters(1, Duration::from_secs(10))
        .await;
    assert_eq!(dead[0].0.as_deref(), Some("q666"));
    assert_eq!(
        jobs(&mut conn)
            .iter()
            .map(|row| row.state.id)
            .collect::<Vec<_>>(),
        [1, 2]
    );
}

/// A planner on a database of its own that reaches RabbitMQ through a proxy the test can cut,
/// and a publisher to its queue.
struct BehindProxy {
    db: TestDb,
    proxy: TcpProxy,
    _queues: TopologyGuard,
    planner: TestPlanner,
    publisher: Broker,
}

async fn behind_proxy() -> BehindProxy {
    let db = TestDb::new();
    let proxy = TcpProxy::start(rabbitmq_address().await).await;
    let topology = unique_topology();
    let queues = TopologyGuard(topology.clone());
    let planner = TestPlanner::builder()
        .database(db.url())
        .broker_via(proxy.addr())
        .topology(&topology)
        .start()
        .await;
    let publisher = Broker::connect(&topology).await;
    BehindProxy {
        db,
        proxy,
        _queues: queues,
        planner,
        publisher,
    }
}

/// Waits until the planner's consumer is registered with the broker (`true`) or knows it is
/// not (`false`).
async fn until_consuming(planner: &TestPlanner, consuming: bool) {
    let metrics = planner.metrics.clone();
    let what = if consuming {
        "the consumer is back"
    } else {
        "the consumer notices the broker is gone"
    };
    eventually(what, Duration::from_secs(20), || {
        let metrics = metrics.clone();
        async move { metrics.consuming() == consuming }
    })
    .await;
}

#[actix_web::test]
async fn broker_cut_reconnects_without_busy_looping() {
    let BehindProxy {
        db,
        proxy,
        _queues,
        planner,
        publisher,
    } = behind_proxy().await;
    for id in 1..=5 {
        publisher
            .publish(
                &job_payload("queued.1", id, "queued", &SELF_HOSTED),
                &format!("q{id}"),
            )
            .await;
    }
    planner.settled(5).await;

    proxy.set(Mode::Cut);
    until_consuming(&planner, false).await;
    for id in 6..=10 {
        publisher
            .publish(
                &job_payload("queued.1", id, "queued", &SELF_HOSTED),
                &format!("q{id}"),
            )
            .await;
    }
    let attempts = planner.metrics.broker_connects.get();
    // A measurement window, not synchronisation: count reconnect attempts while the broker is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = planner.metrics.broker_connects.get() - attempts;
    assert!(
        during <= 12,
        "{during} connection attempts in 1.5 s: the backoff is not working"
    );
    assert_eq!(planner.metrics.settled(), 5);

    proxy.set(Mode::Forward);
    planner.settled(10).await;
    assert_eq!(jobs(&mut db.connect()).len(), 10);
}

/// Every settled delivery is acknowledged, whatever mix of applied, discarded and
/// dead-lettered deliveries its batches held (applied ones are acknowledged together, the
/// others alone): after the broker connection is cut, which hands every unacknowledged delivery
/// back to the queue, nothing comes again.
#[actix_web::test]
async fn settled_deliveries_never_come_again_after_a_broker_cut() {
    let BehindProxy {
        db,
        proxy,
        _queues,
        planner,
        publisher,
    } = behind_proxy().await;
    let mut published = 0;
    for id in 1..=60 {
        let body = job_payload("queued.1", id, "queued", &SELF_HOSTED);
        publisher.publish(&body, &format!("q{id}")).await;
        published += 1;
        if id % 7 == 0 {
            publisher
                .publish_raw(b"{", Some("workflow_job"), Some(&format!("poison{id}")))
                .await;
            published += 1;
        }
        if id % 5 == 0 {
            let hosted = job_payload("queued.1", 1000 + id, "queued", &["ubuntu-latest"]);
            publisher.publish(&hosted, &format!("hosted{id}")).await;
            published += 1;
        }
    }
    planner.settled(published).await;
    assert_eq!(planner.metrics.applied(), 60);
    assert_eq!(planner.metrics.dead_letters(), 8);

    proxy.set(Mode::Cut);
    until_consuming(&planner, false).await;
    proxy.set(Mode::Forward);
    until_consuming(&planner, true).await;
    // Anything handed back was queued before this, and comes before it.
    let marker = job_payload("queued.1", 61, "queued", &SELF_HOSTED);
    publisher.publish(&marker, "q61").await;
    planner.settled(published + 1).await;
    assert_eq!(planner.metrics.applied(), 61);
    assert_eq!(
        planner.metrics.settled(),
        published + 1,
        "a settled delivery came again: it was not acknowledged"
    );
    assert_eq!(jobs(&mut db.connect()).len(), 61);
}

#[actix_web::test]
async fn two_planners_on_one_queue_converge_to_the_state_of_one() {
    const JOBS: i64 = 30;
    let shared_db = TestDb::new();
    let shared_topology = unique_topology();
    let _queues = TopologyGuard(shared_topology.clone());
    let on_shared = || {
        TestPlanner::builder()
            .database(shared_db.url())
            .topology(&shared_topology)
    };
    let first = on_shared().start().await;
    let second = on_shared().start().await;
    let single = spawn_planner().await;
    first.create_flavor("x64", &["x64"], 1).await;
    single.create_flavor("x64", &["x64"], 1).await;

    let shared = Broker::connect(&shared_topology).await;
    let alone = Broker::connect(&single.topology).await;
    // Interleave the jobs' lives, and redeliver some deliveries.
    let mut published = 0;
    for step in 0..4 {
        for id in 1..=JOBS {
            let (action, body) = lifecycle(id).swap_remove(step);
            let delivery = format!("{id}-{action}");
            let copies = if id % 7 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                shared.publish(&body, &delivery).await;
                alone.publish(&body, &delivery).await;
                published += 1;
            }
        }
    }
    single.settled(published).await;
    let (a, b) = (first.metrics.clone(), second.metrics.clone());
    eventually(
        "both planners together settled everything",
        Duration::from_secs(30),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.settled() + b.settled() >= published }
        },
    )
    .await;
    assert!(
        first.metrics.settled() > 0 && second.metrics.settled() > 0,
        "both planners took work"
    );
    let applied = first.metrics.applied() + second.metrics.applied();
    assert_eq!(
        applied,
        4 * JOBS as u64,
        "duplicates are applied once across planners"
    );

    let together: Vec<Job> = jobs(&mut shared_db.connect())
        .into_iter()
        .map(comparable)
        .collect();
    let one: Vec<Job> = jobs(&mut single.db.as_ref().unwrap().connect())
        .into_iter()
        .map(comparable)
        .collect();
    assert_eq!(together.len() as i64, JOBS);
    assert_eq!(together, one);
}

/// A job's deliveries that land in different batches (with two transactions in flight) are
/// applied in the order they arrived: queued, waiting, queued again (an approval) ends queued,
/// for every job, however the batches fall.
#[actix_web::test]
async fn a_job_s_deliveries_in_different_batches_apply_in_arrival_order() {
    const JOBS: i64 = 200;
    // Batches of at most two deliveries: each job's three deliveries span two batches.
    let planner = TestPlanner::builder()
        .tune(|config| config.consumer_prefetch = 4)
        .start()
        .await;
    planner.create_flavor("x64", &["x64"], 1).await;
    let publisher = Broker::connect(&planner.topology).await;
    let mut messages = Vec::new();
    for id in 1..=JOBS {
        let sequence = [
            ("queued.1", "queued"),
            ("waiting.0", "waiting"),
            ("queued.1", "queued"),
        ];
        for (n, (fixture, action)) in sequence.into_iter().enumerate() {
            let body = job_payload(fixture, id, action, &SELF_HOSTED);
            messages.push((
                serde_json::to_vec(&body).unwrap(),
                format!("order-{id}-{n}"),
            ));
        }
    }
    publisher.publish_all(messages, 64).await;
    planner.settled(3 * JOBS as u64).await;
    assert_eq!(planner.metrics.applied(), 3 * JOBS as u64);

    let rows = jobs(&mut planner.db.as_ref().unwrap().connect());
    assert_eq!(rows.len() as i64, JOBS);
    let out_of_order: Vec<i64> = rows
        .iter()
        .filter(|row| row.state.status != Status::Queued)
        .map(|row| row.state.id)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "jobs whose last delivery (queued) was not applied last: {out_of_order:?}"
    );
}
