//! Observability of the planner and of the whole system: the planner's Prometheus metrics and
//! `/ready`, one trace from the gateway's webhook to the planner's commit (real binaries, real
//! OTLP/HTTP receiver), and the charms' dashboards and alert rules checked against what both
//! services really export.

use std::{collections::BTreeSet, path::Path, time::Duration};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tests::{
    amqp::{unique_topology, Broker, TopologyGuard},
    db::TestDb,
    env::{database_address, rabbitmq_address, with_address},
    eventually,
    fixtures::job_payload,
    gateway::{webhook, SECRET},
    planner::{spawn_planner, test_config, TestPlanner, ADMIN_TOKEN},
    promql,
    proxy::{Mode, TcpProxy},
    system::System,
    telemetry::{attribute, OtlpReceiver, Scrape},
    unique,
};

const WAIT: Duration = Duration::from_secs(30);
const SELF_HOSTED: [&str; 3] = ["self-hosted", "linux", "x64"];
const P: &str = "github_runner_planner";

/// A self-hosted job event with fixed times: created at T, started at T+42 s, completed at
/// T+142 s (so it waited 42 s and ran 100 s).
fn timed(id: i64, action: &str) -> Value {
    let fixture = match action {
        "queued" => "queued.1",
        "in_progress" => "in_progress.1",
        _ => "completed.0",
    };
    let mut body = job_payload(fixture, id, action, &SELF_HOSTED);
    let job = &mut body["workflow_job"];
    job["created_at"] = json!("2024-01-01T00:00:00Z");
    job["started_at"] = json!("2024-01-01T00:00:42Z");
    job["completed_at"] = if action == "completed" {
        json!("2024-01-01T00:02:22Z")
    } else {
        Value::Null
    };
    body
}

