//! The webhook gateway against the real local RabbitMQ.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use reqwest::StatusCode;
use tests::amqp::{Broker, TopologyGuard};
use tests::env::rabbitmq_address;
use tests::fixtures::fixture;
use tests::gateway::{webhook, Options, TestGateway, PREVIOUS_SECRET, SECRET};
use tests::process::GatewayProcess;
use tests::proxy::{Mode, TcpProxy};
use tests::{unique, within};

const WAIT: Duration = Duration::from_secs(10);

fn header<'a>(headers: &'a FieldTable, name: &str) -> &'a str {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => std::str::from_utf8(value.as_bytes()).unwrap(),
        other => panic!("header {name}: {other:?}"),
    }
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    body["error"].as_str().expect("error field").to_owned()
}

#[actix_rt::test]
async fn signed_delivery_arrives_byte_for_byte_with_its_headers() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let broker = Broker::connect(&gateway.topology).await;
    let mut queue = broker.consume(&gateway.topology.queue).await;
    let client = reqwest::Client::new();

    for name in ["queued.0", "waiting.0", "in_progress.1", "completed.0"] {
        let body = fixture(&format!("workflow_job/{name}.json"));
        let delivery = unique("delivery");
        let response = webhook(
            &client,
            &gateway.url,
            "workflow_job",
            &delivery,
            body.clone(),
            SECRET,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");

        let message = queue.next(WAIT).await;
        assert_eq!(message.data, body, "{name}: body changed on the way");
        assert_eq!(message.exchange.as_str(), gateway.topology.exchange);
        assert_eq!(message.routing_key.as_str(), "workflow-job");
        let properties = &message.properties;
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        let headers = properties.headers().as_ref().expect("headers");
        assert_eq!(header(headers, "X-GitHub-Event"), "workflow_job");
        assert_eq!(header(headers, "X-GitHub-Delivery"), delivery);
        assert_eq!(header(headers, "X-GitHub-Hook-ID"), "123456");
        assert_eq!(
            header(headers, "X-GitHub-Hook-Installation-Target-Type"),
            "organization"
        );
        assert_eq!(
            header(headers, "X-GitHub-Hook-Installation-Target-ID"),
            "7890"
        );
    }
    gateway.stop().await;
}

#[actix_rt::test]
async fn previous_secret_is_accepted_during_rotation() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let broker = Broker::connect(&gateway.topology).await;
    let mut queue = broker.consume(&gateway.topology.queue).await;
    let body = fixture("workflow_job/queued.0.json");
    let response = webhook(
        &reqwest::Client::new(),
        &gateway.url,
        "workflow_job",
        "rotated",
        body.clone(),
        PREVIOUS_SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(queue.next(WAIT).await.data, body);
    gateway.stop().await;
}

