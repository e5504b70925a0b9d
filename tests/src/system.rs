//! The whole system as real processes: the gateway and planner binaries on port 0, sharing one
//! test topology (`APP_AMQP_NAME`) on the local RabbitMQ, the planner on a database of its own.

use std::time::Duration;

use actors::amqp::Topology;

use crate::{
    amqp::TopologyGuard,
    db::TestDb,
    process::{GatewayProcess, PlannerProcess, Running, Service},
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
        let env: Vec<(&str, &str)> = traces
            .map(|endpoint| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint))
            .into_iter()
            .collect();
        Self::start_with(&env, &env).await
    }

    /// Starts both services with more variables each (`gateway_env`, `planner_env`).
    pub async fn start_with(gateway_env: &[(&str, &str)], planner_env: &[(&str, &str)]) -> Self {
        let db = TestDb::new();
        let topology = Topology::with_prefix(&crate::unique("system"));
        let queues = TopologyGuard(topology.clone());
        let mut gateway = GatewayProcess::new(&topology.queue);
        let mut planner = PlannerProcess::new(db.url(), &topology.queue);
        for (key, value) in gateway_env {
            gateway = gateway.env(key, value);
        }
        for (key, value) in planner_env {
            planner = planner.env(key, value);
        }
        let gateway: Running = gateway.start().await;
        let planner: Running = planner.start().await;
        Self {
            gateway: gateway.service,
            planner: planner.service,
            gateway_url: gateway.url,
            planner_url: planner.url,
            gateway_metrics: gateway.metrics_url,
            planner_metrics: planner.metrics_url,
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
