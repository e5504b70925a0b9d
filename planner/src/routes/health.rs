//! Liveness (`GET /health`) and readiness (`GET /ready`).

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use diesel::RunQueryDsl;
use prometheus::IntGauge;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{state::AppState, store::PgPool};

/// How long `/ready` (and the periodic probe) waits for PostgreSQL to answer `SELECT 1`.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Body of a `GET /ready` that answers 503.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    /// What is wrong, e.g. `not ready: database unreachable`.
    pub error: String,
    /// Each failing dependency: `broker`, `database`.
    pub failing: Vec<&'static str>,
}

/// What `/ready` looks at.
#[derive(Clone)]
pub struct Readiness {
    /// 1 while the consumer is registered with the broker (`..._broker_connected`).
    pub broker_connected: IntGauge,
    /// Set to whether PostgreSQL answered the last check.
    pub database_reachable: IntGauge,
}

/// Whether PostgreSQL answers `SELECT 1` on a pooled connection within `timeout`. The blocking
/// check runs off the async workers; a check that outlives `timeout` counts as a failure.
pub async fn database_answers(pool: PgPool, timeout: Duration) -> bool {
    let check = tokio::task::spawn_blocking(move || {
        pool.get_timeout(timeout)
            .ok()
            .is_some_and(|mut conn| diesel::sql_query("SELECT 1").execute(&mut conn).is_ok())
    });
    matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(true)))
}

/// Whether the process serves HTTP. Needs no token.
#[utoipa::path(responses((status = 200, description = "The process serves HTTP", body = Health)))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Whether the planner can do its work: the consumer is registered with the broker and
/// PostgreSQL answers `SELECT 1` within 2 s. Needs no token.
#[utoipa::path(responses(
    (status = 200, description = "Broker and database reachable", body = Health),
    (status = 503, description = "A dependency is unreachable; `failing` names each one", body = NotReady),
))]
#[get("/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let readiness = &state.readiness;
    let database = database_answers(state.pool.clone(), DATABASE_CHECK_TIMEOUT).await;
    readiness.database_reachable.set(i64::from(database));
    let mut failing = Vec::new();
    if readiness.broker_connected.get() != 1 {
        failing.push("broker");
    }
    if !database {
        failing.push("database");
    }
    if failing.is_empty() {
        return HttpResponse::Ok().json(Health { status: "ready" });
    }
    let names: Vec<String> = failing
        .iter()
        .map(|name| format!("{name} unreachable"))
        .collect();
    HttpResponse::ServiceUnavailable().json(NotReady {
        error: format!("not ready: {}", names.join(", ")),
        failing,
    })
}
