//! Spawning the planner in-process on port 0 with its own database and AMQP names, and talking
//! to it and to its queues.

use std::{future::Future, sync::Arc, time::Duration};

use actors::amqp::Topology;
use lapin::{
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection,
};
use planner::{
    config::Config,
    consumer::ConsumerStats,
    domain::{
        job::JobEvent,
        labels::IgnoredLabels,
        webhook::{classify, Classified, Headers},
    },
    startup::Application,
    store::{apply_batch, PgPool},
};
use serde_json::Value;

use crate::db::{rabbitmq_url, TestDb};

/// The admin token of every test planner.
pub const ADMIN_TOKEN: &str = "planner_v0_testtesttesttesttest";

/// A planner running in this process.
pub struct TestPlanner {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// `http://127.0.0.1:<metrics port>/metrics`.
    pub metrics_url: String,
    pub topology: Topology,
    pub stats: Arc<ConsumerStats>,
    pub pool: PgPool,
    pub http: reqwest::Client,
    /// The database, when this planner owns it.
    pub db: Option<TestDb>,
    /// The queues and exchanges, when this planner owns them.
    pub queues: Option<TopologyGuard>,
    /// Its pressure broadcaster.
    pub broadcaster: actix::Addr<actors::broadcast::Broadcaster>,
}

/// Deletes a test topology's queues and exchanges on `Drop`, even when the test panics.
pub struct TopologyGuard(pub Topology);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let topology = self.0.clone();
        // Drop cannot await, and may run inside a runtime: use a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let Ok(connection) = actors::amqp::connect(
                    &rabbitmq_url(),
                    "planner-tests-cleanup",
                    Duration::from_secs(5),
                )
                .await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    delete_topology(&channel, &topology).await;
                }
                let _ = connection.close(200, "bye".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn delete_topology(channel: &Channel, topology: &Topology) {
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// A topology no other test uses.
pub fn unique_topology() -> Topology {
    Topology::with_prefix(&format!("planner-test-{}", uuid::Uuid::new_v4().simple()))
}

/// A planner with its own database and its own queues.
pub async fn spawn_planner() -> TestPlanner {
    spawn_planner_tuned(|_| {}).await
}

/// Like [`spawn_planner`], with `tune` changing the test configuration first.
pub async fn spawn_planner_tuned(tune: impl FnOnce(&mut Config)) -> TestPlanner {
    let db = TestDb::new();
    let topology = unique_topology();
    let guard = TopologyGuard(topology.clone());
    let mut config = Config::for_tests(db.url(), &rabbitmq_url(), ADMIN_TOKEN, topology);
    tune(&mut config);
    let mut planner = spawn_planner_with(config).await;
    planner.db = Some(db);
    planner.queues = Some(guard);
    planner
}

/// A planner on a given database (URL) and topology; several may share them.
pub async fn spawn_planner_on(database_url: &str, topology: Topology) -> TestPlanner {
    spawn_planner_with(Config::for_tests(
        database_url,
        &rabbitmq_url(),
        ADMIN_TOKEN,
        topology,
    ))
    .await
}

/// A planner from a full configuration (built with [`Config::for_tests`]).
pub async fn spawn_planner_with(config: Config) -> TestPlanner {
    let topology = config.topology.clone();
    let app = Application::build(config).await.expect("planner builds");
    let planner = TestPlanner {
        address: format!("http://127.0.0.1:{}", app.port()),
        metrics_url: format!("http://127.0.0.1:{}/metrics", app.metrics_port()),
        topology,
        stats: app.stats(),
        pool: app.pool(),
        http: reqwest::Client::new(),
        db: None,
        queues: None,
        broadcaster: app.broadcaster(),
    };
    actix_web::rt::spawn(app.run_until_stopped());
    let stats = planner.stats.clone();
    eventually(
        "the consumer registers with the broker",
        Duration::from_secs(20),
        || {
            let stats = stats.clone();
            async move { stats.consuming.load(std::sync::atomic::Ordering::SeqCst) }
        },
    )
    .await;
    planner
}

impl TestPlanner {
    /// `GET`/`POST`/... `path` with an optional bearer token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Creates a general token through the API.
    pub async fn create_token(&self, name: &str) -> String {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/auth/token/{name}"),
                Some(ADMIN_TOKEN),
            )
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Creates a flavor through the API.
    pub async fn create_flavor(&self, name: &str, labels: &[&str], priority: i64) {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/flavors/{name}"),
                Some(ADMIN_TOKEN),
            )
            .json(
                &serde_json::json!({"platform": "github", "labels": labels, "priority": priority}),
            )
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A job as the API shows it (`None`: 404).
    pub async fn job(&self, id: i64) -> Option<Value> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/jobs/github/{id}"),
                Some(ADMIN_TOKEN),
            )
            .send()
            .await
            .expect("request");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("json")),
            404 => None,
            other => panic!("GET job {id}: {other}"),
        }
    }

    /// Applies a webhook body straight through the job store (no queue), for API tests.
    pub fn seed(&self, body: &Value, delivery: &str) {
        let mut conn = self.pool.get().expect("database connection");
        apply_batch(
            &mut conn,
            &IgnoredLabels::default(),
            &[job_event(body, delivery)],
        )
        .expect("apply");
    }

    /// Waits until the consumer has settled at least `count` deliveries.
    pub async fn settled(&self, count: u64) {
        let stats = self.stats.clone();
        eventually(
            &format!("{count} deliveries settled"),
            Duration::from_secs(30),
            || {
                let stats = stats.clone();
                async move { stats.settled() >= count }
            },
        )
        .await;
    }
}

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fixture from `tests/fixtures/workflow_job/<name>.json`.
pub fn fixture(name: &str) -> Value {
    // Read and parsed once per process: the benchmarks build tens of thousands of bodies.
    static PARSED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Value>>> =
        std::sync::LazyLock::new(Default::default);
    let mut parsed = PARSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    parsed
        .entry(name.to_owned())
        .or_insert_with(|| {
            serde_json::from_slice(&crate::fixtures::fixture(&format!(
                "workflow_job/{name}.json"
            )))
            .expect("fixture JSON")
        })
        .clone()
}

