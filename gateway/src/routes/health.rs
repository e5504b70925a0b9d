//! `GET /health` (the process answers) and `GET /ready` (the broker is connected).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

/// Liveness: the process is up and serving HTTP.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: 200 while the publisher holds a broker connection, else 503 naming the broker.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    if state.publishing.status().is_connected() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "error": "not ready: broker not connected",
            "failing": ["broker"],
        }))
    }
}
