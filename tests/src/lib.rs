//! Helpers for the end-to-end tests in `tests/tests/`: every test gets its own AMQP names (and,
//! for the planner, its own database), so tests run in parallel against the one local
//! RabbitMQ and PostgreSQL. Nothing here mocks those servers.
//!
//! - Where the servers are: [`env`] (`TEST_RABBITMQ_URL`, `TEST_DATABASE_URL`).
//! - Each resource a test makes is a guard that deletes it on `Drop`, passing or failing:
//!   [`db::TestDb`] (a migrated database), [`amqp::TopologyGuard`] (queues and exchanges),
//!   [`process::Service`] (a service binary, killed).
//! - One way to start each service in this process ([`planner::TestPlanner::builder`],
//!   [`gateway::TestGateway::spawn`]) and one as its binary ([`process::PlannerProcess`],
//!   [`process::GatewayProcess`]); both together as binaries: [`system::System`].
//! - Inputs: [`fixtures`] (GitHub's payloads), [`amqp::Broker`] (publishing as the gateway
//!   does, reading queues back), [`gateway::webhook`] (signed requests), [`raw_http`].
//! - The planner's web console: [`console::ConsoleClient`] over HTTP, [`browser::Browser`] in
//!   headless Chromium.
//! - Faults and outputs: [`proxy::TcpProxy`], [`stream::Lines`], [`telemetry`],
//!   [`fake_github`], [`promql`] (the metrics and labels dashboards and alert rules use); clusters
//!   whose nodes a test stops: [`cluster`].
//! - Waiting and naming: [`within`] (a deadline on one future), [`eventually`] (a condition
//!   polled until it holds), [`unique`] (a name no other test uses), [`free_port`].
//!
//! The benchmarks are a binary of their own (`src/bin/bench/`), not part of this library.

pub mod amqp;
pub mod browser;
pub mod cluster;
pub mod console;
pub mod db;
pub mod env;
pub mod fake_gce;
pub mod fake_github;
pub mod fake_runner;
pub mod fixtures;
pub mod gateway;
pub mod manager;
pub mod pgbouncer;
pub mod planner;
pub mod process;
pub mod promql;
pub mod proxy;
pub mod raw_http;
pub mod stream;
pub mod system;
pub mod telemetry;

use std::future::Future;
use std::time::Duration;

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// An HTTP client for the services under test. It drops a pooled connection after 1 s idle,
/// well before the services' 5 s keep-alive ends it: a request sent on a connection the
/// server is closing at that very moment fails (hyper's `IncompleteMessage`), and a scene that
/// waits a few seconds between two webhooks would otherwise meet that race now and then.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .expect("HTTP client")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A port of 127.0.0.1 nothing listens on (free when asked: a server may bind it, and a
/// client connecting to it is refused until one does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
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