/// A webhook body delivered as `delivery`, as the consumer hands it to the job store; panics
/// unless it is a self-hosted job event.
pub fn job_event(body: &Value, delivery: &str) -> (String, JobEvent) {
    let headers = Headers {
        event: Some("workflow_job".into()),
        delivery: Some(delivery.into()),
    };
    match classify(&headers, &serde_json::to_vec(body).unwrap()) {
        Ok(Classified::Apply { delivery, event }) => (delivery, *event),
        other => panic!("not a self-hosted job event: {other:?}"),
    }
}

/// `body` as a self-hosted job with `labels`, id `id` and action `action`.
pub fn job_payload(name: &str, id: i64, action: &str, labels: &[&str]) -> Value {
    let mut body = fixture(name);
    body["action"] = action.into();
    body["workflow_job"]["id"] = id.into();
    body["workflow_job"]["status"] = action.into();
    body["workflow_job"]["labels"] = labels.into();
    body
}

/// A publisher onto a test topology, like the gateway's.
pub struct TestPublisher {
    _connection: Connection,
    channel: Channel,
    topology: Topology,
}

impl TestPublisher {
    /// Connects, declares the topology and enables publisher confirms.
    pub async fn connect(topology: &Topology) -> Self {
        let connection =
            actors::amqp::connect(&rabbitmq_url(), "planner-tests", Duration::from_secs(10))
                .await
                .unwrap_or_else(|err| {
                    panic!("cannot reach RabbitMQ at TEST_RABBITMQ_URL (or the default): {err}")
                });
        let channel = connection.create_channel().await.expect("channel");
        topology.declare(&channel).await.expect("declare topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        Self {
            _connection: connection,
            channel,
            topology: topology.clone(),
        }
    }

    /// Publishes raw bytes with the gateway's headers (`None` leaves a header out).
    pub async fn publish_raw(&self, body: &[u8], event: Option<&str>, delivery: Option<&str>) {
        self.publish_with(body, event, delivery, &[]).await;
    }

    /// Like [`TestPublisher::publish_raw`], with `extra` headers (e.g. `traceparent`).
    pub async fn publish_with(
        &self,
        body: &[u8],
        event: Option<&str>,
        delivery: Option<&str>,
        extra: &[(&str, &str)],
    ) {
        let confirm = self.send(body, event, delivery, extra).await;
        confirmed(confirm.await);
    }

