//! The pressure recompute that follows a consumed delivery joins the delivery's trace: a
//! `pressure broadcast` span, child of the `traceparent` the delivery carried. Its own test
//! binary, since it installs a global tracer provider.

use std::time::Duration;

use actors::telemetry::{OtlpTarget, TelemetryConfig, Tracing};
use serde_json::json;
use tests::{
    amqp::Broker,
    fixtures::job_payload,
    planner::{spawn_planner, ADMIN_TOKEN},
    telemetry::{attribute, OtlpReceiver},
};

#[actix_web::test]
async fn a_consumed_delivery_s_trace_continues_into_the_pressure_broadcast() {
    let mut receiver = OtlpReceiver::start();
    let tracing = Tracing::init(
        "planner-test",
        &TelemetryConfig {
            traces: Some(OtlpTarget::http(receiver.endpoint.clone())),
            ..TelemetryConfig::loopback()
        },
    )
    .expect("tracing");
    let planner = spawn_planner().await;
    let labels = ["self-hosted", "linux", "x64"];
    let response = planner
        .request(
            reqwest::Method::POST,
            "/api/v1/flavors/small",
            Some(ADMIN_TOKEN),
        )
        .json(&json!({"platform": "github", "labels": labels}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut body = job_payload("queued.1", 1, "queued", &labels);
    body["workflow_job"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
    let publisher = Broker::connect(&planner.topology).await;
    publisher
        .publish_with(
            &serde_json::to_vec(&body).unwrap(),
            Some("workflow_job"),
            Some("traced-1"),
            &[("traceparent", &format!("00-{trace_id}-{parent_id}-01"))],
        )
        .await;

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut earlier = Vec::new();
    let span = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let span = receiver.next(left).await;
        if span.name == "pressure broadcast" && hex(&span.trace_id) == trace_id {
            break span;
        }
        earlier.push(span);
    };
    // receive -> publish (here: the traceparent above) -> consume -> commit -> broadcast.
    let mut seen = earlier;
    seen.push(span.clone());
    let find_parent = |seen: &[opentelemetry_proto::tonic::trace::v1::Span], id: &[u8]| {
        seen.iter().find(|s| s.span_id == id).cloned()
    };
    while find_parent(&seen, &span.parent_span_id).is_none() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        seen.push(receiver.next(left).await);
    }
    let commit = find_parent(&seen, &span.parent_span_id).unwrap();
    assert_eq!(commit.name, "commit");
    while find_parent(&seen, &commit.parent_span_id).is_none() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        seen.push(receiver.next(left).await);
    }
    let consume = find_parent(&seen, &commit.parent_span_id).unwrap();
    assert_eq!(consume.name, "consume");
    assert_eq!(hex(&consume.parent_span_id), parent_id);
    assert_eq!(hex(&consume.trace_id), trace_id);
    let generation: u64 = attribute(&span, "pressure.generation")
        .expect("pressure.generation")
        .parse()
        .unwrap();
    assert!(generation > 0);
    tracing.shutdown();
    receiver.stop().await;
}
