//! The gateway in this process, on port 0 with AMQP names of its own: [`TestGateway::spawn`]
//! with [`Options`]; and webhooks signed as GitHub signs them. The gateway binary is
//! [`crate::process::GatewayProcess`].

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actors::amqp::{PublisherStatus, Status, Topology};
use gateway::{Application, Config};

use crate::amqp::TopologyGuard;
use crate::env::rabbitmq_url_via;

/// The secret test gateways check signatures with.
pub const SECRET: &str = "it's-a-secret-to-everybody";
/// The previous secret test gateways also accept.
pub const PREVIOUS_SECRET: &str = "the-old-secret";

/// Knobs of a test gateway.
pub struct Options {
    /// The exchange and queue to publish to (`APP_AMQP_NAME`), the caller's; by default a name
    /// of the gateway's own, deleted when it stops or is dropped.
    pub amqp_name: Option<String>,
    /// Broker address to use instead of the real one (a [`crate::proxy::TcpProxy`]).
    pub broker: Option<SocketAddr>,
    /// `APP_PUBLISH_TIMEOUT`.
    pub publish_timeout: Duration,
    /// `APP_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `APP_MAX_IN_FLIGHT`.
    pub max_in_flight: usize,
    /// `APP_REQUEST_TIMEOUT`.
    pub request_timeout: Duration,
    /// More environment variables the configuration is read from (e.g. redelivery's
    /// `APP_GITHUB_*`); they override the ones above.
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            amqp_name: None,
            broker: None,
            publish_timeout: Duration::from_secs(2),
            max_body_bytes: 64 * 1024,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(10),
            env: Vec::new(),
        }
    }
}

/// A running in-process gateway.
pub struct TestGateway {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its AMQP names.
    pub topology: Topology,
    /// Its publisher's connection state.
    pub status: PublisherStatus,
    /// `http://127.0.0.1:<port>/metrics`.
    pub metrics_url: String,
    handle: ServerHandle,
    _queues: Option<TopologyGuard>,
}

impl TestGateway {
    /// Starts a gateway and waits until it is connected to the broker.
    pub async fn spawn(options: Options) -> Self {
        let (amqp_name, queues) = match &options.amqp_name {
            Some(name) => (name.clone(), None),
            None => {
                let guard =
                    TopologyGuard(Topology::named(&crate::unique("gw-github-workflow-jobs")));
                (guard.topology().queue.clone(), Some(guard))
            }
        };
        let timeout = options.publish_timeout.as_millis().to_string();
        let max_body = options.max_body_bytes.to_string();
        let uri = rabbitmq_url_via(options.broker);
        let timeout = format!("{timeout}ms");
        let mut vars: Vec<(&str, &str)> = vec![
            ("RABBITMQ_CONNECT_STRING", &uri),
            ("APP_WEBHOOK_SECRET_VALUE", SECRET),
            ("APP_WEBHOOK_SECRET_PREVIOUS_VALUE", PREVIOUS_SECRET),
            ("APP_PUBLISH_TIMEOUT", &timeout),
            ("APP_MAX_BODY_BYTES", &max_body),
        ];
        for (key, value) in &options.env {
            vars.retain(|(name, _)| name != key);
            vars.push((key, value));
        }
        let mut config = Config::from_source(&vars.as_slice()).expect("test config");
        config.max_in_flight = options.max_in_flight;
        config.request_timeout = options.request_timeout;
        config.host = [127, 0, 0, 1].into();
        config.port = 0;
        config.topology = Topology::named(&amqp_name);
        config.telemetry = actors::telemetry::TelemetryConfig::loopback();
        let topology = config.topology.clone();
        let app = Application::build(config).await.expect("gateway starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        let metrics_url = format!(
            "http://127.0.0.1:{}/metrics",
            app.metrics_port().expect("a Prometheus listener")
        );
        let status = app.publisher_status();
        let handle = app.handle();
        actix_rt::spawn(app.run_until_stopped());
        crate::within(
            Duration::from_secs(10),
            "the gateway to connect to RabbitMQ",
            status.wait_for(Status::Connected),
        )
        .await;
        Self {
            url,
            topology,
            status,
            metrics_url,
            handle,
            _queues: queues,
        }
    }

    /// The `queued` `workflow_job` fixture as delivery `delivery` to this gateway, signed with
    /// [`SECRET`], as GitHub sends it.
    pub fn queued(&self, client: &reqwest::Client, delivery: &str) -> reqwest::RequestBuilder {
        webhook(
            client,
            &self.url,
            "workflow_job",
            delivery,
            crate::fixtures::fixture("workflow_job/queued.0.json"),
            SECRET,
        )
    }

    /// Stops the server gracefully.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Sends `body` as `workflow_job` delivery `delivery` to the gateway at `url`, signed with
/// [`SECRET`], and checks that the gateway took it (200).
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    delivery: &str,
) {
    let sent = webhook(
        client,
        url,
        "workflow_job",
        delivery,
        serde_json::to_vec(body).expect("body"),
        SECRET,
    )
    .send()
    .await
    .expect("send webhook");
    assert_eq!(sent.status(), 200, "delivery {delivery}");
}

/// Builds a webhook request as GitHub sends it, signed with `secret`.
pub fn webhook(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
    secret: &str,
) -> reqwest::RequestBuilder {
    let signature = gateway::webhook::sign(secret, &body);
    client
        .post(format!("{url}/webhook"))
        .header("Content-Type", "application/json")
        .header("User-Agent", "GitHub-Hookshot/test")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-GitHub-Hook-ID", "123456")
        .header("X-GitHub-Hook-Installation-Target-Type", "organization")
        .header("X-GitHub-Hook-Installation-Target-ID", "7890")
        .header("X-Hub-Signature-256", signature)
        .body(body)
}