    /// Publishes `workflow_job` deliveries (body, delivery id) in order, up to `in_flight` of
    /// them awaiting their confirms at once; returns when the broker has confirmed every one.
    pub async fn publish_all(&self, messages: Vec<(Vec<u8>, String)>, in_flight: usize) {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut pending = FuturesUnordered::new();
        for (body, delivery) in messages {
            if pending.len() >= in_flight {
                confirmed(pending.next().await.expect("a pending confirm"));
            }
            pending.push(
                self.send(&body, Some("workflow_job"), Some(&delivery), &[])
                    .await,
            );
        }
        while let Some(confirmation) = pending.next().await {
            confirmed(confirmation);
        }
    }

    /// Publishes one message with the gateway's headers (`None` leaves a header out) and
    /// properties; the answer resolves on the broker's confirm.
    async fn send(
        &self,
        body: &[u8],
        event: Option<&str>,
        delivery: Option<&str>,
        extra: &[(&str, &str)],
    ) -> lapin::PublisherConfirm {
        let mut headers = FieldTable::default();
        for (name, value) in extra {
            headers.insert(
                ShortString::from(*name),
                AMQPValue::LongString((*value).into()),
            );
        }
        if let Some(event) = event {
            headers.insert(
                ShortString::from("X-GitHub-Event"),
                AMQPValue::LongString(event.into()),
            );
        }
        if let Some(delivery) = delivery {
            headers.insert(
                ShortString::from("X-GitHub-Delivery"),
                AMQPValue::LongString(delivery.into()),
            );
        }
        headers.insert(
            ShortString::from("X-GitHub-Hook-ID"),
            AMQPValue::LongString("1".into()),
        );
        self.channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                self.topology.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .expect("publish")
    }

    /// Publishes a `workflow_job` webhook body.
    pub async fn publish(&self, body: &Value, delivery: &str) {
        self.publish_raw(
            &serde_json::to_vec(body).unwrap(),
            Some("workflow_job"),
            Some(delivery),
        )
        .await;
    }

    /// Takes every message from the dead-letter queue: (delivery id header, body).
    pub async fn drain_dead_letters(&self) -> Vec<(Option<String>, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get")
        {
            let delivery = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get("X-GitHub-Delivery").cloned())
                .and_then(|value| match value {
                    AMQPValue::LongString(value) => {
                        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
                    }
                    _ => None,
                });
            out.push((delivery, message.delivery.data.clone()));
        }
        out
    }

    /// Takes messages from the dead-letter queue until there are `count`; panics after `timeout`.
    pub async fn wait_dead_letters(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<(Option<String>, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut dead = Vec::new();
        loop {
            dead.extend(self.drain_dead_letters().await);
            if dead.len() >= count {
                return dead;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} with {} of {count} dead letters",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes the test's queues and exchanges.
    pub async fn delete_topology(&self) {
        delete_topology(&self.channel, &self.topology).await;
    }
}

/// Fails unless the broker acknowledged a publish.
fn confirmed(confirmation: lapin::Result<lapin::Confirmation>) {
    let confirmation = confirmation.expect("confirm");
    assert!(confirmation.is_ack(), "broker did not ack the publish");
}

/// Who may call a route of the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (`/health`, `/ready`, `/api/v1/openapi.json`).
    Public,
    /// Any valid token, general or admin.
    Token,
    /// The admin token only.
    Admin,
}

/// One operation of the REST API as a client calls it successfully, once [`prepare_routes`]
/// has made what it needs. Every test that goes over "every route" takes them from
/// [`api_routes`], which a test checks against the OpenAPI document.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    pub method: reqwest::Method,
    /// The path pattern, as the OpenAPI document names it (`/api/v1/flavors/{name}`).
    pub pattern: &'static str,
    /// The path to call; `{who}` stands for a caller's name, so that calls with side effects
    /// (creating, deleting) by different callers do not meet.
    pub path: &'static str,
    pub access: Access,
    /// The JSON body, for routes that take one.
    pub body: Option<Value>,
    /// The answer to a call with the right credential.
    pub success: reqwest::StatusCode,
}