/// Every refused request gets its status and a JSON error, and publishes nothing: after all of
/// them one good delivery is sent, and it must be the first message on the queue.
#[actix_rt::test]
async fn rejections_answer_their_code_and_publish_nothing() {
    let gateway = TestGateway::spawn(Options {
        max_body_bytes: 16 * 1024,
        ..Options::default()
    })
    .await;
    let broker = Broker::connect(&gateway.topology).await;
    let client = reqwest::Client::new();
    let url = &gateway.url;
    let body = fixture("workflow_job/queued.0.json");
    let signed = |event: &str, body: Vec<u8>| webhook(&client, url, event, "d", body, SECRET);

    struct Case {
        name: &'static str,
        request: reqwest::RequestBuilder,
        status: StatusCode,
    }
    let oversized = {
        let mut big = br#"{"action":"queued","workflow_job":{"id":1},"pad":""#.to_vec();
        big.extend(std::iter::repeat_n(b'x', 17 * 1024));
        big.extend(br#""}"#);
        big
    };
    let chunked = {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..20).map(|_| Ok(vec![b' '; 1024])).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    };
    let cases = vec![
        Case {
            name: "empty signature",
            request: client
                .post(format!("{url}/webhook"))
                .header("X-GitHub-Event", "workflow_job")
                .header("X-Hub-Signature-256", "")
                .body(body.clone()),
            status: StatusCode::FORBIDDEN,
        },
        Case {
            name: "signature header missing entirely",
            request: client
                .post(format!("{url}/webhook"))
                .header("X-GitHub-Event", "workflow_job")
                .body(body.clone()),
            status: StatusCode::FORBIDDEN,
        },
        Case {
            name: "wrong secret",
            request: webhook(&client, url, "workflow_job", "d", body.clone(), "guess"),
            status: StatusCode::FORBIDDEN,
        },
        Case {
            name: "body altered after signing (replay)",
            request: signed("workflow_job", body.clone()).body(
                String::from_utf8(body.clone())
                    .unwrap()
                    .replace("queued", "complete"),
            ),
            status: StatusCode::FORBIDDEN,
        },
        Case {
            name: "body over the limit with Content-Length",
            request: signed("workflow_job", oversized.clone()),
            status: StatusCode::PAYLOAD_TOO_LARGE,
        },
        Case {
            name: "body over the limit, chunked",
            request: client
                .post(format!("{url}/webhook"))
                .header("X-GitHub-Event", "workflow_job")
                .header("X-Hub-Signature-256", gateway::webhook::sign(SECRET, b""))
                .body(chunked),
            status: StatusCode::PAYLOAD_TOO_LARGE,
        },
        Case {
            name: "no event header",
            request: client
                .post(format!("{url}/webhook"))
                .header("X-Hub-Signature-256", gateway::webhook::sign(SECRET, &body))
                .body(body.clone()),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            name: "workflow_job without workflow_job.id",
            request: signed(
                "workflow_job",
                br#"{"action":"queued","workflow_job":{}}"#.to_vec(),
            ),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            // PostgreSQL's bigint (the planner's column) cannot hold it: refused here, never
            // published to be dead-lettered by the planner.
            name: "workflow_job.id beyond bigint",
            request: signed(
                "workflow_job",
                br#"{"action":"queued","workflow_job":{"id":9223372036854775808}}"#.to_vec(),
            ),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            name: "workflow_job that is not JSON",
            request: signed("workflow_job", b"\xff\xfe not json".to_vec()),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            name: "workflow_job that is a JSON array",
            request: signed("workflow_job", b"[1,2,3]".to_vec()),
            status: StatusCode::BAD_REQUEST,
        },
        Case {
            name: "GET on /webhook",
            request: client.get(format!("{url}/webhook")),
            status: StatusCode::METHOD_NOT_ALLOWED,
        },
        Case {
            name: "PUT on /webhook",
            request: client.put(format!("{url}/webhook")).body(body.clone()),
            status: StatusCode::METHOD_NOT_ALLOWED,
        },
        Case {
            name: "unknown path",
            request: client.post(format!("{url}/hooks")).body(body.clone()),
            status: StatusCode::NOT_FOUND,
        },
    ];
    for case in cases {
        let response = case.request.send().await.unwrap();
        assert_eq!(response.status(), case.status, "{}", case.name);
        if case.status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(response.headers().contains_key("allow"), "{}", case.name);
        }
        let error = error_of(response).await;
        assert!(!error.is_empty(), "{}", case.name);
        assert!(!error.contains(SECRET), "{}", case.name);
    }

    // Answered but not forwarded.
    let ping = signed("ping", fixture("ping.json")).send().await.unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    let push = signed("push", br#"{"ref":"main"}"#.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), StatusCode::ACCEPTED);
    let text = push.text().await.unwrap();
    assert!(text.contains("ignored"), "{text}");

    // The sentinel must be the first and only message.
    let mut queue = broker.consume(&gateway.topology.queue).await;
    let sentinel = webhook(
        &client,
        url,
        "workflow_job",
        "sentinel",
        body.clone(),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(sentinel.status(), StatusCode::OK);
    let first = queue.next(WAIT).await;
    let headers = first.properties.headers().as_ref().unwrap();
    assert_eq!(header(headers, "X-GitHub-Delivery"), "sentinel");
    gateway.stop().await;
}

#[actix_rt::test]
async fn health_and_readiness() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client
        .get(format!("{}/ready", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let post = client
        .post(format!("{}/health", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    gateway.stop().await;
}

/// With the queue unbound, a mandatory publish comes back unroutable: 503, never a silent 200.
#[actix_rt::test]
async fn unroutable_delivery_is_503_not_dropped() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let broker = Broker::connect(&gateway.topology).await;
    broker.unbind_queue().await;
    let response = gateway
        .queued(&reqwest::Client::new(), "unroutable")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    gateway.stop().await;
}

/// A publish the broker refuses (a nack) is a 503, and the gateway starts over on a new
/// connection: broker-side state of the old channel (a quorum queue's leader before an
/// election) may go on refusing everything. Once the queue takes messages again, so does it.
#[actix_rt::test]
async fn a_refused_publish_is_503_and_the_gateway_reconnects() {
    let gateway = TestGateway::spawn(Options::default()).await;
    let broker = Broker::connect(&gateway.topology).await;
    let mut queue = broker.consume(&gateway.topology.queue).await;
    let refusing = broker.bind_refusing_queue().await;
    let client = reqwest::Client::new();
    let send = |delivery: &str| gateway.queued(&client, delivery).send();

    let mut status = gateway.status.subscribe();
    status.mark_unchanged();
    let refused = send("refused").await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    within(WAIT, "the gateway to drop its connection", status.changed())
        .await
        .expect("the status outlives the gateway's publisher");

    broker.delete_queue(&refusing).await;
    within(
        WAIT,
        "the gateway to reconnect",
        gateway.status.wait_for(actors::amqp::Status::Connected),
    )
    .await;
    assert_eq!(send("taken").await.unwrap().status(), StatusCode::OK);
    // The main queue took its copy of the refused one: the nack only says that not every
    // queue did (GitHub's retry of it is a duplicate the planner ignores).
    for delivery in ["refused", "taken"] {
        let message = queue.next(WAIT).await;
        let headers = message.properties.headers().as_ref().unwrap();
        assert_eq!(header(headers, "X-GitHub-Delivery"), delivery);
    }
    gateway.stop().await;
}

/// The broker connection is cut: webhooks get 503 with Retry-After within the publish timeout
/// and /ready says the broker is down; once it is back the gateway reconnects by itself and
/// publishes again.
#[actix_rt::test]
async fn broker_cut_gives_503_and_gateway_recovers_by_itself() {
    let proxy = TcpProxy::start(rabbitmq_address().await).await;
    let publish_timeout = Duration::from_secs(2);
    let gateway = TestGateway::spawn(Options {
        broker: Some(proxy.addr()),
        publish_timeout,
        ..Options::default()
    })
    .await;
    let broker = Broker::connect(&gateway.topology).await;
    let mut queue = broker.consume(&gateway.topology.queue).await;
    let client = reqwest::Client::new();
    let send = |delivery: &str| gateway.queued(&client, delivery).send();

    assert_eq!(send("before").await.unwrap().status(), StatusCode::OK);
    queue.next(WAIT).await;

    proxy.set(Mode::Cut);
    within(
        WAIT,
        "the gateway to notice the cut",
        gateway.status.wait_for(actors::amqp::Status::Connecting),
    )
    .await;
    let started = std::time::Instant::now();
    let response = send("during").await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() <= publish_timeout + Duration::from_millis(500));
    assert!(response.headers().contains_key("retry-after"));
    let ready = client
        .get(format!("{}/ready", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.unwrap().contains("broker"));

    proxy.set(Mode::Forward);
    within(
        Duration::from_secs(30),
        "the gateway to reconnect",
        gateway.status.wait_for(actors::amqp::Status::Connected),
    )
    .await;
    let after = send("after").await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    let message = queue.next(WAIT).await;
    let headers = message.properties.headers().as_ref().unwrap();
    assert_eq!(header(headers, "X-GitHub-Delivery"), "after");
    gateway.stop().await;
}

/// A broker that accepts the connection but never confirms: 503 once the publish timeout is
/// over, not a hung request.
#[actix_rt::test]
async fn stalled_broker_gives_503_after_the_publish_timeout() {
    let proxy = TcpProxy::start(rabbitmq_address().await).await;
    let publish_timeout = Duration::from_millis(800);
    let gateway = TestGateway::spawn(Options {
        broker: Some(proxy.addr()),
        publish_timeout,
        ..Options::default()
    })
    .await;
    proxy.set(Mode::Paused);
    let started = std::time::Instant::now();
    let response = gateway
        .queued(&reqwest::Client::new(), "stalled")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= publish_timeout);
    assert!(started.elapsed() < publish_timeout + Duration::from_secs(2));
    proxy.set(Mode::Forward);
    gateway.stop().await;
}

/// The real binary: SIGTERM while a publish waits for its confirm; the request still gets its
/// 200 once the broker answers, the message is on the queue, and the process exits 0.
#[actix_rt::test]
async fn sigterm_finishes_in_flight_publishes_and_exits_zero() {
    let proxy = TcpProxy::start(rabbitmq_address().await).await;
    let queues = TopologyGuard(actors::amqp::Topology::with_prefix(&unique("sigterm")));
    let topology = queues.topology();
    let running = GatewayProcess::new(&topology.queue)
        .broker_via(proxy.addr())
        .env("APP_PUBLISH_TIMEOUT", "10s")
        .start()
        .await;
    let (mut service, url) = (running.service, running.url);
    let broker = Broker::connect(topology).await;
    let mut queue = broker.consume(&broker.topology.queue).await;

    proxy.set(Mode::Paused);
    let body = fixture("workflow_job/completed.0.json");
    let delivery = unique("sigterm");
    let in_flight = tokio::spawn(
        webhook(
            &reqwest::Client::new(),
            &url,
            "workflow_job",
            &delivery,
            body.clone(),
            SECRET,
        )
        .send(),
    );
    within(
        WAIT,
        "the publish to reach the (stalled) broker",
        proxy.held_at_least(body.len() as u64),
    )
    .await;
    service.terminate();
    service.wait_for_log("graceful shutdown", WAIT).await;
    proxy.set(Mode::Forward);

    let response = within(WAIT, "the in-flight request", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The publisher stopped once, for good: its supervisor does not bring it back (the log
    // is read in order, so a restart would show before the gateway's last line).
    service.wait_for_log("event=gateway_stopped", WAIT).await;
    let log = service.log();
    assert!(log.contains("event=amqp_publisher_stopped"), "{log}");
    assert!(!log.contains("event=amqp_publisher_restarting"), "{log}");
    let status = service.wait(WAIT).await;
    assert_eq!(status.code(), Some(0));
    let message = queue.next(WAIT).await;
    let headers = message.properties.headers().as_ref().unwrap();
    assert_eq!(header(headers, "X-GitHub-Delivery"), delivery);
    assert_eq!(message.data, body);
}

#[actix_rt::test]
async fn bad_configuration_stops_start_up_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("APP_WEBHOOK_SECRET_VALUE", "s")],
            "RABBITMQ_CONNECT_STRING",
        ),
        (
            &[("RABBITMQ_CONNECT_STRING", "amqp://127.0.0.1:5672/%2f")],
            "APP_WEBHOOK_SECRET_VALUE",
        ),
        (
            &[
                ("RABBITMQ_CONNECT_STRING", "http://user:hunter2@127.0.0.1"),
                ("APP_WEBHOOK_SECRET_VALUE", "s"),
            ],
            "RABBITMQ_CONNECT_STRING",
        ),
        (
            &[
                ("RABBITMQ_CONNECT_STRING", "amqp://127.0.0.1:5672/%2f"),
                ("APP_WEBHOOK_SECRET_VALUE", "s"),
                ("APP_MAX_BODY_BYTES", "lots"),
            ],
            "APP_MAX_BODY_BYTES",
        ),
    ];
    for (vars, variable) in cases {
        let (status, stderr) = tests::process::run("gateway", &[], vars, WAIT).await;
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

#[actix_rt::test]
async fn metrics_count_every_outcome() {
    use tests::telemetry::Scrape;
    let gateway = TestGateway::spawn(Options::default()).await;
    let _broker = Broker::connect(&gateway.topology).await;
    let client = reqwest::Client::new();
    let body = fixture("workflow_job/queued.0.json");
    let send = |event: &str, secret: &str| {
        webhook(&client, &gateway.url, event, "m", body.clone(), secret).send()
    };
    assert_eq!(send("workflow_job", SECRET).await.unwrap().status(), 200);
    assert_eq!(send("workflow_job", "wrong").await.unwrap().status(), 403);
    assert_eq!(send("ping", SECRET).await.unwrap().status(), 200);

    let scrape = Scrape::get(&gateway.metrics_url).await;
    let prefix = "github_runner_webhook_gateway";
    assert_eq!(scrape.value(&format!("{prefix}_inbound_total")), 3.0);
    assert_eq!(scrape.value(&format!("{prefix}_inbound_errors_total")), 1.0);
    assert_eq!(
        scrape.value(&format!(
            "{prefix}_rejected_total{{reason=\"bad_signature\"}}"
        )),
        1.0
    );
    assert_eq!(
        scrape.value(&format!(
            "{prefix}_rejected_total{{reason=\"body_too_large\"}}"
        )),
        0.0
    );
    assert_eq!(scrape.value(&format!("{prefix}_ignored_total")), 1.0);
    assert_eq!(scrape.value(&format!("{prefix}_outbound_total")), 1.0);
    assert_eq!(
        scrape.value(&format!("{prefix}_outbound_errors_total")),
        0.0
    );
    assert_eq!(
        scrape.value(&format!("{prefix}_publish_confirm_seconds_count")),
        1.0
    );
    assert_eq!(scrape.value(&format!("{prefix}_broker_connected")), 1.0);
    for (status, count) in [("200", 2.0), ("403", 1.0)] {
        let labels = [
            ("http_route", "/webhook"),
            ("http_request_method", "POST"),
            ("http_response_status_code", status),
        ];
        let requests = scrape.sum_where("http_server_request_duration_seconds_count", &labels);
        assert_eq!(requests, count, "{status}");
    }
    gateway.stop().await;
}

/// With `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, the real binary exports a receive span and a
/// publish span (its child) to an OTLP/HTTP receiver, and the message on the queue carries the
/// publish span's context in `traceparent`.
#[actix_rt::test]
async fn traces_are_exported_and_the_context_travels_in_amqp_headers() {
    use tests::telemetry::{attribute, OtlpReceiver};
    let mut receiver = OtlpReceiver::start();
    let queues = TopologyGuard(actors::amqp::Topology::with_prefix(&unique("trace")));
    let topology = queues.topology();
    let broker = Broker::connect(topology).await;
    let mut queue = broker.consume(&topology.queue).await;
    let running = GatewayProcess::new(&topology.queue)
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &receiver.endpoint)
        .start()
        .await;
    let (service, url) = (running.service, running.url);
    let delivery = unique("traced");
    let response = webhook(
        &reqwest::Client::new(),
        &url,
        "workflow_job",
        &delivery,
        fixture("workflow_job/queued.1.json"),
        SECRET,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let message = queue.next(WAIT).await;
    let traceparent = header(
        message.properties.headers().as_ref().unwrap(),
        "traceparent",
    )
    .to_owned();

    // Shutdown flushes the batch exporter.
    service.terminate();
    let spans = receiver.until("webhook receive", WAIT).await;
    assert_eq!(service.wait(WAIT).await.code(), Some(0));
    let receive = spans.iter().find(|s| s.name == "webhook receive").unwrap();
    let publish = spans
        .iter()
        .find(|s| s.name.starts_with("publish"))
        .expect("a publish span");
    assert_eq!(publish.trace_id, receive.trace_id);
    assert_eq!(publish.parent_span_id, receive.span_id);
    assert_eq!(
        attribute(receive, "github.delivery_id").as_deref(),
        Some(delivery.as_str())
    );
    assert_eq!(
        attribute(receive, "github.event").as_deref(),
        Some("workflow_job")
    );
    assert_eq!(
        attribute(receive, "github.action").as_deref(),
        Some("queued")
    );
    assert_eq!(
        attribute(receive, "github.job_id").as_deref(),
        Some("12877621891")
    );
    let expected = format!("00-{}-{}-01", hex(&publish.trace_id), hex(&publish.span_id));
    assert_eq!(traceparent, expected);
    receiver.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flood beyond `APP_MAX_IN_FLIGHT` while the broker stalls: the excess is answered 503 at
/// once (not after the publish timeout, not queued), and the held publishes still complete.
#[actix_rt::test]
async fn publishes_beyond_the_in_flight_bound_get_fast_503s() {
    let proxy = TcpProxy::start(rabbitmq_address().await).await;
    let gateway = TestGateway::spawn(Options {
        broker: Some(proxy.addr()),
        publish_timeout: Duration::from_secs(20),
        max_in_flight: 2,
        ..Options::default()
    })
    .await;
    let _broker = Broker::connect(&gateway.topology).await;
    let client = reqwest::Client::new();
    let body = fixture("workflow_job/queued.0.json");
    proxy.set(Mode::Paused);
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(gateway.queued(&client, &format!("held-{i}")).send()))
        .collect();
    within(
        WAIT,
        "both publishes to reach the stalled broker",
        proxy.held_at_least(2 * body.len() as u64),
    )
    .await;
    let started = std::time::Instant::now();
    let excess = gateway.queued(&client, "excess").send().await.unwrap();
    assert_eq!(excess.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(excess.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(error_of(excess).await.contains("in flight"));

    proxy.set(Mode::Forward);
    for request in held {
        let response = within(WAIT, "a held publish", request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let scrape = tests::telemetry::Scrape::get(&gateway.metrics_url).await;
    assert_eq!(
        scrape.value("github_runner_webhook_gateway_rejected_total{reason=\"overloaded\"}"),
        1.0
    );
    gateway.stop().await;
}

/// A client that announces a body and then stalls is answered 408 once `APP_REQUEST_TIMEOUT`
/// is over; it cannot hold a worker forever.
#[actix_rt::test]
async fn slow_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gateway = TestGateway::spawn(Options {
        request_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {address}\r\nX-GitHub-Event: workflow_job\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 1000\r\n\r\n{{\"action\":"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = within(WAIT, "the 408", socket.read(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    gateway.stop().await;
}
