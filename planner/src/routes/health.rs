//! Liveness.

use actix_web::{get, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

/// Body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Whether the process serves HTTP. Needs no token.
#[utoipa::path(responses((status = 200, description = "The process serves HTTP", body = Health)))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}