impl ApiRoute {
    /// The path for caller `who`.
    pub fn path_for(&self, who: &str) -> String {
        self.path.replace("{who}", who)
    }

    /// The request for caller `who`, with `authorization` as the raw `Authorization` value.
    pub fn request(
        &self,
        planner_url: &str,
        client: &reqwest::Client,
        who: &str,
        authorization: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = client.request(
            self.method.clone(),
            format!("{planner_url}{}", self.path_for(who)),
        );
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        request
    }
}

/// A line of [`ROUTES`]: method, pattern, path (`{who}`: the caller's name), who may call it,
/// JSON body, and the answer.
type RouteLine = (
    &'static str,
    &'static str,
    &'static str,
    Access,
    Option<&'static str>,
    u16,
);

/// Every route of the REST API, with a call that succeeds.
#[rustfmt::skip]
const ROUTES: &[RouteLine] = &[
    ("GET",    "/health",                         "/health",                                    Access::Public, None,                                          200),
    ("GET",    "/ready",                          "/ready",                                     Access::Public, None,                                          200),
    ("GET",    "/api/v1/openapi.json",            "/api/v1/openapi.json",                       Access::Public, None,                                          200),
    ("GET",    "/api/v1/flavors",                 "/api/v1/flavors",                            Access::Token,  None,                                          200),
    ("POST",   "/api/v1/flavors/{name}",          "/api/v1/flavors/new-{who}",                  Access::Token,  Some(r#"{"platform":"github","labels":["x64"]}"#), 201),
    ("GET",    "/api/v1/flavors/{name}",          "/api/v1/flavors/small",                      Access::Token,  None,                                          200),
    ("PATCH",  "/api/v1/flavors/{name}",          "/api/v1/flavors/small",                      Access::Token,  Some(r#"{"minimum_pressure":1}"#),             204),
    ("DELETE", "/api/v1/flavors/{name}",          "/api/v1/flavors/old-{who}",                  Access::Token,  None,                                          204),
    ("GET",    "/api/v1/flavors/{name}/pressure", "/api/v1/flavors/small/pressure",             Access::Token,  None,                                          200),
    ("GET",    "/api/v1/flavors/{name}/pressure", "/api/v1/flavors/_/pressure?stream=true",     Access::Token,  None,                                          200),
    ("POST",   "/api/v1/auth/token/{name}",       "/api/v1/auth/token/new-{who}",               Access::Admin,  None,                                          201),
    ("GET",    "/api/v1/auth/token",              "/api/v1/auth/token",                         Access::Admin,  None,                                          200),
    ("DELETE", "/api/v1/auth/token/{name}",       "/api/v1/auth/token/old-{who}",               Access::Admin,  None,                                          204),
    ("GET",    "/api/v1/jobs/{platform}",         "/api/v1/jobs/github?status=queued&limit=10", Access::Token,  None,                                          200),
    ("GET",    "/api/v1/jobs/{platform}/{id}",    "/api/v1/jobs/github/4242",                   Access::Token,  None,                                          200),
    ("GET",    "/api/v1/match",                   "/api/v1/match?labels=self-hosted,x64",       Access::Token,  None,                                          200),
];

/// Every route of the REST API ([`ROUTES`]), with a call that succeeds.
pub fn api_routes() -> Vec<ApiRoute> {
    ROUTES
        .iter()
        .map(|&(method, pattern, path, access, body, success)| ApiRoute {
            method: method.parse().expect("method"),
            pattern,
            path,
            access,
            body: body.map(|text| serde_json::from_str(text).expect("route body")),
            success: reqwest::StatusCode::from_u16(success).expect("status"),
        })
        .collect()
}

/// Makes what [`api_routes`]' successful calls need, for each caller in `callers`: the flavor
/// `small`, the job 4242, and a flavor and a token `old-<caller>` to delete.
pub async fn prepare_routes(planner: &TestPlanner, callers: &[&str]) {
    planner.create_flavor("small", &["x64"], 1).await;
    planner.seed(
        &job_payload("queued.1", 4242, "queued", &["self-hosted", "x64"]),
        "route-job",
    );
    for caller in callers {
        planner
            .create_flavor(&format!("old-{caller}"), &["x64"], 1)
            .await;
        planner.create_token(&format!("old-{caller}")).await;
    }
}
