//! Helpers for the end-to-end tests in `tests/tests/`: every test gets its own AMQP names (and,
//! for the planner, its own database), so tests run in parallel against the one local
//! RabbitMQ and PostgreSQL. Nothing here mocks those servers.

pub mod amqp;
pub mod db;
// issue 9: fake GitHub API for redelivery and reconciliation tests
pub mod bench;
pub mod fake_gce;
pub mod fake_github;
pub mod fake_runner;
pub mod fixtures;
pub mod gateway;
pub mod manager;
pub mod planner;
pub mod process;
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

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
