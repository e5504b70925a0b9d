//! The whole system as real processes: the gateway and planner binaries on port 0, sharing one
//! test topology (`APP_AMQP_NAME`) on the local RabbitMQ, the planner on a database of its own.

use std::time::Duration;

use actors::amqp::Topology;

use crate::{
    db::TestDb,
    planner::{TopologyGuard, ADMIN_TOKEN},
    process::Service,
};

/// How long start-up and each step may take.
const WAIT: Duration = Duration::from_secs(30);

/// A running gateway and planner.
pub struct System {
    /// The gateway process.
    pub gateway: Service,
    /// The planner process.
    pub planner: Service,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway_url: String,
    /// `http://127.0.0.1:<port>` of the planner.
    pub planner_url: String,
    /// The gateway's `/metrics` URL.
    pub gateway_metrics: String,
    /// The planner's `/metrics` URL.
    pub planner_metrics: String,
    /// The shared AMQP names (deleted on drop).
    pub topology: Topology,
    _queues: TopologyGuard,
    _db: TestDb,
}

impl System {
    /// Starts both services; with `traces`, both export spans to that OTLP/HTTP endpoint.
    /// Returns once the gateway is connected and the planner consumes.
    pub async fn start(traces: Option<&str>) -> Self {
        let db = TestDb::new();
        let topology = Topology::with_prefix(&crate::unique("system"));
        let queues = TopologyGuard(topology.clone());
        let broker = crate::amqp::rabbitmq_url();
        let mut common = vec![
            ("RABBITMQ_CONNECT_STRING", broker.as_str()),
            ("APP_PORT", "0"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ("APP_AMQP_NAME", topology.queue.as_str()),
        ];
        if let Some(endpoint) = traces {
            common.push(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint));
        }
        let mut gateway_vars = common.clone();
        gateway_vars.push(("APP_WEBHOOK_SECRET_VALUE", crate::gateway::SECRET));
        let mut planner_vars = common;
        planner_vars.push(("POSTGRESQL_DB_CONNECT_STRING", db.url()));
        planner_vars.push(("APP_ADMIN_TOKEN_VALUE", ADMIN_TOKEN));

        let mut gateway = Service::spawn("gateway", &[], &gateway_vars);
        let mut planner = Service::spawn("planner", &["serve"], &planner_vars);
        let gateway_port = gateway
            .logged_value("event=gateway_listening", "port", WAIT)
            .await;
        let gateway_metrics_port = gateway
            .logged_value("event=gateway_listening", "metrics_port", WAIT)
            .await;
        let planner_port = planner
            .logged_value("event=planner_listening", "port", WAIT)
            .await;
        let planner_metrics_port = planner
            .logged_value("event=planner_listening", "metrics_port", WAIT)
            .await;
        gateway.wait_for_log("event=amqp_connected", WAIT).await;
        planner.wait_for_log("event=consumer_started", WAIT).await;
        Self {
            gateway,
            planner,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            planner_url: format!("http://127.0.0.1:{planner_port}"),
            gateway_metrics: format!("http://127.0.0.1:{gateway_metrics_port}/metrics"),
            planner_metrics: format!("http://127.0.0.1:{planner_metrics_port}/metrics"),
            topology,
            _queues: queues,
            _db: db,
        }
    }

    /// Sends SIGTERM to both services and waits for both to exit 0.
    pub async fn stop(self) {
        self.gateway.terminate();
        self.planner.terminate();
        let gateway = self.gateway.wait(WAIT).await;
        let planner = self.planner.wait(WAIT).await;
        assert_eq!(gateway.code(), Some(0), "gateway exit status");
        assert_eq!(planner.code(), Some(0), "planner exit status");
    }
}
