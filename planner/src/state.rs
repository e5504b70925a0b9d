//! State shared by the HTTP handlers.

use std::time::Duration;

use diesel::PgConnection;

use crate::{
    domain::labels::IgnoredLabels, error::ApiError, routes::health::Readiness, store::PgPool,
};

/// What every handler may use.
pub struct AppState {
    /// PostgreSQL connections; use them inside `web::block`.
    pub pool: PgPool,
    /// SHA-256 of the admin token.
    pub admin_token_sha256: [u8; 32],
    /// Labels left out of matching.
    pub ignored_labels: IgnoredLabels,
    /// What `GET /ready` checks.
    pub readiness: Readiness,
    /// `APP_REQUEST_TIMEOUT`: longest time to receive a request body (then 408).
    pub request_timeout: Duration,
}

impl AppState {
    /// Runs blocking database work on one of the pool's connections, off the async workers.
    pub async fn db<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        crate::routes::with_conn(self.pool.clone(), work).await
    }
}
