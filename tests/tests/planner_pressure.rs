//! Pressure: values, NDJSON and SSE streams through real HTTP clients, two planner processes on
//! one database and queue, and shutdown, against the real PostgreSQL and RabbitMQ.

use std::time::Duration;

use actors::broadcast::SubscriberCount;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tests::{
    amqp::{Broker, TopologyGuard},
    db::TestDb,
    fixtures::job_payload,
    gateway::{webhook, Options, TestGateway, SECRET},
    planner::{spawn_planner, TestPlanner, ADMIN_TOKEN},
    process::{PlannerProcess, Running, Service},
    stream::Lines,
    within,
};

const LIMIT: Duration = Duration::from_secs(10);
const LABELS: &[&str] = &["self-hosted", "linux", "x64"];

/// A job event for `LABELS`, created `age` ago.
fn job(id: i64, action: &str, age: Duration) -> Value {
    let fixture = match action {
        "waiting" => "waiting.0",
        "in_progress" => "in_progress.1",
        "completed" => "completed.0",
        _ => "queued.1",
    };
    let mut body = job_payload(fixture, id, action, LABELS);
    let created = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    body["workflow_job"]["created_at"] = created.to_rfc3339().into();
    body
}

async fn create_flavor(planner: &TestPlanner, name: &str, labels: &[&str], minimum: i64) {
    let response = planner
        .request(
            Method::POST,
            &format!("/api/v1/flavors/{name}"),
            Some(ADMIN_TOKEN),
        )
        .json(&json!({"platform": "github", "labels": labels, "minimum_pressure": minimum}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn patch_flavor(planner: &TestPlanner, name: &str, body: Value) {
    let response = planner
        .request(
            Method::PATCH,
            &format!("/api/v1/flavors/{name}"),
            Some(ADMIN_TOKEN),
        )
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{}", response.status());
}

async fn get_pressure(planner: &TestPlanner, name: &str, token: Option<&str>) -> (u16, Value) {
    let response = planner
        .request(
            Method::GET,
            &format!("/api/v1/flavors/{name}/pressure"),
            token,
        )
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn open_stream(address: &str, name: &str, sse: bool) -> Lines {
    let client = reqwest::Client::new();
    let mut request = client
        .get(format!("{address}/api/v1/flavors/{name}/pressure"))
        .bearer_auth(ADMIN_TOKEN);
    request = if sse {
        request.header("Accept", "text/event-stream")
    } else {
        request.query(&[("stream", "true")])
    };
    let response = within(LIMIT, "the stream to open", request.send())
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(
        content_type,
        if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        }
    );
    Lines::new(response)
}

async fn subscribers(planner: &TestPlanner) -> usize {
    planner.broadcaster.send(SubscriberCount).await.unwrap()
}

#[actix_web::test]
async fn pressure_counts_queued_and_in_progress_jobs_at_least_the_minimum() {
    let planner = spawn_planner().await;
    create_flavor(&planner, "small", LABELS, 0).await;
    create_flavor(&planner, "floor", &["arm64"], 3).await;
    let mut stream = open_stream(&planner.address, "_", false).await;
    stream
        .until_json(&json!({"small": 0, "floor": 3}), LIMIT)
        .await;

    let day = Duration::from_secs(24 * 3600);
    planner.seed(&job(1, "queued", Duration::ZERO), "d1");
    planner.seed(&job(2, "in_progress", Duration::ZERO), "d2");
    planner.seed(&job(3, "waiting", Duration::ZERO), "d3");
    // Older than the default APP_JOB_MAX_AGE (5 days): never counts.
    planner.seed(&job(4, "queued", 6 * day), "d4");
    stream
        .until_json(&json!({"small": 2, "floor": 3}), LIMIT)
        .await;
    assert_eq!(
        get_pressure(&planner, "small", Some(ADMIN_TOKEN)).await,
        (200, json!({"small": 2}))
    );
    assert_eq!(
        get_pressure(&planner, "_", Some(ADMIN_TOKEN)).await,
        (200, json!({"small": 2, "floor": 3}))
    );

    // The waiting job is queued again (approved): now it counts; a completed one stops counting.
    planner.seed(&job(3, "queued", Duration::ZERO), "d5");
    stream
        .until_json(&json!({"small": 3, "floor": 3}), LIMIT)
        .await;
    planner.seed(&job(1, "completed", Duration::ZERO), "d6");
    stream
        .until_json(&json!({"small": 2, "floor": 3}), LIMIT)
        .await;

    // A disabled flavor reports its minimum pressure; enabled again, its jobs count again.
    patch_flavor(
        &planner,
        "small",
        json!({"is_disabled": true, "minimum_pressure": 1}),
    )
    .await;
    stream
        .until_json(&json!({"small": 1, "floor": 3}), LIMIT)
        .await;
    assert_eq!(
        get_pressure(&planner, "small", Some(ADMIN_TOKEN)).await,
        (200, json!({"small": 1}))
    );
    patch_flavor(&planner, "small", json!({"is_disabled": false})).await;
    stream
        .until_json(&json!({"small": 2, "floor": 3}), LIMIT)
        .await;
}

#[actix_web::test]
async fn jobs_ageing_out_of_the_max_age_reach_subscribers_without_any_event() {
    let db = TestDb::new();
    let planner = TestPlanner::builder()
        .database(db.url())
        .tune(|config| config.job_max_age = Duration::from_secs(30))
        .start()
        .await;
    create_flavor(&planner, "small", LABELS, 0).await;
    // 28 s old: counts for about two more seconds.
    planner.seed(&job(1, "queued", Duration::from_secs(28)), "d1");
    planner.seed(&job(2, "queued", Duration::ZERO), "d2");
    let mut stream = open_stream(&planner.address, "small", false).await;
    stream.until_json(&json!({"small": 2}), LIMIT).await;
    let started = std::time::Instant::now();
    stream.until_json(&json!({"small": 1}), LIMIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "aged out after {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
async fn ndjson_stream_follows_job_events_and_every_flavor_change() {
    let planner = spawn_planner().await;
    let publisher = Broker::connect(&planner.topology).await;
    create_flavor(&planner, "small", LABELS, 0).await;
    let mut all = open_stream(&planner.address, "_", false).await;
    let mut small = open_stream(&planner.address, "small", false).await;
    // The first line is the current map, at once (for every flavor, the new flavor may be a
    // NOTIFY round trip away); a single flavor that exists is always in it.
    all.until_json(&json!({"small": 0}), LIMIT).await;
    assert_eq!(
        serde_json::from_str::<Value>(&small.next(LIMIT).await.unwrap()).unwrap(),
        json!({"small": 0})
    );

    // Job events through the queue and the consumer.
    publisher
        .publish(&job(1, "queued", Duration::ZERO), "d1")
        .await;
    all.until_json(&json!({"small": 1}), LIMIT).await;
    small.until_json(&json!({"small": 1}), LIMIT).await;
    publisher
        .publish(&job(1, "in_progress", Duration::ZERO), "d2")
        .await;
    publisher
        .publish(&job(2, "queued", Duration::ZERO), "d3")
        .await;
    small.until_json(&json!({"small": 2}), LIMIT).await;

    // Flavor create, update, disable, delete.
    create_flavor(&planner, "big", &["gpu"], 5).await;
    all.until_json(&json!({"small": 2, "big": 5}), LIMIT).await;
    patch_flavor(&planner, "big", json!({"minimum_pressure": 7})).await;
    all.until_json(&json!({"small": 2, "big": 7}), LIMIT).await;
    patch_flavor(&planner, "small", json!({"is_disabled": true})).await;
    all.until_json(&json!({"small": 0, "big": 7}), LIMIT).await;
    small.until_json(&json!({"small": 0}), LIMIT).await;
    let response = planner
        .request(Method::DELETE, "/api/v1/flavors/small", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    all.until_json(&json!({"big": 7}), LIMIT).await;
    // A single-flavor stream of a deleted flavor shows the empty map.
    small.until_json(&json!({}), LIMIT).await;
}

#[actix_web::test]
async fn streams_send_heartbeats_and_sse_events() {
    let db = TestDb::new();
    let planner = TestPlanner::builder()
        .database(db.url())
        .tune(|config| config.stream_heartbeat = Duration::from_millis(300))
        .start()
        .await;
    create_flavor(&planner, "small", LABELS, 2).await;

    // NDJSON: with nothing changing, the current view is repeated at each heartbeat.
    let mut ndjson = open_stream(&planner.address, "small", false).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let line = ndjson.next(Duration::from_secs(3)).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"small": 2})
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(500));

    // SSE: an event with a growing id, then keep-alive comments, then a change.
    let mut sse = open_stream(&planner.address, "_", true).await;
    assert_eq!(sse.next(LIMIT).await.unwrap(), "event: pressure");
    let first_id: u64 = sse.next(LIMIT).await.unwrap()["id: ".len()..]
        .parse()
        .unwrap();
    assert_eq!(sse.next(LIMIT).await.unwrap(), r#"data: {"small":2}"#);
    assert_eq!(sse.next(LIMIT).await.unwrap(), "");
    assert_eq!(
        sse.next(Duration::from_secs(3)).await.unwrap(),
        ": keep-alive"
    );
    patch_flavor(&planner, "small", json!({"minimum_pressure": 4})).await;
    let mut id = None;
    loop {
        let line = sse.next(LIMIT).await.expect("stream open");
        if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.parse::<u64>().unwrap());
        }
        if line == r#"data: {"small":4}"# {
            break;
        }
    }
    assert!(id.unwrap() > first_id);
}

#[actix_web::test]
async fn pressure_needs_a_token_and_a_known_flavor_and_disconnects_release_subscriptions() {
    let planner = spawn_planner().await;
    create_flavor(&planner, "small", LABELS, 0).await;
    let token = planner.create_token("manager").await;

    for stream in [false, true] {
        let path = if stream {
            "/api/v1/flavors/small/pressure?stream=true"
        } else {
            "/api/v1/flavors/small/pressure"
        };
        let none = planner
            .request(Method::GET, path, None)
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
        let wrong = planner
            .request(Method::GET, path, Some("planner_v0_notavalidtokenatall"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let unknown = planner
            .request(
                Method::GET,
                &path.replace("small", "nope"),
                Some(ADMIN_TOKEN),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let body: Value = unknown.json().await.unwrap();
        assert_eq!(body, json!({"error": "flavor nope not found"}));
    }
    // A general token may read pressure.
    assert_eq!(
        get_pressure(&planner, "small", Some(&token)).await,
        (200, json!({"small": 0}))
    );

    // The planner follows its own broadcaster for the pressure gauge: count from there.
    let baseline = subscribers(&planner).await;
    let mut stream = open_stream(&planner.address, "_", false).await;
    stream.next(LIMIT).await.unwrap();
    assert_eq!(subscribers(&planner).await, baseline + 1);
    drop(stream);
    tests::eventually("the subscription to be released", LIMIT, || async {
        subscribers(&planner).await == baseline
    })
    .await;
}

/// `planner recount` rebuilds the open-job counts from the `job` table when they have gone
/// wrong behind the triggers' back, names the flavors it corrected, and every planner's streams
/// follow through `NOTIFY`, with no other change needed.
#[actix_web::test]
async fn planner_recount_repairs_wrong_counts_and_streams_follow() {
    let planner = spawn_planner().await;
    create_flavor(&planner, "small", LABELS, 0).await;
    create_flavor(&planner, "other", &["arm64"], 0).await;
    let mut stream = open_stream(&planner.address, "_", false).await;
    planner.seed(&job(1, "queued", Duration::ZERO), "d1");
    planner.seed(&job(2, "in_progress", Duration::ZERO), "d2");
    stream
        .until_json(&json!({"small": 2, "other": 0}), LIMIT)
        .await;

    // Counts written around the triggers (as a restore or a hand-made fix could leave them),
    // shown by the next recompute, which a flavor change causes.
    let db = planner.db.as_ref().expect("own database");
    diesel::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO job_open_delta (flavor, delta) VALUES ('small', 5), ('other', 1)",
        ),
        &mut db.connect(),
    )
    .unwrap();
    patch_flavor(&planner, "other", json!({"priority": 1})).await;
    stream
        .until_json(&json!({"small": 7, "other": 1}), LIMIT)
        .await;

    let log = planner_recount(db.url()).await;
    for fix in [
        "event=open_jobs_recounted flavor=other counted=1 actual=0",
        "event=open_jobs_recounted flavor=small counted=7 actual=2",
        "event=open_jobs_recount_done corrected_flavors=2",
    ] {
        assert!(log.contains(fix), "{fix} not in: {log}");
    }
    stream
        .until_json(&json!({"small": 2, "other": 0}), LIMIT)
        .await;

    // Right counts stay as they are.
    let log = planner_recount(db.url()).await;
    assert!(
        log.contains("event=open_jobs_recount_done corrected_flavors=0")
            && !log.contains("event=open_jobs_recounted"),
        "{log}"
    );
}

/// Runs `planner recount` on `database_url`; returns its log once it has succeeded.
async fn planner_recount(database_url: &str) -> String {
    let (status, log) = tests::process::run(
        "planner",
        &["recount"],
        &[("POSTGRESQL_DB_CONNECT_STRING", database_url)],
        LIMIT,
    )
    .await;
    assert!(status.success(), "{status}: {log}");
    log
}

/// A planner process on `database_url` and the AMQP names `amqp`, once its pressure calculator
/// listens for changes.
async fn spawn_process(
    database_url: &str,
    amqp: &str,
    extra: &[(&str, &str)],
) -> (Service, String) {
    let mut planner = PlannerProcess::new(database_url, amqp)
        .arg("--no-migrate")
        .wait_for("event=pressure_listening");
    for (key, value) in extra {
        planner = planner.env(key, value);
    }
    let Running { service, url, .. } = planner.start().await;
    (service, url)
}

#[actix_web::test]
async fn a_webhook_through_the_gateway_changes_the_streams_of_two_planner_processes() {
    let db = TestDb::new();
    let gateway = TestGateway::spawn(Options::default()).await;
    let (_a, a) = spawn_process(db.url(), &gateway.topology.queue, &[]).await;
    let (_b, b) = spawn_process(db.url(), &gateway.topology.queue, &[]).await;

    let client = reqwest::Client::new();
    let created = client
        .post(format!("{a}/api/v1/flavors/small"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"platform": "github", "labels": LABELS}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let mut on_a = open_stream(&a, "_", false).await;
    let mut on_b = open_stream(&b, "small", false).await;
    on_a.until_json(&json!({"small": 0}), LIMIT).await;
    on_b.until_json(&json!({"small": 0}), LIMIT).await;

    for id in 1..=2 {
        let body = serde_json::to_vec(&job(id, "queued", Duration::ZERO)).unwrap();
        let response = webhook(
            &client,
            &gateway.url,
            "workflow_job",
            &format!("delivery-{id}"),
            body,
            SECRET,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Whichever planner consumed each delivery, both streams see both jobs.
    on_a.until_json(&json!({"small": 2}), LIMIT).await;
    on_b.until_json(&json!({"small": 2}), LIMIT).await;
}

#[actix_web::test]
async fn shutdown_ends_open_streams_without_waiting_for_a_heartbeat() {
    let db = TestDb::new();
    let queues = TopologyGuard::unique();
    let topology = queues.topology();
    let (service, address) =
        spawn_process(db.url(), &topology.queue, &[("APP_STREAM_HEARTBEAT", "1h")]).await;
    let mut ndjson = open_stream(&address, "_", false).await;
    let mut sse = open_stream(&address, "_", true).await;
    assert_eq!(ndjson.next(LIMIT).await.unwrap(), "{}");
    assert_eq!(sse.next(LIMIT).await.unwrap(), "event: pressure");

    service.terminate();
    let started = std::time::Instant::now();
    assert_eq!(ndjson.next(Duration::from_secs(5)).await, None);
    loop {
        if sse.next(Duration::from_secs(5)).await.is_none() {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = service.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "planner exited with {status}");
}