#[actix_web::test]
async fn planner_metrics_count_every_outcome_and_job_times() {
    let planner = spawn_planner().await;
    planner.create_flavor("small", &["x64"], 10).await;
    let publisher = Broker::connect(&planner.topology).await;
    publisher.publish(&timed(7, "queued"), "q7").await;
    publisher.publish(&timed(7, "queued"), "q7").await; // duplicate
    publisher.publish(&timed(7, "in_progress"), "p7").await;
    publisher.publish(&timed(7, "completed"), "c7").await;
    publisher
        .publish_raw(b"not json", Some("workflow_job"), Some("bad"))
        .await;
    let hosted = job_payload("queued.1", 8, "queued", &["ubuntu-latest"]);
    publisher.publish(&hosted, "hosted").await;
    planner.settled(6).await;
    let url = planner.metrics_url.clone();
    eventually(
        "the poison message is counted on the dead-letter queue",
        WAIT,
        || {
            let url = url.clone();
            async move {
                let scrape = Scrape::get(&url).await;
                scrape.value(&format!("{P}_queue_messages{{queue=\"dead_letter\"}}")) == 1.0
                    && scrape.value(&format!("{P}_queue_messages{{queue=\"jobs\"}}")) == 0.0
            }
        },
    )
    .await;
    let first = Scrape::get(&planner.metrics_url).await;
    // Out of order: `completed` first records both times; the late `in_progress` records none.
    publisher.publish(&timed(9, "completed"), "c9").await;
    publisher.publish(&timed(9, "in_progress"), "p9").await;
    planner.settled(8).await;

    let scrape = first;
    for action in ["queued", "in_progress", "completed"] {
        let series =
            format!("{P}_webhook_consumed_total{{event=\"{action}\",platform=\"github\"}}");
        assert_eq!(scrape.value(&series), 1.0, "{series}");
    }
    assert_eq!(scrape.value(&format!("{P}_webhook_duplicates_total")), 1.0);
    assert_eq!(scrape.value(&format!("{P}_webhook_discarded_total")), 1.0);
    assert_eq!(
        scrape.value(&format!(
            "{P}_webhook_dead_lettered_total{{reason=\"invalid\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "{P}_webhook_dead_lettered_total{{reason=\"refused\"}}"
        )),
        0.0
    );
    assert_eq!(scrape.value(&format!("{P}_webhook_errors_total")), 1.0);
    assert_eq!(
        scrape.value(&format!("{P}_webhook_processing_seconds_count")),
        6.0
    );
    // The job waited 42 s (created -> started) and ran 100 s (started -> completed), once.
    assert_eq!(
        scrape.value(&format!("{P}_webhook_job_waiting_seconds_count")),
        1.0
    );
    assert_eq!(
        scrape.value(&format!("{P}_webhook_job_waiting_seconds_sum")),
        42.0
    );
    assert_eq!(
        scrape.value(&format!("{P}_job_waiting_seconds_sum{{flavor=\"small\"}}")),
        42.0
    );
    assert_eq!(
        scrape.value(&format!(
            "{P}_job_waiting_seconds_count{{flavor=\"small\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value(&format!("{P}_webhook_job_running_seconds_sum")),
        100.0
    );
    assert_eq!(
        scrape.value(&format!("{P}_webhook_job_running_seconds_count")),
        1.0
    );
    assert_eq!(scrape.value(&format!("{P}_broker_connected")), 1.0);
    assert_eq!(scrape.value(&format!("{P}_database_reachable")), 1.0);
    assert_eq!(scrape.value(&format!("{P}_stream_subscribers")), 0.0);
    assert_eq!(
        scrape.value(&format!(
            "{P}_http_requests_total{{method=\"POST\",route=\"/api/v1/flavors/{{name}}\",status=\"201\"}}"
        )),
        1.0
    );
    // The route label is the pattern, never the raw path.
    assert!(
        !scrape
            .0
            .keys()
            .any(|key| key.contains("/api/v1/flavors/small")),
        "a raw path is a label"
    );
    assert_eq!(
        planner.job(7).await.expect("job 7")["status"],
        json!("completed")
    );

    let scrape = Scrape::get(&planner.metrics_url).await;
    for (series, value) in [
        ("webhook_job_waiting_seconds_count", 2.0),
        ("webhook_job_waiting_seconds_sum", 84.0),
        ("webhook_job_running_seconds_count", 2.0),
        ("webhook_job_running_seconds_sum", 200.0),
        ("job_waiting_seconds_count{flavor=\"small\"}", 2.0),
        ("webhook_processing_seconds_count", 8.0),
    ] {
        assert_eq!(scrape.value(&format!("{P}_{series}")), value, "{series}");
    }
}

async fn ready(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client
        .get(format!("{url}/ready"))
        .send()
        .await
        .expect("GET /ready");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// Waits until `/ready` answers `status` with exactly `failing` (empty for 200).
async fn ready_becomes(client: &reqwest::Client, url: &str, failing: &[&str]) -> Value {
    let expected = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = ready(client, url).await;
        let names: Vec<&str> = body["failing"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if status == expected && names == failing {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never answered {expected} failing {failing:?}; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn ready_names_each_unreachable_dependency() {
    let db = TestDb::new();
    let database = TcpProxy::start(database_address().await).await;
    let broker = TcpProxy::start(rabbitmq_address().await).await;
    let topology = unique_topology();
    let _queues = TopologyGuard(topology.clone());
    let planner = TestPlanner::builder()
        .database(db.url())
        .database_via(database.addr())
        .broker_via(broker.addr())
        .topology(&topology)
        .start()
        .await;
    let client = reqwest::Client::new();
    let url = planner.address.clone();

    let (status, body) = ready(&client, &url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    let health = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // A stalled database: `/ready` does not hang, it answers 503 after its short timeout.
    database.set(Mode::Paused);
    let started = std::time::Instant::now();
    let (status, body) = ready(&client, &url).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["failing"], json!(["database"]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/ready took {:?}",
        started.elapsed()
    );
    database.set(Mode::Forward);
    ready_becomes(&client, &url, &[]).await;

    database.set(Mode::Cut);
    let body = ready_becomes(&client, &url, &["database"]).await;
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    let scrape = Scrape::get(&planner.metrics_url).await;
    assert_eq!(scrape.value(&format!("{P}_database_reachable")), 0.0);
    // Liveness does not depend on the database.
    let health = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    database.set(Mode::Forward);
    ready_becomes(&client, &url, &[]).await;

    broker.set(Mode::Cut);
    let body = ready_becomes(&client, &url, &["broker"]).await;
    assert!(body["error"].as_str().unwrap().contains("broker"), "{body}");
    let scrape = Scrape::get(&planner.metrics_url).await;
    assert_eq!(scrape.value(&format!("{P}_broker_connected")), 0.0);
    assert_eq!(scrape.value(&format!("{P}_database_reachable")), 1.0);

    database.set(Mode::Cut);
    ready_becomes(&client, &url, &["broker", "database"]).await;

    database.set(Mode::Forward);
    broker.set(Mode::Forward);
    ready_becomes(&client, &url, &[]).await;
    let scrape = Scrape::get(&planner.metrics_url).await;
    assert_eq!(scrape.value(&format!("{P}_broker_connected")), 1.0);
    assert!(scrape.value(&format!("{P}_broker_connect_attempts_total")) >= 2.0);
    assert!(
        scrape.value(&format!(
            "{P}_http_requests_total{{method=\"GET\",route=\"/ready\",status=\"503\"}}"
        )) >= 3.0
    );
}

/// Sends a signed webhook through the gateway; expects 200.
async fn send_webhook(system: &System, body: &Value, delivery: &str) {
    let response = webhook(
        &reqwest::Client::new(),
        &system.gateway_url,
        "workflow_job",
        delivery,
        serde_json::to_vec(body).unwrap(),
        SECRET,
    )
    .send()
    .await
    .expect("POST /webhook");
    assert_eq!(response.status(), StatusCode::OK, "webhook {delivery}");
}

/// Waits until the planner's API shows job `id` with `status`.
async fn job_reaches(system: &System, id: i64, status: &str) {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/jobs/github/{id}", system.planner_url);
    eventually(
        &format!("job {id} is {status} in the planner"),
        WAIT,
        || {
            let request = client.get(&url).bearer_auth(ADMIN_TOKEN).send();
            async move {
                match request.await {
                    Ok(response) if response.status() == StatusCode::OK => response
                        .json::<Value>()
                        .await
                        .is_ok_and(|job| job["status"] == status),
                    _ => false,
                }
            }
        },
    )
    .await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The real gateway and planner binaries export to one OTLP receiver: one trace runs from the
/// webhook's receipt to the planner's commit, with the right parents and attributes.
#[actix_web::test]
async fn one_trace_from_webhook_to_pressure_broadcast() {
    let mut receiver = OtlpReceiver::start();
    let system = System::start(Some(&receiver.endpoint)).await;
    let delivery = unique("traced");
    let id = 424_242;
    send_webhook(&system, &timed(id, "queued"), &delivery).await;
    job_reaches(&system, id, "queued").await;
    // SIGTERM flushes both services' batch exporters.
    system.stop().await;

    let wanted = ["webhook receive", "publish", "consume", "commit"];
    let mut spans: Vec<opentelemetry_proto::tonic::trace::v1::Span> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // The planner's calculator also traces recomputes of its own (start-up), each a root span
    // of another trace: the one wanted here is the child of this delivery's commit.
    let broadcast_of = |spans: &[opentelemetry_proto::tonic::trace::v1::Span]| {
        let commit = spans.iter().find(|s| s.name == "commit")?;
        spans
            .iter()
            .find(|s| s.name == "pressure broadcast" && s.parent_span_id == commit.span_id)
            .cloned()
    };
    while !wanted
        .iter()
        .all(|name| spans.iter().any(|s| s.name.starts_with(name)))
        || broadcast_of(&spans).is_none()
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "missing spans; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        spans.push(receiver.next(left).await);
    }
    let find = |name: &str| {
        let found: Vec<_> = spans.iter().filter(|s| s.name.starts_with(name)).collect();
        assert_eq!(found.len(), 1, "one {name} span expected");
        found[0]
    };
    let (receive, publish, consume, commit) = (
        find("webhook receive"),
        find("publish"),
        find("consume"),
        find("commit"),
    );
    let trace = hex(&receive.trace_id);
    for span in [publish, consume, commit] {
        assert_eq!(
            hex(&span.trace_id),
            trace,
            "{} is in another trace",
            span.name
        );
    }
    assert_eq!(publish.parent_span_id, receive.span_id);
    assert_eq!(consume.parent_span_id, publish.span_id);
    assert_eq!(commit.parent_span_id, consume.span_id);
    // Kinds: server, producer, consumer (OTLP numbering).
    assert_eq!(receive.kind, 2);
    assert_eq!(publish.kind, 4);
    assert_eq!(consume.kind, 5);
    for span in [receive, publish, consume] {
        assert_eq!(
            attribute(span, "github.delivery_id").as_deref(),
            Some(delivery.as_str()),
            "{}",
            span.name
        );
    }
    assert_eq!(
        attribute(consume, "github.event").as_deref(),
        Some("workflow_job")
    );
    assert_eq!(
        attribute(consume, "github.action").as_deref(),
        Some("queued")
    );
    assert_eq!(attribute(consume, "github.job_id"), Some(id.to_string()));
    assert_eq!(
        attribute(consume, "planner.outcome").as_deref(),
        Some("applied")
    );
    assert_eq!(
        attribute(commit, "db.system").as_deref(),
        Some("postgresql")
    );
    // The commit happens inside the consume span.
    assert!(commit.start_time_unix_nano >= consume.start_time_unix_nano);
    assert!(commit.end_time_unix_nano <= consume.end_time_unix_nano);
    // ... and the pressure recompute it caused closes the trace.
    let broadcast = broadcast_of(&spans).unwrap();
    assert_eq!(hex(&broadcast.trace_id), trace);
    assert!(attribute(&broadcast, "pressure.generation").is_some());
    receiver.stop().await;
}

/// Fails on a log line that shows any of `forbidden`, or on a line of the services' own code
/// (targets `gateway`, `planner`, `actors`) that is not `<message> event=<snake_case> key=value
/// ...`: a message with no field formatted into it, then the fields, `event` first.
fn check_log_lines(service: &str, log: &str, forbidden: &[&str]) {
    for line in log.lines() {
        for word in forbidden {
            assert!(!line.contains(word), "{service} logged {word:?}: {line}");
        }
        // env_logger: `[<time> <LEVEL> <target>] <message>`.
        let Some((head, message)) = line.split_once("] ") else {
            continue;
        };
        let target = head.rsplit(' ').next().unwrap_or_default();
        let ours = ["gateway", "planner", "actors"].iter().any(|crate_name| {
            target == *crate_name || target.starts_with(&format!("{crate_name}::"))
        });
        if ours {
            let (text, fields) = message
                .split_once(" event=")
                .unwrap_or_else(|| panic!("{service}: no event field: {line}"));
            assert!(
                !text.is_empty() && !text.contains('='),
                "{service}: a field formatted into the message: {line}"
            );
            let fields = format!("event={fields}");
            let fields = parse_fields(&fields)
                .unwrap_or_else(|| panic!("{service}: fields not key=value: {line}"));
            let event = fields[0].1;
            assert!(
                !event.is_empty()
                    && event
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{service}: event is not a snake_case name: {line}"
            );
        }
    }
}

/// `key=value key="quoted \"value\"" ...` as pairs (quoted values still quoted); `None`
/// unless the whole text is such pairs, one space apart.
fn parse_fields(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut fields = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let end = if let Some(quoted) = after.strip_prefix('"') {
            let mut escaped = false;
            let close = quoted.find(|c| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })?;
            close + 2
        } else {
            after.find(' ').unwrap_or(after.len())
        };
        fields.push((key, &after[..end]));
        rest = match &after[end..] {
            "" => "",
            more => more.strip_prefix(' ')?,
        };
    }
    Some(fields)
}

#[test]
fn log_fields_are_parsed_as_the_services_write_them() {
    assert_eq!(
        parse_fields(r#"event=x error="a \"b\" c" n=1"#),
        Some(vec![
            ("event", "x"),
            ("error", r#""a \"b\" c""#),
            ("n", "1")
        ])
    );
    assert_eq!(parse_fields("event=x stray"), None);
    assert_eq!(parse_fields(r#"event=x error="open"#), None);
    assert_eq!(parse_fields("event=x  n=1"), None);
}

/// Metrics a service declares but does not set yet, so no series exists for them (none
/// today; a dashboard may name one only while it is listed here).
const AWAITING_WIRING: &[&str] = &[];

/// Every PromQL expression of the charms' dashboards and alert rules, with where it comes from.
fn charm_expressions() -> Vec<(String, String)> {
    let charms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charms");
    let sources: Vec<_> = std::fs::read_dir(&charms)
        .expect("charms/")
        .map(|charm| charm.expect("entry").path().join("src"))
        .collect();
    let found = promql::Expressions::under(&sources);
    assert!(
        found.dashboards >= 2,
        "dashboards not found under {}",
        charms.display()
    );
    assert!(
        found.rule_files >= 2,
        "alert rules not found under {}",
        charms.display()
    );
    found.expressions
}

/// The test the observability issue asks for: run the system, make traffic so that labelled
/// series exist, scrape both `/metrics`, and fail naming every metric a dashboard or alert
/// rule uses that neither service exports.
#[actix_web::test]
async fn dashboards_and_alerts_only_use_exported_metrics() {
    let system = System::start(None).await;
    let client = reqwest::Client::new();
    let flavor = client
        .post(format!("{}/api/v1/flavors/small", system.planner_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"platform": "github", "labels": ["x64"], "priority": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(flavor.status(), StatusCode::CREATED);
    for action in ["queued", "in_progress", "completed"] {
        send_webhook(&system, &timed(99, action), &unique(action)).await;
    }
    job_reaches(&system, 99, "completed").await;
    let rejected = webhook(
        &client,
        &system.gateway_url,
        "workflow_job",
        "bad",
        b"{}".to_vec(),
        "wrong secret",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    for url in [&system.planner_url, &system.gateway_url] {
        let response = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let mut exported = Scrape::get(&system.gateway_metrics).await.names();
    exported.extend(Scrape::get(&system.planner_metrics).await.names());
    exported.extend(promql::PROMETHEUS_SERIES.iter().map(|s| s.to_string()));
    exported.extend(AWAITING_WIRING.iter().map(|s| s.to_string()));

    let expressions = charm_expressions();
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (from, expr) in &expressions {
        for name in promql::metric_names(expr) {
            if !exported.contains(&name) {
                missing.push(format!("{name} (in {from}: {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "dashboards or alert rules use metrics neither service exports:\n{}",
        missing.join("\n")
    );
    // The services' own log lines are `<message> event=... key=value`, with no secret and no
    // payload.
    let payload = [
        "16c5286e8d9a0629956a28938386b36608707a71",
        "elastic-machines-testing",
    ];
    let secrets = [ADMIN_TOKEN, SECRET, "guest:guest", "postgres:postgres"];
    for (service, log) in [
        ("gateway", system.gateway.log()),
        ("planner", system.planner.log()),
    ] {
        assert!(log.contains("event="), "{service} logged nothing: {log}");
        check_log_lines(service, &log, &[&secrets[..], &payload[..]].concat());
    }
    // The dashboards cover what the issue lists.
    for needed in [
        "github_runner_webhook_gateway_rejected_total",
        "github_runner_webhook_gateway_publish_confirm_seconds_bucket",
        "github_runner_webhook_gateway_http_requests_total",
        "github_runner_planner_webhook_processing_seconds_bucket",
        "github_runner_planner_webhook_dead_lettered_total",
        "github_runner_planner_queue_messages",
        "github_runner_planner_flavor_pressure",
        "github_runner_planner_job_waiting_seconds_bucket",
        "github_runner_planner_stream_subscribers",
        "github_runner_planner_http_requests_total",
        "github_runner_planner_broker_connected",
        "github_runner_webhook_gateway_broker_connected",
    ] {
        assert!(used.contains(needed), "no dashboard or rule shows {needed}");
    }
    system.stop().await;
}

/// In-process: while PostgreSQL is away, each failed attempt to store a delivery is an event on
/// its `commit` span, which ends once the retried transaction commits.
#[actix_web::test]
async fn commit_span_records_failed_attempts_while_the_database_is_away() {
    let mut receiver = OtlpReceiver::start();
    let db = TestDb::new();
    let database = TcpProxy::start(database_address().await).await;
    let topology = unique_topology();
    let _queues = TopologyGuard(topology.clone());
    let mut config = test_config(&with_address(db.url(), database.addr()), topology.clone());
    config.telemetry.otlp_traces_endpoint = Some(receiver.endpoint.clone());
    let tracing = actors::telemetry::Tracing::init("planner-test", &config.telemetry).unwrap();
    let planner = TestPlanner::start_with(config).await;
    let publisher = Broker::connect(&topology).await;

    database.set(Mode::Cut);
    publisher.publish(&timed(5, "queued"), "q5").await;
    let stats = planner.stats.clone();
    eventually("a failed attempt to store", WAIT, || {
        let stats = stats.clone();
        async move {
            stats
                .store_failures
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1
        }
    })
    .await;
    database.set(Mode::Forward);
    planner.settled(1).await;
    // Flushes the exporter.
    tokio::task::spawn_blocking(move || tracing.shutdown())
        .await
        .unwrap();

    let spans = receiver.until("commit", WAIT).await;
    let commit = spans.last().unwrap();
    assert!(
        commit
            .events
            .iter()
            .any(|event| event.name == "store_failed"),
        "no store_failed event on {commit:?}"
    );
    assert_eq!(
        commit.status.as_ref().map_or(0, |status| status.code),
        0,
        "a commit that finally succeeded is not an error"
    );
    receiver.stop().await;
}
